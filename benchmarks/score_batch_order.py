#!/usr/bin/env python
"""The order of a score task's rows across its Arrow batches: by part file and place in it (now),
against row order (before: the order rows came in, which for a dataset of crawled images is no
order of the part file).

    .venv/bin/python benchmarks/score_batch_order.py [--rows 12000] [--repeats 3] [--json out.json]

Inside one Spark task ``mapInPandas`` hands the scorer its rows in Arrow batches of
``spark.sql.execution.arrow.maxRecordsPerBatch`` rows, and the scorer lets a batch's row groups of
images go before the next one. This replays one task without Spark: the shared images, stored as
ingest stores them, cycled under new guids into one part file with row groups of
``ingest.row_group_size_mb``; the task's rows cut into such batches, each through
``Scorer.score_frame`` (read, decode, a stand-in model, the cascade). Runs alternate after a
warm-up; medians are compared, with the image row groups each order read.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from score_dataset_read import UniformImage, cycled_part_file, part_file_arguments, part_file_context, stand_in_spec  # noqa: E402
from side_by_side import alternate, report_now_vs_before  # noqa: E402

from museum_typology import score  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402


def main() -> int:
    args = part_file_arguments(__doc__)
    settings = load_settings()
    batch_rows = int(settings.section("spark.conf")["spark.sql.execution.arrow.maxRecordsPerBatch"])
    with cycled_part_file(settings, args.rows, "score-order-bench-") as (part, guids):
        order = np.random.default_rng(2).permutation(args.rows)  # input row r asks for the image at place order[r]
        rows = pd.DataFrame({"row": range(args.rows), "guid": [guids[i] for i in order], "text": "", "image_kind": score.IMAGE_DATASET, "image_ref": str(part), "note": "", "image_pos": order})
        tasks = {
            "now": rows.sort_values(["image_ref", "image_pos", "row"], kind="stable").drop(columns="image_pos").reset_index(drop=True),
            "before": rows.drop(columns="image_pos"),
        }
        spec = stand_in_spec(settings)

        def timed(name: str) -> tuple[float, int]:
            scorer = score.Scorer(spec, None, UniformImage())
            frame = tasks[name]
            started = time.perf_counter()
            for start in range(0, len(frame), batch_rows):
                result = scorer.score_frame(frame.iloc[start : start + batch_rows].reset_index(drop=True))
                assert (result["source"] == "image").all()
            return time.perf_counter() - started, scorer.dataset_images.row_groups_read

        seconds, row_groups = alternate(timed, args.repeats)
        context = {"rows": args.rows, "batch_rows": batch_rows, **part_file_context(part), "row_groups_read": row_groups}
        report_now_vs_before(seconds, args.rows, context, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
