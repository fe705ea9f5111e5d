"""``python -m xenlike``: the same as the ``xenlike`` command."""

import sys

from xenlike.tools.cli import main

sys.exit(main())
