"""spark-submit entry point: the monitor job. Arguments as for `lakehouse run monitor`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "monitor", *sys.argv[1:]]))
