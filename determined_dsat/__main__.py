"""``python -m determined_dsat``: the ``dsat`` command."""

import sys

from determined_dsat.cli import main

if __name__ == "__main__":
    sys.exit(main())
