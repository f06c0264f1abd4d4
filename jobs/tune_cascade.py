"""spark-submit entry point: `./spark-submit.sh tune-cascade [options]` (same options as `museum-typology tune-cascade`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("tune-cascade", sys.argv[1:]))
