"""Text scoring throughput: descriptions/s on this machine for a batch of N (default 100K), beside a
naive row-by-row loop over the same bundle in the same run, plus the bundle's size on disk; and
N' titles scored in turn with the fold members' n-grams cut once for all (``FoldFeatures``) and
cut by each fold member itself (as before 2026-11-29, afternoon), checking equal probabilities.

    .venv/bin/python benchmarks/score_text.py [--model var/models/text] [--n 100000] [--naive-n 300] [--fold-by-fold-n 20000] [--against-model DIR]

Needs a text bundle (`museum-typology train-text` or `make run` makes one). Titles are drawn from
the shared data with random word drops and swaps, so most are new strings (the vectoriser and the
embedding cache get no free ride). Ratios come from one run on a noisy shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from museum_typology.config import load_settings  # noqa: E402
from museum_typology.ingest import read_input_rows  # noqa: E402
from museum_typology.text import normalize  # noqa: E402
from museum_typology.text_model import TextModel  # noqa: E402
from museum_typology.train_text import resolve_bundle  # noqa: E402
from side_by_side import alternate  # noqa: E402


def synthetic_titles(n: int, seed: int = 0) -> list[str]:
    settings = load_settings()
    titles = [r.description for r in read_input_rows(settings.get("paths.data"), settings) if r.description]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(titles).split()
        if len(words) > 2 and rng.random() < 0.5:
            words.pop(rng.randrange(len(words)))
        if len(words) > 1 and rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        out.append(" ".join(words))
    return out


def scored_in_turn(now: tuple[TextModel, list[str]], before: tuple[TextModel, list[str]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each side's (model, normalised titles) scored in turn (``side_by_side.alternate``: a warm-up
    of each, then two rounds): the best seconds of each side, and its probabilities."""
    sides = {"now": now, "before": before}

    def timed(name: str) -> tuple[float, np.ndarray]:
        model, texts = sides[name]
        started = time.perf_counter()
        proba = model.predict_proba(texts)
        return time.perf_counter() - started, proba

    seconds, answers = alternate(timed, repeats=2)
    return {name: min(values) for name, values in seconds.items()}, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "text"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--naive-n", type=int, default=300)
    parser.add_argument("--against-model", help="another text bundle: the same --fold-by-fold-n titles scored with it in turn with this one (titles/s of each)")
    parser.add_argument("--fold-by-fold-n", type=int, default=20_000, help="titles also scored with each fold member cutting its own n-grams (as before 2026-11-29, afternoon), in turn with the shared cut (0: skip)")
    parser.add_argument("--json")
    args = parser.parse_args()

    bundle = resolve_bundle(args.model)
    size_mb = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file() and "report" not in f.parts) / 1e6
    started = time.perf_counter()
    model = TextModel.load(bundle)
    load_s = time.perf_counter() - started
    titles = synthetic_titles(args.n)
    model.predict_proba([normalize(t, model.normalization) for t in titles[:64]])  # warm-up: trace the graph once

    started = time.perf_counter()
    for title in titles[: args.naive_n]:
        model.predict_proba([normalize(title, model.normalization)])
    naive_rate = args.naive_n / (time.perf_counter() - started)

    started = time.perf_counter()
    proba = model.predict_proba([normalize(t, model.normalization) for t in titles])
    batch_s = time.perf_counter() - started
    assert proba.shape == (args.n, 15)
    batch_rate = args.n / batch_s

    shared_vs_folds, against = {}, {}
    if args.fold_by_fold_n:
        import dataclasses

        sample = [normalize(t, model.normalization) for t in titles[: args.fold_by_fold_n]]
        fold_by_fold = dataclasses.replace(model, _fold_features=None)  # None: no shared n-gram counts
        best, answers = scored_in_turn(now=(model, sample), before=(fold_by_fold, sample))
        assert np.array_equal(answers["now"], answers["before"]), "the shared n-gram counts changed a probability"
        shared_vs_folds = {"fold_by_fold_rows_per_s": round(len(sample) / best["before"], 1), "shared_rows_per_s": round(len(sample) / best["now"], 1),
                           "shared_over_fold_by_fold": round(best["before"] / best["now"], 2), "same_probabilities": True}
        if args.against_model:
            other = TextModel.load(resolve_bundle(args.against_model))
            other_sample = [normalize(t, other.normalization) for t in titles[: args.fold_by_fold_n]]
            best, _ = scored_in_turn(now=(model, sample), before=(other, other_sample))
            against = {"against_bundle": resolve_bundle(args.against_model).name,
                       "against_rows_per_s": round(len(sample) / best["before"], 1), "this_rows_per_s_beside_it": round(len(sample) / best["now"], 1)}

    results = {
        "bundle": bundle.name,
        "bundle_mb_without_report": round(size_mb, 1),
        "load_s": round(load_s, 1),
        "cores": os.cpu_count(),
        "batch_rows": args.n,
        "batch_seconds": round(batch_s, 1),
        "batch_rows_per_s": round(batch_rate, 1),
        "naive_rows": args.naive_n,
        "naive_rows_per_s": round(naive_rate, 1),
        "batch_over_naive": round(batch_rate / naive_rate, 1),
        **shared_vs_folds,
        **against,
    }
    print(json.dumps(results, indent=1))
    print("(one run on a shared, noisy machine: compare the ratio, not the absolute rates)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
