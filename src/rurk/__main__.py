"""``python -m rurk``: the same as the ``rurk`` console script."""

import sys

from .cli import main

sys.exit(main())
