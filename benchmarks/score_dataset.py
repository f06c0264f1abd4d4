"""Score job over `--image-dataset` with one part file: the images spread over every task (now)
against one task per part file (before), side by side in one Spark session.

    .venv/bin/python benchmarks/score_dataset.py [--models var/models] [--image-rows 96] [--repeats 2]

Image-only rows (the shared images cycled under new guids) are written as one Parquet part file
with the ingest dataset's `guid` and `image` columns, which is what a small ingest or crawl run
leaves. "Before" is `score.partition_ids` replaced, on the driver, by the former grouping: every
row of a part file in one partition. Runs alternate (now, before, now, before, ...) after a
warm-up that loads the models into every Python worker; the medians are compared. Ratios come
from one run on a noisy machine.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from image_runtime import image_bench_args  # noqa: E402
from score_dataset_read import stored_images  # noqa: E402
from side_by_side import report_now_vs_before  # noqa: E402
from museum_typology import score  # noqa: E402
from museum_typology.session import build_spark  # noqa: E402


def one_task_per_part_file(tasks: pd.DataFrame, partitions: int, cores: int | None = None) -> np.ndarray:
    """The former partitioning: all rows of a dataset part file together, the rest round-robin."""
    pid = tasks["row"].to_numpy() % partitions
    in_dataset = (tasks["image_kind"] == score.IMAGE_DATASET).to_numpy()
    pid[in_dataset] = pd.factorize(tasks.loc[in_dataset, "image_ref"])[0] % partitions
    return pid


def write_dataset(settings, directory: Path, csv_path: Path, n: int) -> None:
    """The shared images as ingest stores them (longer side images.max_side, JPEG), cycled into
    one part file of ``n`` rows; the original scans would make every decode larger than a
    dataset's."""
    blobs = stored_images(Path(settings.get("paths.data")) / settings.get("ingest.images"), int(settings.get("images.max_side")), int(settings.get("images.jpeg_quality")))
    guids = [f"d{i:06d}" for i in range(n)]
    directory.mkdir(parents=True)
    # no dictionary for the images, as in score_dataset_read.write_part: ingest's are all distinct
    pq.write_table(pa.table({"guid": guids, "image": [blobs[i % len(blobs)] for i in range(n)]}), directory / "part-00000.parquet", use_dictionary=["guid"])
    pd.DataFrame({"guid": guids, "description": [""] * n}).to_csv(csv_path, index=False)


def main() -> int:
    args, settings, spec = image_bench_args(__doc__, "score_dataset.py", "--image-rows")
    scratch = Path(tempfile.mkdtemp(prefix="score-dataset-bench-"))
    shipped = score.partition_ids
    try:
        write_dataset(settings, scratch / "dataset", scratch / "in.csv", args.image_rows)
        spark = build_spark(settings, "bench-score-dataset")

        def timed(partitioning, name: str) -> float:
            score.partition_ids = partitioning
            started = time.perf_counter()
            result = score.run(spark, settings, str(scratch / "in.csv"), str(scratch / f"{name}.csv"), spec, image_dataset=str(scratch / "dataset"))
            seconds = time.perf_counter() - started
            assert result["sources"] == {"image": args.image_rows}, result["sources"]
            return seconds

        timed(shipped, "warm")  # every Python worker loads the models (spread over every task)
        seconds: dict[str, list[float]] = {"now": [], "before": []}
        for i in range(args.repeats):
            seconds["now"].append(timed(shipped, f"now{i}"))
            seconds["before"].append(timed(one_task_per_part_file, f"before{i}"))
        context = {"cores": spark.sparkContext.defaultParallelism, "image_rows": args.image_rows}
        report_now_vs_before(seconds, args.image_rows, context, args.json)
    finally:
        score.partition_ids = shipped
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
