"""spark-submit entry point: `./spark-submit.sh train-image [options]` (same options as `museum-typology train-image`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("train-image", sys.argv[1:]))
