"""train-image job: the image model trained with Horovod on Spark from the petastorm dataset.

driver: read the plain columns of the dataset (guid, typology, sha256; no pixels) -> labels (from
a cleaned manifest when given) -> K stratified folds -> ``horovod.spark.run`` of
``image_model.fold_worker`` (or ``final_worker`` with ``--final``) on ``num_proc`` Spark tasks ->
out-of-fold probabilities (fold mode) -> the versioned bundle under ``models/image/<version>/``
with a ``latest`` pointer, and a report, each written atomically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from . import backbone as backbone_lib
from . import bundles, image_model, report, storage, tflite_backbone
from .clean import CleanedManifest, image_fold_runs, read_cleaned_manifest, relabel
from .config import Settings
from .errors import InternalError
from .image_model import ImageSettings, WorkerJob
from .log import get_logger
from .schema import CLASS_INDEX, CLASSES
from .storage import S3Options

log = get_logger(__name__)


class TrainImageError(ValueError):
    """The job cannot run on this dataset with these settings (too few labelled images, fewer row
    groups than processes, ...): the input or a setting needs fixing (exit 2, as train-text's)."""


def stratified_folds(guids: list[str], y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id per row: stratified by class, seeded, independent of the input order. A class with
    fewer than k images spreads over as many folds as it has images."""
    from sklearn.model_selection import StratifiedKFold

    order = np.argsort(guids, kind="stable")
    fold = np.zeros(len(guids), dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The least populated class has only n members"
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for f, (_, held) in enumerate(splitter.split(np.zeros(len(order)), y[order])):
            fold[order[held]] = f
    return fold


def read_labels(dataset_url: str, manifest: CleanedManifest | None, s3: S3Options | None) -> tuple[dict[str, int], str]:
    """guid -> class index of the labelled images in the dataset (the cleaned manifest's label
    when one is given), and a hash of (guid, label, image sha256) over them."""
    from . import petastorm_io

    table = petastorm_io.read_columns(dataset_url, ["guid", "typology", "sha256"], s3).to_pylist()
    labels = {r["guid"]: r["typology"] for r in table if r["typology"] is not None}
    sha = {r["guid"]: r["sha256"] for r in table}
    if manifest is not None:
        # The clean job's manifest (guid, new_label, action) or a hand-made one (guid, typology[, keep]):
        # the guids it names take its label or leave (drop); the others keep the dataset's label.
        log.info("train-image: labels of cleaned manifest %s", manifest.lineage["url"])
        labels = relabel(labels, manifest.labels, f"labelled images of {dataset_url}")
    unknown = sorted({t for t in labels.values() if t not in CLASS_INDEX})
    if unknown:
        raise TrainImageError(f"unknown typology in the labels: {unknown[:3]}")
    digest = hashlib.sha256("\n".join(f"{g}\t{labels[g]}\t{sha[g]}" for g in sorted(labels)).encode()).hexdigest()
    return {g: CLASS_INDEX[t] for g, t in labels.items()}, digest


def row_group_count(dataset_url: str, s3: S3Options | None) -> int:
    fs, path = storage.filesystem(dataset_url, s3)
    total = 0
    for name in storage.list_files(dataset_url, s3):
        if name.endswith(".parquet"):
            with fs.open_input_file(f"{path}/{name}") as f:
                total += pq.ParquetFile(f).metadata.num_row_groups
    return total


def rows_per_shard(dataset_url: str, s3: S3Options | None, guids: Sequence[str], shards: int) -> list[int]:
    """How many of ``guids`` each Horovod rank's shard of the dataset holds, by petastorm's own
    sharding (row groups by index modulo the shard count; the shuffle seed only reorders them).
    Reads the guid column only."""
    from petastorm.predicates import in_set

    from . import petastorm_io

    wanted, counts = set(guids), []
    for rank in range(shards):
        # petastorm prints "Cache cleanup complete." on stdout, ahead of the job's own result lines
        with contextlib.redirect_stdout(sys.stderr):
            reader = petastorm_io.make_reader(dataset_url, s3, schema_fields=["guid"], predicate=in_set(wanted, "guid"), cur_shard=rank, shard_count=shards, num_epochs=1, shuffle_row_groups=False, workers_count=1, reader_pool_type="thread")
            with reader:
                counts.append(sum(1 for _ in reader))
    return counts


def configured_task_cpus(spark) -> int | None:
    """``spark.task.cpus`` if the job's Spark conf sets it (a cluster giving each GPU's task its
    cores), else None: Spark's default of 1 says nothing about the cores a process may use."""
    value = spark.sparkContext.getConf().get("spark.task.cpus", None)
    return int(value) if value else None


def local_task_slots(master: str, task_cpus: int | None) -> int | None:
    """The tasks a ``local``, ``local[N]`` or ``local[*]`` master runs at once (its cores over
    ``spark.task.cpus``); None for any other master, whose slots only the cluster knows."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", master.strip())
    if not found:
        return None
    cores = (os.cpu_count() or 1) if found.group(1) == "*" else int(found.group(1) or 1)
    return max(1, cores // (task_cpus or 1))


def check_task_slots(spark, processes: int, start_timeout: int) -> None:
    """A local master has exactly its task slots: more Horovod processes than that waited
    ``image.start_timeout`` for tasks that never start, then failed with Horovod's traceback."""
    master = spark.sparkContext.master
    slots = local_task_slots(master, configured_task_cpus(spark))
    if slots is not None and processes > slots:
        raise TrainImageError(
            f"{processes} Horovod processes, but Spark master {master} runs {slots} tasks at once: "
            f"they would wait image.start_timeout ({start_timeout} s) for tasks that never start; use --num-proc {slots} or fewer"
        )


@contextlib.contextmanager
def signals_left_alone() -> Iterator[None]:
    """Horovod's Gloo launcher (``horovod.runner.gloo_run.register_shutdown_event``) replaces the
    process's SIGINT and SIGTERM handlers with one that only sets an event, which its Spark mode
    does not act on, and never puts them back: from train-image on, a scheduler's SIGTERM or a
    Ctrl-C was ignored and the pipeline ran to its end with exit 0. Here the launcher gets its
    event without touching the handlers (the Spark tasks it starts end with the driver), and the
    handlers are put back whatever happens."""
    import threading

    from horovod.runner import gloo_run

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    register = getattr(gloo_run, "register_shutdown_event", None)
    gloo_run.register_shutdown_event = threading.Event
    try:
        yield
    finally:
        if register is not None:
            gloo_run.register_shutdown_event = register
        for sig, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(sig, handler)


def run_horovod(spark, fn, job: WorkerJob, num_proc: int, start_timeout: int) -> list[dict[str, Any]]:
    import horovod.spark
    from horovod.runner.common.util.timeout import TimeoutException

    log.info("horovod.spark.run: %d processes (%s mode), Gloo", num_proc, job.mode)
    try:
        with signals_left_alone():
            results = horovod.spark.run(fn, args=(job,), num_proc=num_proc, use_gloo=True, verbose=0, start_timeout=start_timeout, stdout=sys.stderr, stderr=sys.stderr)
    except TimeoutException as exc:  # a cluster without the slots, or its executors still starting
        raise TrainImageError(f"Horovod: {' '.join(str(exc).split())} ({num_proc} processes asked for; image.start_timeout = {start_timeout} s)") from None
    return sorted(results, key=lambda r: r["rank"])


# Bump when a change to the training code changes the models it trains with the same data and
# settings: the run key includes it, so bundles of older code are not reused. How ingest decodes
# and stores the same source bytes is followed without a bump: the key includes the dataset's
# ``pixel_decoder`` (ingest.pixel_version) that ingest or crawl recorded in the summary beside it.
TRAINING_VERSION = 1
# Settings that change how a run goes, not what it trains: left out of the run key.
RUN_ONLY_SETTINGS = ("start_timeout", "reader_workers")


# The [images] settings that turn an image's bytes into the dataset's pixels.
STORAGE_SETTINGS = ("max_side", "codec", "jpeg_quality")


def stored_image_settings(dataset_url: str, settings: Settings, s3: S3Options | None) -> dict[str, Any]:
    """What made the dataset's pixels from the images' bytes: the [images] STORAGE_SETTINGS as
    ingest recorded them beside it (``OUTPUT/conf.json`` for ``OUTPUT/dataset``), so that editing
    them after ingest changes nothing until the images are ingested again, plus the
    ``pixel_decoder`` version in ingest's ``summary.json`` (the same bytes decoded by other code
    are other pixels; edits that change only the manifest do not retrain).
    For a dataset without that record, the current settings."""
    parent, _, name = dataset_url.rstrip("/").rpartition("/")
    record = (storage.read_json_object(storage.join(parent, "conf.json"), s3) if parent and name == "dataset" else None) or {}
    recorded = record.get("images")
    if isinstance(recorded, dict) and all(k in recorded for k in STORAGE_SETTINGS):
        stored = {k: recorded[k] for k in STORAGE_SETTINGS}
        decoder = (storage.read_json_object(storage.join(parent, "summary.json"), s3) or {}).get("pixel_decoder")
        return {**stored, "pixel_decoder": decoder} if decoder else stored
    log.info("%s: no ingest record of its [images] settings; the run key uses the current ones", dataset_url)
    return {k: settings.get(f"images.{k}") for k in STORAGE_SETTINGS}


def run_settings(s: image_model.ImageSettings, stored: dict[str, Any], final: bool, epochs: int | None, max_steps: int | None, processes: int, labels_from: list[str] | None = None) -> dict[str, Any]:
    """What the trained model depends on besides the labelled images' bytes and labels: the
    [image] settings, the [images] settings that made the dataset's pixels from those bytes
    (``stored_image_settings``), the mode, and the process count (it scales the learning rate
    and the steps). ``labels_from``: the image fold runs that cleaned the labels
    (``clean.image_fold_runs``): the bundle records them and score pairs it with their cascade,
    so labels cleaned by another fold run make another bundle, not a reused one that names the
    old run (left out when there are none, so runs without a clean manifest keep their key)."""
    image = {k: v for k, v in image_model.settings_dict(s).items() if k not in RUN_ONLY_SETTINGS}
    # How the count was asked for (num_proc 2, or 0 = Spark's parallelism, which is 2) is not what
    # trains: ``processes`` is. Recorded as the default's 0, so `train-image --num-proc 2` and a
    # pipeline on a 2-slot Spark share a run, and runs at the default keep their keys.
    image["num_proc"] = 0
    values = {"image": image, "images": stored, "final": final, "epochs": epochs, "max_steps": max_steps, "processes": processes, "training_version": TRAINING_VERSION}
    return {**values, "labels_from": list(labels_from)} if labels_from else values


def run(
    spark,
    settings: Settings,
    dataset_url: str,
    model_dir: str,
    oof_url: str,
    folds: int | None = None,
    num_proc: int | None = None,
    final: bool = False,
    manifest: str | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    retrain: bool = False,
) -> dict[str, Any]:
    """K fold models and their out-of-fold file, or with ``final`` one fine-tuned model, trained
    with Horovod; or a bundle under ``model_dir`` reused when it was trained on the same images,
    labels and settings (unless ``retrain``; ``bundles.reusable_bundle`` says which)."""
    started = time.time()
    s3 = S3Options.from_settings(settings.section("s3"))
    if folds is not None:
        settings = settings.set(["image", "folds"], int(folds), "--folds")
    if num_proc is not None:
        settings = settings.set(["image", "num_proc"], int(num_proc), "--num-proc")
    s = ImageSettings.from_settings(settings)
    if not storage.exists(storage.join(dataset_url, "_common_metadata"), s3):
        raise storage.StorageError(f"{dataset_url}: no petastorm dataset (run ingest first)")
    # Where the results go, before hours of training: a file as --model-dir failed in rank 0's
    # first checkpoint with Horovod's traceback, a folder as --oof after the bundle was committed.
    storage.check_can_write(model_dir, "--model-dir", folder=True, s3=s3)
    if not final:
        storage.check_can_write(oof_url, "--oof", folder=False, s3=s3)
    # Labels first: a dataset without labelled images (data with no image archive) has one empty
    # row group too, and "re-ingest with more partitions" would have been the wrong advice.
    cleaned = read_cleaned_manifest(manifest, s3) if manifest else None
    labels, digest = read_labels(dataset_url, cleaned, s3)
    if len(labels) < s.folds * 2:
        raise TrainImageError(
            f"{dataset_url}: only {len(labels)} labelled images; need at least {s.folds * 2} "
            "(for text-only data, run train-text and score with its bundle alone)"
        )
    classes = sorted(set(labels.values()))
    if len(classes) < 2:
        raise TrainImageError(f"{dataset_url}: the labelled images hold a single typology ({CLASSES[classes[0]]}); the model needs two at least")
    n_proc = s.num_proc or spark.sparkContext.defaultParallelism
    check_task_slots(spark, n_proc, s.start_timeout)
    groups = row_group_count(dataset_url, s3)
    if groups < n_proc:
        raise TrainImageError(f"{dataset_url}: {groups} row groups < {n_proc} processes; each Horovod rank reads whole row groups (use fewer processes or re-ingest with more partitions)")
    guids = sorted(labels)
    y = np.array([labels[g] for g in guids], dtype=np.int64)
    largest = int(np.bincount(y).max())
    if largest < s.folds:  # StratifiedKFold needs one class with at least a member per fold
        raise TrainImageError(f"{dataset_url}: no class has {s.folds} labelled images (the largest has {largest}); use --folds {largest} or fewer")
    fold = stratified_folds(guids, y, s.folds, s.seed)
    for k in [0] if final else range(s.folds):  # --final trains on the images outside fold 0
        if len(np.unique(y[fold != k])) < 2:
            raise TrainImageError(f"{dataset_url}: the labelled images outside fold {k + 1} of {s.folds} hold a single typology; its model needs two at least (add images of other classes, or use fewer folds)")
    if final:
        # --final reads its training rows round and round (num_epochs=None): a rank whose row
        # groups hold none would wait for ever, and the other ranks with it at the first allreduce.
        per_rank = rows_per_shard(dataset_url, s3, [g for g, f in zip(guids, fold.tolist()) if f != 0], n_proc)
        if min(per_rank) == 0:
            raise TrainImageError(
                f"{dataset_url}: with {n_proc} processes, rank(s) {[r for r, n in enumerate(per_rank) if n == 0]} would get no training image "
                f"(training images per rank: {per_rank}); use fewer processes, or re-ingest with more, smaller row groups"
            )
    # The process count too: it scales the learning rate and the steps, so a resume under another
    # count must not continue this run's checkpoints.
    lineage = cleaned.lineage if cleaned else None
    conf_digest = hashlib.sha256(json.dumps(run_settings(s, stored_image_settings(dataset_url, settings, s3), final, epochs, max_steps, n_proc, image_fold_runs(lineage)), sort_keys=True).encode()).hexdigest()
    run_key = hashlib.sha256((digest + conf_digest).encode()).hexdigest()
    version = bundles.make_version(run_key) + ("-final" if final else "")
    # The same key means the same model (training is seeded): reuse this run's bundle, for folds
    # the one the out-of-fold file names, with --final the newest.
    reusable = None if retrain else bundles.reusable_bundle(model_dir, run_key, None if final else oof_url, s3)
    if reusable:
        bundle_url, metrics = reusable
        log.info("train-image (%s): %s was trained on these images, labels and settings; reused (--retrain trains again)", "final" if final else "folds", bundle_url)
        outcome = {"bundle": bundle_url, "report": storage.join(bundle_url, "report", "report.md"), "metrics": metrics, "version": metrics.get("version"), "results": [], "reused": True}
        return outcome if final else {**outcome, "oof": oof_url}
    checkpoint_url = storage.join(model_dir, "_checkpoints", ("final-" if final else "folds-") + run_key[:16])
    weights = image_model.balanced_class_weights(y) if s.class_weight == "balanced" else [1.0] * len(CLASSES)
    frozen = None if final else backbone_lib.imagenet_backbone(s.variant)  # the fold job's backbone, built once here
    job = WorkerJob(
        dataset_url=dataset_url,
        s3=s3,
        settings=s,
        labels=dict(zip(guids, y.tolist())),
        folds=dict(zip(guids, fold.tolist())),
        class_weights=weights,
        checkpoint_url=checkpoint_url,
        mode="final" if final else "folds",
        epochs=epochs,
        max_steps=max_steps,
        backbone_tflite=None if frozen is None else tflite_backbone.convert(frozen, s.image_size),
        task_cpus=configured_task_cpus(spark),
        labels_manifest=lineage,
    )
    log.info("train-image (%s): %d labelled images, %d classes, %d folds, %d processes, checkpoints %s", job.mode, len(guids), len(set(y.tolist())), s.folds, n_proc, checkpoint_url)
    results = run_horovod(spark, image_model.final_worker if final else image_model.fold_worker, job, n_proc, s.start_timeout)

    if final:
        outcome = _finish_final(results, job, settings, model_dir, version, digest, s3, started, run_key)
    else:
        outcome = _finish_folds(results, job, settings, model_dir, oof_url, version, digest, guids, y, fold, s3, started, frozen, run_key)
    storage.delete_dir(checkpoint_url, s3)  # the bundle is committed: the run's checkpoints are done
    outcome["results"] = results
    outcome["reused"] = False
    return outcome


def _finish_folds(results, job: WorkerJob, settings, model_dir, oof_url, version, digest, guids, y, fold, s3, started, backbone, run_key: str) -> dict[str, Any]:
    s = job.settings
    rows = [r for result in results for r in result["oof"]]
    by_guid = {r["guid"]: r for r in rows}
    if len(rows) != len(by_guid) or set(by_guid) != set(guids):
        raise InternalError(f"out-of-fold rows do not reconcile: {len(rows)} rows, {len(by_guid)} distinct guids, {len(guids)} labelled images")
    proba = np.array([by_guid[g]["proba"] for g in guids], dtype=np.float32)
    pred = proba.argmax(axis=1)
    pred_whole = np.array([np.argmax(by_guid[g]["proba_whole_views"]) for g in guids]) if image_model.has_whole_only_score(s) else None
    histories = next(r["histories"] for r in results if r["rank"] == 0)
    metrics = {
        "version": version,
        "mode": "folds",
        "run_key": run_key,
        "data_hash": digest,
        "rows": len(guids),
        "folds": s.folds,
        "processes": results[0]["size"],
        "macro_f1": report.macro_f1(y, pred),
        "accuracy": float((pred == y).mean()),
        "per_class": report.per_class_table(y, pred),
        # The same heads scored over the whole image (and its mirror) only: the quality that
        # score.image_views = "whole" trades for less backbone work (None when it is the same).
        "whole_views": None
        if pred_whole is None
        else {"macro_f1": report.macro_f1(y, pred_whole), "accuracy": float((pred_whole == y).mean()), "per_class": report.per_class_table(y, pred_whole)},
        "per_fold_macro_f1": [report.macro_f1(y[fold == k], pred[fold == k]) for k in range(s.folds)],
        "feature_seconds_per_rank": [round(r["feature_seconds"], 1) for r in results],
        "feature_runtime": sorted({r["feature_runtime"] for r in results}),
        "seconds": round(time.time() - started, 1),
    }
    head_files = []
    with tempfile.TemporaryDirectory(prefix="image-bundle-") as tmp:
        local = Path(tmp) / version
        (local / "heads").mkdir(parents=True)
        for k in range(s.folds):
            loaded = image_model.load_head_checkpoint(job.checkpoint_url, k, s3)
            assert loaded is not None, f"fold {k}: no head checkpoint"
            head = image_model.build_head(s, seed=0)
            head.set_weights(loaded[0])
            head.save_weights(str(local / "heads" / f"fold{k}.weights.h5"))
            head_files.append(f"heads/fold{k}.weights.h5")
        _write_bundle(local, job, settings, version, digest, head_files, metrics, backbone, job.backbone_tflite)
        write_report(local / "report", y, pred, metrics, histories, "fold ensemble, out-of-fold")
        oof_bytes = bundles.oof_parquet(guids, y, fold, proba, version, "image")
        (local / bundles.BUNDLE_OOF).write_bytes(oof_bytes)
        bundle_url = _commit_bundle(local, model_dir, version, s3)
    # The out-of-fold file before ``latest``: a kill in between leaves the previous bundle newest
    # (its OOF file replaced by this run's, which names its version), never a newest bundle
    # beside the previous run's out-of-fold file. A kill before it: the next run copies the
    # bundle's own (``bundles.reusable_bundle``).
    storage.write_bytes(oof_url, oof_bytes, s3)
    bundles.publish_latest(model_dir, version, s3)
    log.info("train-image: out-of-fold macro-F1 %.3f on %d images, bundle %s, oof %s", metrics["macro_f1"], len(guids), bundle_url, oof_url)
    return {"bundle": bundle_url, "oof": oof_url, "report": storage.join(bundle_url, "report", "report.md"), "metrics": metrics, "version": version}


def _finish_final(results, job: WorkerJob, settings, model_dir, version, digest, s3, started, run_key: str) -> dict[str, Any]:
    s = job.settings
    state = results[0]["state"]
    metrics = {
        "version": version,
        "mode": "final",
        "run_key": run_key,
        "data_hash": digest,
        "rows": len(job.labels),
        "validation_rows": sum(1 for f in job.folds.values() if f == 0),
        "processes": results[0]["size"],
        "epochs_run": state["epoch"],
        "optimizer_steps": state.get("optimizer_steps"),
        "best_epoch": state["best_epoch"],
        "validation_macro_f1": state["best_f1"],
        "history": state["history"],
        "steps_per_epoch": results[0]["steps_per_epoch"],
        "mixed_precision": results[0]["mixed_precision"],
        "seconds": round(time.time() - started, 1),
    }
    model, backbone, head = image_model.build_final_model(s, use_mixed_precision=False)
    # The best epoch's weights, as the state (written last) names them; checkpoints from before
    # that name was recorded kept them in best.h5.
    best = storage.join(job.checkpoint_url, state.get("best_file") or "best.h5")
    image_model._load_weights(model, best if storage.exists(best, s3) else storage.join(job.checkpoint_url, state.get("weights_file") or "weights.h5"), s3)
    with tempfile.TemporaryDirectory(prefix="image-bundle-") as tmp:
        local = Path(tmp) / version
        (local / "heads").mkdir(parents=True)
        head.save_weights(str(local / "heads" / "final.weights.h5"))
        _write_bundle(local, job, settings, version, digest, ["heads/final.weights.h5"], metrics, backbone)
        write_report(local / "report", None, None, metrics, {0: {"train_loss": state["history"]["train_loss"], "val_macro_f1": state["history"]["val_macro_f1"]}}, "final model")
        bundle_url = _commit_bundle(local, model_dir, version, s3)
    bundles.publish_latest(model_dir, version, s3)
    log.info("train-image --final: validation macro-F1 %.3f (best epoch %d of %d), bundle %s", state["best_f1"], state["best_epoch"] + 1, state["epoch"], bundle_url)
    return {"bundle": bundle_url, "report": storage.join(bundle_url, "report", "report.md"), "metrics": metrics, "version": version}


def _write_bundle(local: Path, job: WorkerJob, settings: Settings, version: str, digest: str, heads: list[str], metrics: dict[str, Any], backbone, flatbuffer: bytes | None = None) -> None:
    """``flatbuffer``: ``backbone`` already converted to TF Lite (the fold job's frozen one)."""
    s = job.settings
    backbone.save_weights(str(local / "backbone.weights.h5"))
    # The same backbone for CPU scoring (score.image_runtime = "tflite"), converted once here
    # rather than in every executor that loads the bundle.
    (local / tflite_backbone.FILE_NAME).write_bytes(flatbuffer or tflite_backbone.convert(backbone, s.image_size))
    weights_file = backbone_lib.weights_path(s.variant)
    (local / "model.json").write_text(
        json.dumps(
            {
                "version": version,
                "kind": job.mode,
                "heads": heads,
                "settings": image_model.bundle_settings(s),
                "backbone": {"variant": s.variant, "imagenet_weights": weights_file.name, "imagenet_weights_sha256": backbone_lib.file_sha256(weights_file), "fine_tuned": job.mode == "final"},
            },
            indent=2,
        )
    )
    (local / "preprocessing.json").write_text(json.dumps(image_model.preprocessing_spec(s), indent=2))
    (local / "classes.json").write_text(json.dumps(list(CLASSES), ensure_ascii=False, indent=2))
    (local / "conf.json").write_text(json.dumps({"image": image_model.settings_dict(s), "settings": settings.values}, ensure_ascii=False, indent=2))
    data = {"data_hash": digest, "dataset": job.dataset_url, "labelled_images": len(job.labels), "labels_manifest": job.labels_manifest}
    (local / "data.json").write_text(json.dumps(data, ensure_ascii=False, indent=2))
    (local / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2))


