"""``python -m hyperbench_cli``: the same as the ``hyperbench`` console script."""

import sys

from hyperbench_cli.main import main

sys.exit(main())
