"""spark-submit entry point: `./spark-submit.sh pipeline [options]` (same options as `museum-typology pipeline`)."""
import sys

from museum_typology.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
