"""spark-submit entry point: `./spark-submit.sh ingest [options]` (same options as `museum-typology ingest`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("ingest", sys.argv[1:]))
