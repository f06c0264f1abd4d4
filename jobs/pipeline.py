"""spark-submit entry point: `./spark-submit.sh pipeline [options]` (same options as `museum-typology pipeline`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("pipeline", sys.argv[1:]))
