"""spark-submit entry point: `./spark-submit.sh crawl [options]` (same options as `museum-typology crawl`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("crawl", sys.argv[1:]))
