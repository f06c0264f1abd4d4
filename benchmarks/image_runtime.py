"""Image scoring throughput by backbone runtime: images/s of ``ImageBundle.predict_proba`` on this
machine, one process, side by side in one run:

- ``before``: the code path before the TF Lite runtime, reproduced here: each image's views made
  eagerly, the Keras backbone called eagerly;
- ``keras``: ``ImageBundle(runtime="keras")``, views and backbone as compiled graphs (what GPU
  executors use);
- ``tflite``: ``ImageBundle(runtime="tflite")``, the default: the bundle's ``backbone.tflite`` on
  TF Lite's XNNPACK CPU kernels.

Each over the views the bundle was trained with and over the whole image and its mirror only
(``score.image_views``). Prints images/s, the ratio to ``before``, the largest probability
difference to ``keras`` and the load time. Images are the shared labelled images, decoded as
score decodes them.

    .venv/bin/python benchmarks/image_runtime.py [--models var/models] [--images 96] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import numpy as np  # noqa: E402

from museum_typology import backbone as backbone_lib  # noqa: E402
from museum_typology import bundles, score  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.image_model import ImageBundle, head_proba, images_per_batch, make_views, view_features  # noqa: E402
from museum_typology.images import decode_image  # noqa: E402
from museum_typology.log import setup_logging  # noqa: E402


def shared_images(archive: Path, n: int, max_side: int) -> list[np.ndarray]:
    """The first n decodable shared images (cycled when there are fewer), decoded as score does."""
    with zipfile.ZipFile(archive) as zf:
        raws = [zf.read(m) for m in sorted(zf.namelist()) if not m.endswith("/")]
    decoded = [d.pixels for d in (decode_image(raw, max_side) for raw in raws) if d.ok]
    return [decoded[i % len(decoded)] for i in range(n)]


def before_predict_proba(bundle: ImageBundle, backbone, images: list[np.ndarray], batch_size: int) -> np.ndarray:
    """``ImageBundle.predict_proba`` as it was before the runtimes: views and backbone eager."""
    import tensorflow as tf

    chunks = []
    step = images_per_batch(bundle.settings, batch_size)
    for i in range(0, len(images), step):
        views = tf.stack([make_views(img, bundle.settings) for img in images[i : i + step]])
        feats = view_features(lambda x: backbone(x, training=False), views, bundle.settings).numpy()
        chunks.append(np.mean([head_proba(h, feats) for h in bundle.heads], axis=0))
    return np.concatenate(chunks)


def timed(predict, images: list[np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    predict(images[:4])  # warm-up: traces the graphs, plans the tensors
    started = time.perf_counter()
    for _ in range(repeats):
        proba = predict(images)
    return len(images) * repeats / (time.perf_counter() - started), proba


def image_bench_args(doc: str, script: str, rows_flag: str) -> tuple[argparse.Namespace, object, score.ScorerSpec]:
    """The image benchmarks' command line (--models, ``rows_flag`` (96), --repeats, --json),
    logging, settings, and the newest bundles' spec; exits when there is no image bundle."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "var" / "models"))
    parser.add_argument(rows_flag, type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    setup_logging()
    settings = load_settings()
    spec = score.resolve_models(settings, args.models)
    if spec.image_bundle is None:
        sys.exit(f"benchmarks/{script}: needs an image bundle under {args.models} (run `make run` first)")
    return args, settings, spec


def main() -> int:
    args, settings, spec = image_bench_args(__doc__, "image_runtime.py", "--images")
    directory = bundles.resolve_bundle(spec.image_bundle, score.IMAGE_MARKER, "image", spec.s3)
    images = shared_images(Path(settings.get("paths.data")) / settings.get("ingest.images"), args.images, int(settings.get("images.max_side")))
    results: dict[str, object] = {"cores": os.cpu_count(), "bundle": spec.image_bundle, "images": len(images), "repeats": args.repeats}
    for views in ("trained", "whole"):
        runs: dict[str, dict] = {}
        for runtime in ("before", "keras", "tflite"):
            started = time.perf_counter()
            # ("before" loads a Keras ImageBundle for its heads plus its own backbone: its load
            # time is not comparable.)
            bundle = ImageBundle(directory, views=views, runtime="keras" if runtime == "before" else runtime)
            if runtime == "before":
                backbone = backbone_lib.build_backbone(bundle.settings.variant)
                backbone.load_weights(str(Path(directory) / "backbone.weights.h5"))
                predict = lambda batch: before_predict_proba(bundle, backbone, batch, spec.image_batch)  # noqa: E731
            else:
                predict = lambda batch: bundle.predict_proba(batch, batch_size=spec.image_batch)  # noqa: E731
            load_s = time.perf_counter() - started
            per_s, proba = timed(predict, images, args.repeats)
            runs[runtime] = {"images_per_s": round(per_s, 2), "load_s": round(load_s, 1), "proba": proba}
            print(f"views {views}, {runtime}: {per_s:.2f} images/s (load {load_s:.1f} s)", flush=True)
        for runtime, run in runs.items():
            run["ratio_vs_before"] = round(run["images_per_s"] / runs["before"]["images_per_s"], 2)
            run["max_abs_proba_diff_vs_keras"] = float(np.abs(run.pop("proba") - runs["keras"]["proba"]).max()) if runtime != "keras" else 0.0
        runs["keras"].pop("proba")
        results[f"views_{views}"] = runs
    print(json.dumps(results, indent=1))
    for views in ("trained", "whole"):
        runs = results[f"views_{views}"]
        print(
            f"views {views}: before {runs['before']['images_per_s']} images/s, keras {runs['keras']['images_per_s']} ({runs['keras']['ratio_vs_before']}x), "
            f"tflite {runs['tflite']['images_per_s']} ({runs['tflite']['ratio_vs_before']}x, max |dp| vs keras {runs['tflite']['max_abs_proba_diff_vs_keras']:.1e})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
