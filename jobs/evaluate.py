"""spark-submit entry point: `./spark-submit.sh evaluate [options]` (same options as `museum-typology evaluate`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("evaluate", sys.argv[1:]))
