"""Score job throughput: rows/s on this machine for text-only rows and for image rows, beside a naive
row-by-row loop over the same models in the same run, and peak memory at two input sizes.

    .venv/bin/python benchmarks/score.py [--models var/models] [--text-rows 10000] [--image-rows 400]

Needs text and image bundles (`make run` makes them). Titles are drawn from the shared data with
word drops and swaps; image rows are the shared images under new guids (no description), copied
into a scratch directory. The naive loop is what a user would write first: the models loaded once,
then `Scorer.score_frame` on one row at a time. The job is `score.run` on local Spark (the session
is started before timing; a small warm-up job loads the models into the Python workers first,
and the cold first run is reported too). The image rows are scored twice: over the views the image
bundle was trained with (``score.image_views = "trained"``, the default) and over the whole image
and its mirror only (``"whole"``), side by side, and over the trained views with the backbone as the
Keras graph (``score.image_runtime = "keras"``) beside TF Lite (the default). Peak memory is the summed RSS of the whole process tree
(driver, JVM, Python workers), sampled every 50 ms; the naive loop runs in its own process, so
its models are not counted. Ratios come from one run on a noisy machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402

from ingest import MemorySampler  # noqa: E402
from museum_typology import score  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.log import setup_logging  # noqa: E402
from museum_typology.session import build_spark  # noqa: E402
from score_text import synthetic_titles  # noqa: E402


def write_text_csv(path: Path, titles: list[str]) -> None:
    pd.DataFrame({"guid": [f"t{i:07d}" for i in range(len(titles))], "description": titles}).to_csv(path, index=False)


def write_image_rows(directory: Path, csv_path: Path, archive: Path, n: int) -> None:
    """n image-only rows: the shared images cycled under new guids, original bytes kept."""
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if not m.endswith("/")]
        blobs = [(m.rsplit(".", 1)[-1] if "." in m.rsplit("/", 1)[-1] else "", zf.read(m)) for m in members]
    guids = []
    for i in range(n):
        ext, raw = blobs[i % len(blobs)]
        guid = f"i{i:06d}"
        (directory / (f"{guid}.{ext}" if ext else guid)).write_bytes(raw)
        guids.append(guid)
    pd.DataFrame({"guid": guids, "description": [""] * n}).to_csv(csv_path, index=False)


def naive_loop(spec: score.ScorerSpec, rows: list[score.InputRow], images: dict[str, str]) -> float:
    """Rows/s of one-row-at-a-time scoring with the models already loaded (loading not timed)."""
    scorer = score.Scorer(spec)
    warm = score.plan_tasks(rows[:1], images, {}, spec.text_normalization)
    scorer.score_frame(warm)  # loads the models it needs
    started = time.perf_counter()
    for row in rows:
        scorer.score_frame(score.plan_tasks([row], images, {}, spec.text_normalization))
    return len(rows) / (time.perf_counter() - started)


def job(spark, settings, spec, input_csv: Path, output: Path, images_dir: Path | None) -> dict[str, Any]:
    with MemorySampler(tree=True) as memory:
        started = time.perf_counter()
        result = score.run(spark, settings, str(input_csv), str(output), spec, images_dir=str(images_dir) if images_dir else None)
        seconds = time.perf_counter() - started
    peak = memory.result
    return {"rows": result["rows"], "seconds": round(seconds, 1), "rows_per_s": round(result["rows"] / seconds, 1), "peak_rss_mb": round(peak.peak_total_mb),
            "peak_by_role_mb": peak.peak_by_role_mb, "sources": result["sources"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "var" / "models"))
    parser.add_argument("--text-rows", type=int, default=10_000)
    parser.add_argument("--image-rows", type=int, default=400)
    parser.add_argument("--naive-text", type=int, default=200)
    parser.add_argument("--naive-images", type=int, default=40)
    parser.add_argument("--memory-factor", type=int, default=4, help="the second memory point scores this many times the text rows")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    setup_logging()
    settings = load_settings()
    spec = score.resolve_models(settings, args.models)
    if spec.text_bundle is None or spec.image_bundle is None:
        sys.exit(f"benchmarks/score.py: needs text and image bundles under {args.models} (run `make run` first)")
    scratch = Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        titles = synthetic_titles(args.text_rows * args.memory_factor)
        write_text_csv(scratch / "text_small.csv", titles[: args.text_rows])
        write_text_csv(scratch / "text_large.csv", titles)
        write_image_rows(scratch / "images", scratch / "images.csv", Path(settings.get("paths.data")) / settings.get("ingest.images"), args.image_rows)
        # The warm-up mixes text and image rows so that every Python worker loads both models.
        pd.concat([pd.read_csv(scratch / "images.csv", keep_default_na=False).head(8), pd.DataFrame({"guid": [f"w{i}" for i in range(50)], "description": titles[:50]})]).to_csv(scratch / "warmup.csv", index=False)
        images = score.find_image_files(str(scratch / "images"))

        text_rows = score.read_rows(str(scratch / "text_small.csv"))[: args.naive_text]
        image_rows = score.read_rows(str(scratch / "images.csv"))[: args.naive_images]
        # In a separate process, so its loaded models do not count in the job's memory below.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            naive_text = pool.apply(naive_loop, (spec, text_rows, {}))
            naive_image = pool.apply(naive_loop, (spec, image_rows, images))

        spark = build_spark(settings, "bench-score")
        cold = job(spark, settings, spec, scratch / "warmup.csv", scratch / "warm.csv", scratch / "images")
        text = job(spark, settings, spec, scratch / "text_small.csv", scratch / "out_text.csv", None)
        # Straight after the small text job, while the workers hold the same models: the memory
        # ratio then measures more rows, not the image scorers the jobs below add.
        large = job(spark, settings, spec, scratch / "text_large.csv", scratch / "out_large.csv", None)
        image = job(spark, settings, spec, scratch / "images.csv", scratch / "out_images.csv", scratch / "images")
        # The same image rows over the whole image and its mirror only (score.image_views =
        # "whole"), after its own warm-up (another spec is another cached Scorer in the workers).
        whole_spec = dataclasses.replace(spec, image_views="whole")
        job(spark, settings, whole_spec, scratch / "warmup.csv", scratch / "warm_whole.csv", scratch / "images")
        image_whole = job(spark, settings, whole_spec, scratch / "images.csv", scratch / "out_images_whole.csv", scratch / "images")
        # And with the backbone as the Keras graph (score.image_runtime = "keras", for GPU
        # executors) instead of TF Lite (the default), the bundle's trained views.
        keras_spec = dataclasses.replace(spec, image_runtime="keras")
        job(spark, settings, keras_spec, scratch / "warmup.csv", scratch / "warm_keras.csv", scratch / "images")
        image_keras = job(spark, settings, keras_spec, scratch / "images.csv", scratch / "out_images_keras.csv", scratch / "images")
        results = {
            "cores": os.cpu_count(),
            "models": spec.model_version,
            "naive_text_rows_per_s": round(naive_text, 1),
            "naive_image_rows_per_s": round(naive_image, 1),
            "cold_first_job": cold,
            "job_text": text,
            "job_image": image,
            "job_image_whole_views": image_whole,
            "image_ratio_whole_vs_trained_views": round(image_whole["rows_per_s"] / image["rows_per_s"], 2),
            "job_image_keras_runtime": image_keras,
            "image_ratio_tflite_vs_keras_runtime": round(image["rows_per_s"] / image_keras["rows_per_s"], 2),
            "job_text_large": large,
            "text_ratio_job_vs_naive": round(text["rows_per_s"] / naive_text, 2),
            "image_ratio_job_vs_naive": round(image["rows_per_s"] / naive_image, 2),
            "memory_ratio_large_vs_small": round(large["peak_rss_mb"] / text["peak_rss_mb"], 2),
        }
        print(json.dumps(results, indent=1, ensure_ascii=False))
        print(
            f"\ntext rows: job {text['rows_per_s']}/s vs naive {naive_text:.1f}/s = {results['text_ratio_job_vs_naive']}x; "
            f"image rows: job {image['rows_per_s']}/s vs naive {naive_image:.1f}/s = {results['image_ratio_job_vs_naive']}x, "
            f"whole-image views {image_whole['rows_per_s']}/s = {results['image_ratio_whole_vs_trained_views']}x the trained views, "
            f"Keras runtime {image_keras['rows_per_s']}/s (TF Lite = {results['image_ratio_tflite_vs_keras_runtime']}x); "
            f"peak RSS {text['peak_rss_mb']} MB at {text['rows']} rows, {large['peak_rss_mb']} MB at {large['rows']} rows ({results['memory_ratio_large_vs_small']}x)"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
