"""The ``xenlike`` command: xl's verbs for a xenlike host (``tools/xl/``).

One module per verb family, as xl's ``xl_*.c``: :mod:`.vmcontrol` (create,
destroy, shutdown, reboot, pause, unpause, rename), :mod:`.host` (up, down and
the console stream), :mod:`.console`, :mod:`.info` (list, info, uptime, dmesg,
workloads), :mod:`.top`, :mod:`.block`, :mod:`.sched`, :mod:`.vcpu`,
:mod:`.xenstore`; :mod:`.cmdtable` lists them and builds the parser.

Every verb but ``up`` talks to the toolstack of a running host (found through
the run directory). A failure prints one line, ``xenlike VERB: what went
wrong``, and exits 1 (3 when no host runs). A verb xenlike lacks prints
``xenlike: xl has 'VERB'; xenlike does not (yet)``, or the verb most like it,
and exits 2, as a command line the parser cannot read does.
"""

from __future__ import annotations

import os
import sys

from xenlike.tools.config import ConfigError
from xenlike.tools.toolstack_client import HostNotRunning, ToolstackError
from xenlike.tools.xl.cmdtable import build_parser, unknown_verb, verb_of, verbs
from xenlike.tools.xl.utils import XlError

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's, for a command line it cannot read
EXIT_NO_HOST = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run its verb; returns the exit status."""
    parser = build_parser()
    verb = verb_of(sys.argv[1:] if argv is None else argv)
    if verb is not None and verb not in verbs():
        print(f"xenlike: {unknown_verb(verb)}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if getattr(args, "cmd", None) is None:
        parser.print_help()
        return 0
    try:
        return args.cmd.impl(args)
    except HostNotRunning as exc:
        print(f"xenlike {args.verb}: {exc}", file=sys.stderr)
        return EXIT_NO_HOST
    except (XlError, ToolstackError, ConfigError) as exc:
        print(f"xenlike {args.verb}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (``xenlike xenstore-ls | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
