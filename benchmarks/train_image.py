#!/usr/bin/env python
"""Image model benchmark: the train-image fold job against a simple probe, same folds, one run;
and training throughput with 1 and 2 local Horovod processes.

(a) probe: frozen EfficientNet-Lite (``image.variant``) pooled features of each image (plain, no mirror) +
    scikit-learn logistic regression (class_weight="balanced"), trained on each fold's training
    part and predicting its held-out part.
(b) the job: ``museum_typology.train_image.run`` (Horovod on Spark, 2 processes), K stratified
    folds of a dense head on the frozen backbone features of the views of ``[image]`` in conf
    (whole image, centred and corner crops, mirrors; every view a training row, predictions
    averaged over the views), out-of-fold probabilities read back from ``oof/image.parquet``.
    Its settings are conf's; none was chosen on these folds (seed 13): the view and head
    settings were compared on other fold seeds of the same images (see the README).
Both use the folds of ``train_image.stratified_folds`` over the same labelled images, so the
out-of-fold macro-F1 (over the classes present) and the per-class F1 compare like for like.

Throughput: ``train_image.run(final=True)`` (fine-tuning the upper blocks with augmentation) for
one short epoch with 1 and then 2 processes; images/s is the global rate of the timed steps
(the first step, which traces the graph, is not timed), as the workers report it.

Input: the shared labelled images (``../shared/data``), ingested into a temp dir with
``museum_typology.ingest.run``.

With ``--seeds 13,5,6`` the fold comparison runs once per fold seed (same images, other folds)
and per-class F1 is also averaged over the seeds, with each class's wins/ties/losses: on 153
images one image moves a small class's F1 by 0.05-0.2, so one split says little per class. The
job's heads are also scored over the whole image and its mirror only (``score.image_views =
"whole"``, from the same run's features).

With ``--compare-feature-runtime`` each seed's fold job runs again with its frozen backbone
as the Keras graph (``image.feature_runtime = "keras"``), beside the run above (conf's "auto":
TF Lite on a CPU): feature extraction images/s of both, their ratio, and the results' difference.

    .venv/bin/python benchmarks/train_image.py [--data DIR] [--folds 5] [--seeds 13,5,6] [--steps 6] [--compare-feature-runtime] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from repeated_cv import across_seeds  # noqa: E402
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("MUSEUM_NO_PROGRESS", "1")


def probe_features(dataset_url: str, guids: list[str], image_size: int, variant: str) -> np.ndarray:
    """Plain pooled backbone features (the job's ``image.variant``) of each labelled image, in ``guids`` order."""
    import tensorflow as tf

    from museum_typology import backbone, image_model, petastorm_io

    model = backbone.imagenet_backbone(variant)
    wanted = set(guids)
    feats = {}
    with petastorm_io.make_reader(dataset_url, schema_fields=["guid", "image"], num_epochs=1, workers_count=1, shuffle_row_groups=False) as reader:
        batch_g, batch_x = [], []
        for row in reader:
            if row.guid not in wanted:
                continue
            batch_g.append(row.guid)
            batch_x.append(image_model.resize(row.image, image_size))
            if len(batch_g) == 32:
                feats.update(zip(batch_g, model(tf.stack(batch_x), training=False).numpy()))
                batch_g, batch_x = [], []
        if batch_g:
            feats.update(zip(batch_g, model(tf.stack(batch_x), training=False).numpy()))
    return np.stack([feats[g] for g in guids])


def probe_oof(x: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.zeros(len(y), dtype=np.int64)
    for f in range(k):
        train, held = fold != f, fold == f
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000, class_weight="balanced"))
        clf.fit(x[train], y[train])
        pred[held] = clf.predict(x[held])
    return pred


