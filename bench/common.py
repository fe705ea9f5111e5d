"""What every xenlike benchmark shares: argument parsing and reporting.

A benchmark measures xenlike and its baseline in the same run, prints one line
per figure with the ratio, and with ``--json`` ends with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--quick", action="store_true", help="a shorter run (smaller counts) for smoke testing")
    return p


def report(figures: dict[str, Any], ratios: dict[str, float], as_json: bool) -> None:
    """Print the figures and the ratios against the baselines, then the JSON line."""
    width = max(len(k) for k in list(figures) + list(ratios))
    for key, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    for key, value in ratios.items():
        print(f"{key:<{width}}  {value:.2f}x")
    if as_json:
        print(json.dumps(figures))
    sys.stdout.flush()
