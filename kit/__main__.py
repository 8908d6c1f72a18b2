"""``python -m kit`` (and ``torchrun ... -m kit train ...``) runs the ``kit`` command."""

import sys

from kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
