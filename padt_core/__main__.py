"""``python -m padt_core`` runs the ``padt`` command line."""

import sys

from .cli import main

sys.exit(main())
