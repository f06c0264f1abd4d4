#!/usr/bin/env python
"""tune-cascade's grid search at catalogue scale, the old way and the new, side by side in one
run: per grid point, ``decide`` from scratch and scikit-learn's ``f1_score`` (before) against one
``cascade.Routing`` for the whole grid and ``report.macro_f1``'s bincount (now). ("Before" calls
today's ``decide``, which builds a Routing per call; its per-row work is the old decide's: the
rows' maxima, classes and blend, each grid point again.)

Synthetic out-of-fold probabilities: ``--images`` image rows, each paired with
``cascade.pairs_per_image`` text rows (conf: 20), i.e. 3.6M pairs for 180K images. The old way is
timed on ``--sample`` grid points and its per-point time multiplied out to conf's grid (thresholds^2
x weights) and cross-fitting (1 + cascade.folds tunings); both ways must agree on every sampled
point.

    .venv/bin/python benchmarks/tune_cascade_scale.py [--images 180000] [--sample 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from museum_typology.cascade import CascadeParams, Routing, decide, paired_oof  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.report import macro_f1  # noqa: E402
from museum_typology.schema import CLASSES  # noqa: E402


def synthetic_oof(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(CLASSES), rows)
    logits = rng.normal(0, 1, (rows, len(CLASSES)))
    logits[np.arange(rows), y] += rng.normal(2.0, 1.0, rows)
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=180_000)
    parser.add_argument("--sample", type=int, default=4, help="grid points timed the old way")
    args = parser.parse_args()
    conf = load_settings(environ={}).section("cascade")
    rng = np.random.default_rng(0)
    t_y, t_proba = synthetic_oof(4 * args.images, rng)
    i_y, i_proba = synthetic_oof(args.images, rng)
    text, image, y, _ = paired_oof(t_proba, t_y, i_proba, i_y, int(conf["pairs_per_image"]), 0)
    grid = [CascadeParams(float(a), float(b), float(w), CLASSES[-1]) for a, b, w in product(conf["threshold_grid"], conf["threshold_grid"], conf["weight_grid"])]
    tunings = 1 + int(conf["folds"])
    print(f"{len(y):,} pairs; grid of {len(grid)} points; {tunings} tunings (the search and cross-fitting)")

    ones = np.ones(len(y), dtype=bool)
    labels = sorted(set(y.tolist()))
    sample = [grid[i] for i in np.linspace(0, len(grid) - 1, args.sample).astype(int)]
    start = time.perf_counter()
    old_scores = [float(f1_score(y, decide(text, image, ones, ones, p).label, labels=labels, average="macro", zero_division=0)) for p in sample]
    old_point = (time.perf_counter() - start) / len(sample)

    start = time.perf_counter()
    routing = Routing(text, image, ones, ones)
    new_scores = [macro_f1(y, routing.labels(p)) for p in grid]
    new_grid = time.perf_counter() - start
    sampled_new = [new_scores[grid.index(p)] for p in sample]
    assert sampled_new == old_scores, f"the two ways disagree: {sampled_new} vs {old_scores}"

    old_total, new_total = old_point * len(grid) * tunings, new_grid * tunings
    print(f"old: {old_point:6.2f} s a point -> {old_total / 60:6.1f} min for the tuning (estimated from {len(sample)} points)")
    print(f"new: {new_grid / len(grid):6.3f} s a point -> {new_total / 60:6.1f} min for the tuning (measured over the whole grid)")
    print(f"ratio old/new: {old_total / new_total:.1f}x")


if __name__ == "__main__":
    main()
