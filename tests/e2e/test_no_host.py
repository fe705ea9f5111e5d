"""With no host running, every verb says so in one line, fails, and does not hang."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

VERBS = [
    ["down"], ["list"], ["info"], ["destroy", "x"], ["shutdown", "x"], ["reboot", "x"], ["pause", "x"],
    ["unpause", "x"], ["console", "x"], ["rename", "x", "y"], ["uptime"], ["dmesg"], ["xenstore-ls"],
    ["xenstore-read", "/a"], ["xenstore-write", "/a", "b"], ["xenstore-rm", "/a"], ["xenstore-watch", "/a"],
    ["top"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_every_verb_says_no_host_is_running(verb):
    with tempfile.TemporaryDirectory(prefix="xl-none-") as run_dir:
        result = subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", run_dir, *verb],
                                capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no xenlike host is running" in lines[0] and "xenlike up" in lines[0]
