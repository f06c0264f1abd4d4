"""spark-submit entry point: `./spark-submit.sh pipeline [options]` (same options as `museum-typology pipeline`)."""
import sys

from museum_typology.cli import main


def run(argv):
    try:
        return main(["pipeline", *argv])
    finally:
        # Stop Spark here, not in the JVM's shutdown hook: a cluster then records the application
        # as finished and frees its executors before spark-submit returns.
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
