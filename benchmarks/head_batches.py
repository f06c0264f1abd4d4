#!/usr/bin/env python
"""The image head's minibatch bookkeeping at catalogue scale, the old way and the new, side by
side in one run: finding each global minibatch's rows by scanning every training row per batch
(``np.where(batch_of == b)``) against one stable sort per epoch (``image_model.rows_by_batch``).

Rows are training views: images x views per image (180K images x 12 views by default); batches of
``--batch`` rows. Prints seconds per epoch for both, their ratio, and checks they agree.

    .venv/bin/python benchmarks/head_batches.py [--images 180000] [--views 12] [--batch 32] [--sample 400]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from museum_typology import image_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=180_000)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sample", type=int, default=400, help="batches timed for the scan (it is extrapolated to the epoch)")
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


if __name__ == "__main__":
    main()
