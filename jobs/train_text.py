"""spark-submit entry point: `./spark-submit.sh train-text [options]` (same options as `museum-typology train-text`)."""
import sys

from museum_typology.cli import main_submitted

if __name__ == "__main__":
    sys.exit(main_submitted("train-text", sys.argv[1:]))
