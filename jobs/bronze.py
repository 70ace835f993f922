"""spark-submit entry point: the bronze job. Arguments as for `lakehouse run bronze`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "bronze", *sys.argv[1:]]))
