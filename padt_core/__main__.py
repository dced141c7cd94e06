"""``python -m padt_core`` runs the ``padt`` command line (as does ``python -m padt_core.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
