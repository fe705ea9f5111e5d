"""Fixtures and fakes that more than one test module uses."""
