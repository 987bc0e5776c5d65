"""``python -m convert``: see convert/cli.py."""

import sys

from .cli import main

sys.exit(main())
