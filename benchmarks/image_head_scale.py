#!/usr/bin/env python
"""The image fold heads' bookkeeping at catalogue scale, the old way and the new, side by side
in one run:

(a) finding each global minibatch's rows: a scan of every training row per batch
    (``np.where(batch_of == b)``) against one stable sort per epoch (``image_model.rows_by_batch``).
    Rows are training views: images x views per image (180K images x 12 views by default);
    batches of ``--batch`` rows. Seconds per epoch for both, their ratio; checks they agree.
(b) putting a rank's extracted features in guid order: concatenating the chunks and taking the
    reordered copy against ``image_model.stack_in_guid_order`` (each chunk placed and let go).
    Peak memory (max RSS) of each way in its own process, for ``--feature-images`` images of
    ``--views`` x 1280 floats in chunks of 64 images.
(c) a fold's training rows (4 folds of 5 of those images, every view a row): a copy of them made
    into a tensor, gathered from per minibatch, against indices into the features (what
    ``image_model._train_head`` does now), gathered from with numpy per minibatch. Peak memory of
    each way in its own process (TensorFlow loaded in both); checks both give a minibatch alike.

    .venv/bin/python benchmarks/image_head_scale.py [--images 180000] [--views 12] [--batch 32] [--sample 400] [--feature-images 20000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

LIB = str(Path(__file__).resolve().parents[1] / "lib")
sys.path.insert(0, LIB)
from museum_typology import image_model  # noqa: E402
from side_by_side import json_of_fresh_process  # noqa: E402

STACK = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {lib!r})
from museum_typology import image_model
rng = np.random.default_rng(0)
guids = [f"g{{i:07d}}" for i in rng.permutation({images})]
chunks = [np.ones((min(64, {images} - s), {views}, 1280), np.float32) for s in range(0, {images}, 64)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {old}:
    feats = np.concatenate(chunks)[np.argsort(guids, kind="stable")]
else:
    _, feats = image_model.stack_in_guid_order(guids, chunks)
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "features_mb": feats.nbytes / 2**20}}))
"""


FOLD_ROWS = """
import json, resource, sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, {lib!r})
from museum_typology import image_model
feats = np.random.default_rng(0).random(({images}, {views}, 1280), dtype=np.float32)
train_mask = np.arange({images}) % 5 != 0
rows = np.random.default_rng(1).choice(int(train_mask.sum()) * {views}, 32, replace=False)
if {old}:
    x_train = tf.constant(feats[train_mask].reshape(-1, 1280))
    batch = tf.gather(x_train, rows).numpy()
else:
    rows_of = feats.reshape(-1, 1280)
    train_rows = image_model.training_rows(train_mask, {views})
    batch = tf.constant(rows_of[train_rows[rows]]).numpy()
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "batch_sum": float(batch.astype(np.float64).sum())}}))
"""


def stacking_peak(images: int, views: int, old: bool) -> dict:
    return json_of_fresh_process(STACK.format(lib=LIB, images=images, views=views, old=old))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=180_000)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sample", type=int, default=400, help="batches timed for the scan (it is extrapolated to the epoch)")
    parser.add_argument("--feature-images", type=int, default=20_000, help="images whose features are stacked in (b)")
    args = parser.parse_args()
    rows = args.images * args.views
    n_batches = int(np.ceil(rows / args.batch))
    hashes = image_model.stable_hash([f"g{i}" for i in range(args.images)])
    batch_of = image_model.batch_ids(np.repeat(hashes, args.views), 13, 0, 0, n_batches)

    start = time.perf_counter()
    by_batch = image_model.rows_by_batch(batch_of, n_batches)
    sorted_s = time.perf_counter() - start

    sample = np.linspace(0, n_batches - 1, min(args.sample, n_batches)).astype(int)
    start = time.perf_counter()
    scanned = [np.where(batch_of == b)[0] for b in sample]
    scan_s = (time.perf_counter() - start) * n_batches / sample.size
    assert all((by_batch[b] == r).all() for b, r in zip(sample, scanned)), "the two ways disagree"

    print(f"{rows:,} training rows, {n_batches:,} batches of {args.batch}")
    print(f"scan per batch (old): {scan_s:8.2f} s per epoch (from {sample.size} batches)")
    print(f"one sort (new):       {sorted_s:8.2f} s per epoch")
    print(f"ratio old/new:        {scan_s / sorted_s:8.1f}x")

    old, new = stacking_peak(args.feature_images, args.views, True), stacking_peak(args.feature_images, args.views, False)
    print(f"features of {args.feature_images:,} images x {args.views} views: {new['features_mb']:,.0f} MB")
    print(f"concatenate + reorder (old): peak {old['peak_mb']:8,.0f} MB")
    print(f"placed chunk by chunk (new): peak {new['peak_mb']:8,.0f} MB")
    print(f"ratio old/new:               {old['peak_mb'] / new['peak_mb']:8.2f}x")

    old, new = (json_of_fresh_process(FOLD_ROWS.format(lib=LIB, images=args.feature_images, views=args.views, old=o)) for o in (True, False))
    assert old["batch_sum"] == new["batch_sum"], "the two ways gather different minibatches"
    print(f"a fold's training rows, copied into a tensor (old): peak {old['peak_mb']:8,.0f} MB")
    print(f"indices into the features (new):                    peak {new['peak_mb']:8,.0f} MB")
    print(f"ratio old/new:                                      {old['peak_mb'] / new['peak_mb']:8.2f}x")


if __name__ == "__main__":
    main()
