"""``python -m padt_core.cli`` (and ``torchrun … -m padt_core.cli train …``) runs ``padt``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
