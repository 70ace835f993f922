"""spark-submit entry point: the daily job. Arguments as for `lakehouse run daily`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "daily", *sys.argv[1:]]))
