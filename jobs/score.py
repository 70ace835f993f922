"""spark-submit entry point: the score job. Arguments as for `lakehouse run score`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "score", *sys.argv[1:]]))