def seed_run(spark, settings, tmp: str, dataset: str, folds: int, seed: int, probe_x: dict[str, np.ndarray]) -> dict:
    """One fold seed (``image.seed``: the folds, and the heads' initial weights and batches): the
    job (2 processes) and the probe on the same folds; per-class F1 of the probe, the job, and
    the job's heads scored over the whole image only (score.image_views = "whole"). The probe's
    features are cached in ``probe_x`` across seeds."""
    import pyarrow.parquet as pq

    from museum_typology import report, train_image
    from museum_typology.schema import CLASSES

    settings = settings.set(["image", "seed"], seed, "--seeds")
    t0 = time.time()
    job = train_image.run(spark, settings, dataset, f"{tmp}/models/image-seed{seed}", f"{tmp}/oof/image-seed{seed}.parquet", folds=folds, num_proc=2)
    job_seconds = time.time() - t0
    oof = sorted(pq.read_table(f"{tmp}/oof/image-seed{seed}.parquet").to_pylist(), key=lambda r: r["guid"])
    guids = [r["guid"] for r in oof]
    y = np.array([CLASSES.index(r["label"]) for r in oof])
    fold = np.array([r["fold"] for r in oof])
    assert (fold == train_image.stratified_folds(guids, y, folds, seed)).all()
    preds = {"job": np.array([int(np.argmax(r["proba"])) for r in oof])}
    whole_views = job["metrics"]["whole_views"] or {"macro_f1": float("nan"), "per_class": [{"class": c, "f1": float("nan")} for c in CLASSES]}  # None: no crop views
    whole_f1 = {row["class"]: row["f1"] for row in whole_views["per_class"]}

    t0 = time.time()
    if "x" not in probe_x:  # the probe's features do not depend on the folds: computed once
        probe_x["x"] = probe_features(dataset, guids, int(settings.get("image.image_size")), str(settings.get("image.variant")))
    preds["probe"] = probe_oof(probe_x["x"], y, fold, folds)
    probe_seconds = time.time() - t0

    counts = np.bincount(y, minlength=len(CLASSES))
    five = [c for c in range(len(CLASSES)) if counts[c] >= 5]
    rows = {name: report.per_class_table(y, pred) for name, pred in preds.items()}
    table = [
        {"class": CLASSES[c], "support": int(counts[c]), "probe_f1": rows["probe"][c]["f1"], "job_f1": rows["job"][c]["f1"], "job_whole_views_f1": whole_f1[CLASSES[c]]}
        for c in range(len(CLASSES))
        if counts[c]
    ]
    return {
        "seed": seed,
        "images": len(y),
        "macro_f1_all_present": {"probe": report.macro_f1(y, preds["probe"]), "job": report.macro_f1(y, preds["job"]), "job_whole_views": whole_views["macro_f1"]},
        "macro_f1_classes_ge5": {name: report.macro_f1(y, pred, labels=five) for name, pred in preds.items()},
        "accuracy": {name: float((pred == y).mean()) for name, pred in preds.items()},
        "per_class": table,
        "seconds": {"probe": round(probe_seconds, 1), "job_2proc": round(job_seconds, 1), "job_feature_seconds_per_rank": job["metrics"]["feature_seconds_per_rank"]},
    }


