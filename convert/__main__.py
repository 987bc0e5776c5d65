"""``python -m streamformer.convert``: see convert/cli.py."""

import sys

from .cli import main

sys.exit(main())
