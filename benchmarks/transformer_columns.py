#!/usr/bin/env python
"""TypologyClassifier's pass-through of the columns it does not read, now against before.

Now: ``mapInArrow``, only the input columns converted to pandas, every other column handed back
as the Arrow batch it came in. Before (the code up to 2026-11-28): ``mapInPandas`` over whole
rows, every column through pandas and back. Both score the same DataFrame (a description next
to ``--extra`` wide columns: bigint, double, timestamp, string, array) with no model bundle, so
every row takes the default class and the figure is the transport's cost, which is what
changed; with models the scoring itself comes on top of both alike. Alternating timed runs,
written to Spark's ``noop`` sink; medians, rows/s and the ratio.

    .venv/bin/python benchmarks/transformer_columns.py [--rows 200000] [--extra 5] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
from side_by_side import alternate, report_now_vs_before  # noqa: E402


def before_transform(clf, dataset, spec):
    """The previous ``TypologyClassifier._transform``: whole rows through pandas."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    from museum_typology import score
    from museum_typology.spark import check_columns, tasks_of

    get = clf.getOrDefault
    columns = {name: get(getattr(clf, name)) for name in ("guidCol", "descriptionCol", "imageCol", "imagePathCol")}
    outputs = (get(clf.predictionCol), get(clf.confidenceCol), get(clf.sourceCol))
    columns = check_columns(dataset.schema, columns, outputs)
    schema = StructType([*dataset.schema.fields, *(StructField(name, kind) for name, kind in zip(outputs, (StringType(), DoubleType(), StringType())))])
    fields = ("typology", "confidence", "source")

    def run(batches):
        scorer = score.Scorer.cached(spec)
        for batch in batches:
            result = scorer.score_frame(tasks_of(batch, columns, spec.text_normalization))
            yield batch.assign(**{name: result[field].to_numpy() for name, field in zip(outputs, fields)})

    return dataset.mapInPandas(run, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--extra", type=int, default=5, help="groups of pass-through columns (5 columns each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    from pyspark.sql import SparkSession, functions as F

    from museum_typology import score
    from museum_typology.cascade import CascadeParams
    from museum_typology.config import load_settings
    from museum_typology.spark import TypologyClassifier

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    cascade = tuple(sorted(CascadeParams.from_dict(load_settings(environ={}).section("cascade")).to_dict().items()))
    spec = score.ScorerSpec(None, None, cascade, "none")
    TypologyClassifier._spec = lambda self: spec  # no bundle: the transport alone
    items = spark.range(args.rows).select(F.col("id"), F.concat(F.lit("Монета медная № "), F.col("id").cast("string")).alias("description"))
    for g in range(args.extra):
        items = items.select("*", (F.col("id") * 7 + g).alias(f"big{g}"), (F.col("id") / 3.0).alias(f"x{g}"),
                             F.timestamp_seconds(F.col("id") + 1_600_000_000).alias(f"t{g}"), F.sha1(F.col("id").cast("string")).alias(f"s{g}"),
                             F.array(F.col("id"), F.lit(g)).alias(f"a{g}"))
    items = items.cache()
    items.count()
    clf = TypologyClassifier()

    def timed(name: str):
        frame = clf.transform(items) if name == "now" else before_transform(clf, items, spec)
        started = time.perf_counter()
        frame.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started, args.rows

    seconds, _ = alternate(timed, args.repeats)
    context = {"rows": args.rows, "columns": len(items.columns), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    report_now_vs_before(seconds, args.rows, context, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
