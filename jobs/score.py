"""spark-submit entry point: `./spark-submit.sh score [options]` (same options as `museum-typology score`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("score", sys.argv[1:]))
