"""spark-submit entry point: `./spark-submit.sh clean [options]` (same options as `museum-typology clean`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("clean", sys.argv[1:]))
