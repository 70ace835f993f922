"""spark-submit entry point: the train job. Arguments as for `lakehouse run train`."""

import sys

from lakehouse.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "train", *sys.argv[1:]]))
