"""``python -m xenlike``: the same as the ``xenlike`` command."""

import sys

from xenlike.tools.xl import main

sys.exit(main())