def _commit_bundle(local: Path, model_dir: str, version: str, s3) -> str:
    """Commit the bundle; ``latest`` is the caller's to move, after the bundle's other outputs."""
    bundle_url = storage.join(model_dir, version)
    with storage.atomic_directory(bundle_url, s3, job="train-image", sweep_abandoned_after_s=storage.ABANDONED_STAGING_AGE_S) as staging:  # _SUCCESS names the owner
        storage.upload_directory(str(local), staging, s3)
    return bundle_url


def curves_png(histories: dict[int, dict[str, list[float]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _figure_png

    keys = sorted({k for h in histories.values() for k in h})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for fold, history in sorted(histories.items()):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], label=f"fold {fold}" if len(histories) > 1 else key)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _figure_png(fig)


def write_report(directory: Path, y, pred, metrics: dict[str, Any], histories, title: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "curves.png").write_bytes(curves_png({int(k): v for k, v in histories.items()}, f"image model {metrics['version']}: training curves"))
    lines = [f"# Image model {metrics['version']} ({metrics['mode']})", ""]
    if y is not None:
        (directory / "confusion.png").write_bytes(report.confusion_png(y, pred, f"image {title} (macro-F1 {metrics['macro_f1']:.3f})"))
        lines += [
            f"{metrics['folds']}-fold stratified cross-validation on {metrics['rows']} labelled images, {metrics['processes']} Horovod processes.",
            "",
            f"Out-of-fold macro-F1 **{metrics['macro_f1']:.3f}** (classes present), accuracy {metrics['accuracy']:.3f}; per fold: "
            + ", ".join(f"{v:.3f}" for v in metrics["per_fold_macro_f1"]),
            "",
            report.markdown_table([r for r in metrics["per_class"] if r["support"]], ["class", "support", "f1", "precision", "recall"]),
            "",
            *(
                [f"Scored over the whole image and its mirror only (`score.image_views = \"whole\"`): macro-F1 {metrics['whole_views']['macro_f1']:.3f}, accuracy {metrics['whole_views']['accuracy']:.3f}.", ""]
                if metrics.get("whole_views")
                else []
            ),
            "![confusion](confusion.png) ![curves](curves.png)",
        ]
    else:
        lines += [
            f"Fine-tuned on {metrics['rows'] - metrics['validation_rows']} images, validated on {metrics['validation_rows']} (a stratified fold), {metrics['processes']} processes, mixed precision {metrics['mixed_precision']}.",
            "",
            f"Best validation macro-F1 **{metrics['validation_macro_f1']:.3f}** at epoch {metrics['best_epoch'] + 1} of {metrics['epochs_run']}.",
            "",
            "![curves](curves.png)",
        ]
    (directory / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def resolve_bundle(model_dir: str, s3: S3Options | None = None, cache_dir: str | None = None) -> Path:
    """The image bundle ``latest`` names under ``model_dir`` (or ``model_dir`` itself), as a local directory."""
    return bundles.resolve_bundle(model_dir, "model.json", "image", s3, cache_dir)
