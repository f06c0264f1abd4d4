#!/usr/bin/env python
"""The BiLSTM member's training input at catalogue scale, the old way and the new, side by side
in one run, each in its own process (so that its peak memory, max RSS, is its own):

- before: every title's word vectors built at once ([titles, max_len, dim] float32), the fold's
  training rows copied out of it and handed to Keras as arrays (which it copies into a tensor);
- now: ``Embedder.token_ids`` (ids into one table of the distinct words' vectors) and
  ``BiLstmRunner.fit`` / ``predict``, which look the vectors up a batch at a time in tf.data.

Both train the same network for ``--epochs`` on the training share of ``--titles`` synthetic
titles (shared-data-like lengths; a vocabulary of ``--words`` distinct words) and predict the
rest (a title's class is its first word's, one of 60). Word vectors are deterministic
pseudo-random vectors of the default width (100 FastText + 300 navec), so no word-vector
training is timed. Prints peak MB and seconds of each side and their ratios, and the share of
held-out titles both predict alike (1.0: the same batches train the same network). Each side
runs ``--repeats`` times, in turn with the other; medians are compared.

    .venv/bin/python benchmarks/train_text_scale.py [--titles 60000] [--words 60000] [--epochs 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

LIB = str(Path(__file__).resolve().parents[1] / "lib")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import json_of_fresh_process  # noqa: E402

SIDE = """
import json, resource, sys, time, zlib
import numpy as np
sys.path.insert(0, {lib!r})
from dataclasses import replace
from museum_typology.config import load_settings
from museum_typology.text_model import BiLstmRunner, Embedder, TextSettings, class_weights, seed_everything

class PseudoVectors:  # stands in for FastText: a fixed vector per word, from its hash
    vector_size = 400
    def __getitem__(self, word):
        return np.random.default_rng(zlib.crc32(word.encode())).normal(size=400).astype(np.float32)

rng = np.random.default_rng(0)
lengths = np.clip(rng.geometric(1 / 7, size={titles}), 1, 40)
kinds = rng.integers(0, 60, size={titles})  # the first word names the class, as "монета" does
texts = [" ".join([f"kind{{kind}}", *(f"w{{k}}" for k in rng.integers(0, {words}, size=n - 1))]) for kind, n in zip(kinds, lengths)]
y = kinds % 15
train, held = np.arange({titles} * 4 // 5), np.arange({titles} * 4 // 5, {titles})
ts = replace(TextSettings.from_settings(load_settings(environ={{}})), epochs={epochs})
embedder = Embedder(PseudoVectors(), {{}}, ts.max_len)
seed_everything(ts.seed)  # as train-text does first: the same initial weights on both sides
runner = BiLstmRunner(ts.max_len, embedder.dim, ts)
started = time.perf_counter()
if {old}:
    x = np.zeros((len(texts), ts.max_len, embedder.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for j, token in enumerate(text.split()[: ts.max_len]):
            x[i, j] = embedder.vector(token)
    import tensorflow as tf
    tf.keras.utils.set_random_seed(ts.seed)  # as BiLstmRunner.fit does
    runner.model.fit(x[train], y[train], epochs=ts.epochs, batch_size=ts.batch_size, class_weight=class_weights(y[train]), verbose=0, shuffle=True)
    proba = runner.model.predict(x[held], batch_size=1024, verbose=0)
else:
    tokens = embedder.token_ids(texts)
    weights = runner.fit(tokens.rows(train), y[train])
    proba = runner.predict(weights, tokens.rows(held))
seconds = time.perf_counter() - started
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds, "classes": proba.argmax(1).tolist()}}))
"""


def side(args: argparse.Namespace, old: bool) -> dict:
    return json_of_fresh_process(SIDE.format(lib=LIB, titles=args.titles, words=args.words, epochs=args.epochs, old=old))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=int, default=60_000)
    parser.add_argument("--words", type=int, default=60_000, help="distinct words the titles are drawn from")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of now and before in turn (the machine is noisy); medians are compared")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"now": [], "before": []}
    for _ in range(args.repeats):
        runs["now"].append(side(args, old=False))
        runs["before"].append(side(args, old=True))
    agree = sum(a == b for a, b in zip(runs["now"][0]["classes"], runs["before"][0]["classes"])) / max(1, args.titles - args.titles * 4 // 5)
    summary = {name: {"peak_mb": round(statistics.median(r["peak_mb"] for r in rs), 1), "seconds": [round(r["seconds"], 1) for r in rs]} for name, rs in runs.items()}
    seconds = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    print(json.dumps({
        "titles": args.titles, "words": args.words, "epochs": args.epochs, **summary,
        "peak_memory_ratio_before_vs_now": round(summary["before"]["peak_mb"] / summary["now"]["peak_mb"], 2),
        "seconds_ratio_before_vs_now": round(seconds["before"] / seconds["now"], 2),
        "held_out_classes_agreeing": round(agree, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
