"""Text scoring throughput: descriptions/s on this machine for a batch of N (default 100K), beside a
naive row-by-row loop over the same bundle in the same run, plus the bundle's size on disk.

    .venv/bin/python benchmarks/score_text.py [--model var/models/text] [--n 100000] [--naive-n 300]

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from museum_typology.config import load_settings  # noqa: E402
from museum_typology.ingest import read_input_rows  # noqa: E402
from museum_typology.text import normalize  # noqa: E402
from museum_typology.text_model import TextModel  # noqa: E402
from museum_typology.train_text import resolve_bundle  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "text"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--naive-n", type=int, default=300)
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
    }
    print(json.dumps(results, indent=1))
    print("(one run on a shared, noisy machine: compare the ratio, not the absolute rates)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
