"""spark-submit entry point: the gold job. Arguments as for `lakehouse run gold`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "gold", *sys.argv[1:]]))
