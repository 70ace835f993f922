"""spark-submit entry point: the silver job. Arguments as for `lakehouse run silver`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "silver", *sys.argv[1:]]))
