"""spark-submit entry point: `./spark-submit.sh rescore [options]` (same options as `museum-typology rescore`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("rescore", sys.argv[1:]))