def compare_feature_runtime(spark, settings, tmp: str, dataset: str, folds: int, seed: int, first: dict) -> dict:
    """The fold job of ``seed`` again with its frozen backbone as the Keras graph
    (``image.feature_runtime = "keras"``) beside ``first``, the same job with the conf's runtime
    (on a CPU "auto" = TF Lite): feature extraction images/s (images over the slowest rank's
    feature seconds), the out-of-fold macro-F1 of both, and the largest probability difference."""
    import pyarrow.parquet as pq

    from museum_typology import train_image

    keras_settings = settings.set(["image", "seed"], seed, "--seeds").set(["image", "feature_runtime"], "keras", "--compare-feature-runtime")
    job = train_image.run(spark, keras_settings, dataset, f"{tmp}/models/image-keras{seed}", f"{tmp}/oof/image-keras{seed}.parquet", folds=folds, num_proc=2)
    proba = {}
    for name, path in (("conf", f"{tmp}/oof/image-seed{seed}.parquet"), ("keras", f"{tmp}/oof/image-keras{seed}.parquet")):
        proba[name] = np.array([r["proba"] for r in sorted(pq.read_table(path).to_pylist(), key=lambda r: r["guid"])])
    rates = {
        "conf": first["images"] / max(first["seconds"]["job_feature_seconds_per_rank"]),
        "keras": first["images"] / max(job["metrics"]["feature_seconds_per_rank"]),
    }
    diff = np.abs(proba["conf"] - proba["keras"]).max(axis=1)
    return {
        "seed": seed,
        "conf_runtime": settings.get("image.feature_runtime"),
        "feature_images_per_s": {name: round(rate, 2) for name, rate in rates.items()},
        "ratio_conf_vs_keras": round(rates["conf"] / rates["keras"], 2),
        "macro_f1": {"conf": first["macro_f1_all_present"]["job"], "keras": job["metrics"]["macro_f1"]},
        "max_abs_proba_diff": float(diff.max()),
        "median_abs_proba_diff": float(np.median(diff)),
        "same_prediction": float((proba["conf"].argmax(axis=1) == proba["keras"].argmax(axis=1)).mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="", help="comma-separated fold seeds (default: image.seed); with several, per-class F1 is also averaged over them")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per throughput run (plus one untimed); 0 skips the throughput runs")
    parser.add_argument("--compare-feature-runtime", action="store_true", help="also run each seed's fold job with image.feature_runtime=keras and compare its feature extraction rate and results with the seed's run above")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    from museum_typology import image_model, ingest, report, train_image
    from museum_typology.config import load_settings
    from museum_typology.log import setup_logging
    from museum_typology.session import build_spark

    setup_logging("WARNING")
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        settings = load_settings(overrides=[f"paths.work_dir={tmp}", 'spark.conf."spark.driver.memory"="3g"', *args.overrides], environ={})
        spark = build_spark(settings, "bench-image", master="local[2]")
        summary = ingest.run(spark, settings, args.data, f"{tmp}/ingest")
        dataset = f"{tmp}/ingest/dataset"
        image_size = int(settings.get("image.image_size"))
        print(f"ingested {summary['dataset_rows']} images", flush=True)

        seeds = [int(v) for v in args.seeds.split(",") if v.strip()] or [int(settings.get("image.seed"))]
        runs, probe_x = [], {}
        for seed in seeds:
            run = seed_run(spark, settings, tmp, dataset, args.folds, seed, probe_x)
            runs.append(run)
            print(f"fold seed {seed}:", flush=True)
            print(report.markdown_table(run["per_class"], ["class", "support", "probe_f1", "job_f1", "job_whole_views_f1"]), flush=True)
            print(json.dumps({k: v for k, v in run.items() if k != "per_class"}, indent=1), flush=True)
        results["cv"] = runs[0] if len(runs) == 1 else {
            "runs": runs,
            "mean": across_seeds(runs, ["probe_f1", "job_f1", "job_whole_views_f1"], "job_f1", "probe_f1", ["macro_f1_all_present", "macro_f1_classes_ge5", "accuracy"]),
        }
        results["cv_settings"] = {
            "folds": args.folds,
            "job_views": len(image_model.view_specs(image_model.ImageSettings.from_settings(settings))),
            "job_settings": {k: settings.get(f"image.{k}") for k in ("variant", "image_size", "view_crop", "view_corners", "view_mode", "tta_flip", "head_hidden", "head_l2", "head_epochs", "label_smoothing", "class_weight")},
        }
        if len(runs) > 1:
            mean = results["cv"]["mean"]
            print(f"mean over fold seeds {seeds}:", flush=True)
            print(report.markdown_table(mean["per_class"], ["class", "support", "probe_f1", "job_f1", "job_whole_views_f1", "wins_ties_losses"]), flush=True)
            print(json.dumps({k: v for k, v in mean.items() if k != "per_class"}, indent=1), flush=True)

        if args.compare_feature_runtime:
            results["feature_runtime"] = [compare_feature_runtime(spark, settings, tmp, dataset, args.folds, seed, run) for seed, run in zip(seeds, runs)]
            print(json.dumps(results["feature_runtime"], indent=1), flush=True)

        # Throughput: the fine-tuning (--final) loop, 1 then 2 processes, same settings.
        results["throughput"] = {}
        for procs in (1, 2) if args.steps > 0 else ():
            t0 = time.time()
            final = train_image.run(spark, settings, dataset, f"{tmp}/models/final{procs}", f"{tmp}/unused.parquet", num_proc=procs, final=True, epochs=1, max_steps=args.steps + 1)
            rate = final["metrics"]["history"]["images_per_s"][0]
            results["throughput"][f"{procs}_proc"] = {"images_per_s": rate, "global_batch": int(settings.get("image.batch_size")) * procs, "wall_seconds": round(time.time() - t0, 1), "load_avg": os.getloadavg()[0]}
            print(f"throughput, {procs} process(es): {rate:.1f} images/s (image {image_size}px, batch {settings.get('image.batch_size')} per process)", flush=True)
        if len(results["throughput"]) == 2:  # side by side in this run: the ratio, not two absolutes
            two, one = results["throughput"]["2_proc"]["images_per_s"], results["throughput"]["1_proc"]["images_per_s"]
            results["throughput"]["2_over_1"] = round(two / one, 2) if one else None
        spark.stop()
    results["load_avg_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=2))
    print(json.dumps(results["throughput"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
