"""The ``xenlike`` command: xl's verbs for a xenlike host."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
xenlike: Xen's architecture in user space. A hypervisor process schedules guest
domains as Linux processes; dom0 runs xenstored, xenconsoled, the toolstack and the
device back-ends; domU front-ends talk to them through shared rings, grant tables
and event channels, as Xen's split drivers do."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenlike", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version="xenlike 0.1.0")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
