"""``python -m xenlike``: the same as the ``xenlike`` command."""

import sys

from .cli import main

sys.exit(main())
