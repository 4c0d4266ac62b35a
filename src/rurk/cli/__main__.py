"""``python -m rurk.cli``: the same as the ``rurk`` console script."""

import sys

from . import main

sys.exit(main())
