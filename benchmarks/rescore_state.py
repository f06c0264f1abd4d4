#!/usr/bin/env python
"""rescore's current state at the end of a long history, read whole and read folding as it goes,
side by side in one run: seconds and peak memory (max RSS) of ``rescore.current_predictions``
over a synthetic predictions directory, each way in its own process.

The history: ``--guids`` catalogue rows, ``--nights`` nights; every ``--full-every``-th night
rescores the whole catalogue (a new model), the others ``--changed`` rows. Read whole
(``compact_above`` larger than the history) is what the job did before; folded is conf's default.

    .venv/bin/python benchmarks/rescore_state.py [--guids 300000] [--nights 366] [--full-every 26] [--changed 2000] [--dir DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LIB = str(Path(__file__).resolve().parents[1] / "lib")
sys.path.insert(0, LIB)
from museum_typology import rescore  # noqa: E402
from museum_typology.schema import CLASSES  # noqa: E402
from side_by_side import json_of_fresh_process  # noqa: E402

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {lib!r})
from museum_typology import rescore
start = time.perf_counter()
frame = rescore.current_predictions({url!r}, columns=rescore.STATE_COLUMNS, compact_above={compact})
print(json.dumps({{"seconds": time.perf_counter() - start, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "guids": len(frame), "digest": int(frame["guid"].str.len().sum())}}))
"""


def write_history(root: Path, guids: int, nights: int, full_every: int, changed: int) -> int:
    rng = np.random.default_rng(0)
    names = np.array([f"GK{i:09d}" for i in range(guids)], dtype=object)
    rows = 0
    for night in range(nights):
        index = np.arange(guids) if night % full_every == 0 else np.sort(rng.choice(guids, min(changed, guids), replace=False))
        n = len(index)
        columns = {
            "guid": names[index], "typology": np.array(CLASSES, dtype=object)[rng.integers(0, len(CLASSES), n)],
            "confidence": rng.random(n), "source": ["text"] * n, "model_version": [f"text=v{night // full_every}"] * n, "note": [""] * n,
            "text_confidence": rng.random(n), "image_confidence": np.full(n, np.nan), "description_hash": [f"{i:016x}" for i in index],
            "image_sha256": [None] * n, "reason": ["model" if night % full_every == 0 else "description"] * n,
        }
        directory = root / f"date={(dt.date(2026, 1, 1) + dt.timedelta(days=night)).isoformat()}"
        directory.mkdir(parents=True)
        pq.write_table(pa.table(columns, schema=rescore.PARTITION_SCHEMA), directory / rescore.PART_FILE)
        (directory / "_SUCCESS").write_bytes(b"")
        rows += n
    return rows


def measure(url: str, compact: int) -> dict:
    return json_of_fresh_process(MEASURE.format(lib=LIB, url=url, compact=compact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guids", type=int, default=300_000)
    parser.add_argument("--nights", type=int, default=366)
    parser.add_argument("--full-every", type=int, default=26)
    parser.add_argument("--changed", type=int, default=2000)
    parser.add_argument("--dir", help="an existing history to read instead of writing one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dir:
            url = args.dir
        else:
            url = str(Path(tmp) / "predictions")
            rows = write_history(Path(url), args.guids, args.nights, args.full_every, args.changed)
            print(f"history: {args.nights} nights, {rows:,} rows, {args.guids:,} guids")
        whole = measure(url, 2**62)
        folded = measure(url, rescore.current_predictions.__defaults__[-1])
    assert (whole["guids"], whole["digest"]) == (folded["guids"], folded["digest"]), "the two ways disagree"
    for name, r in (("read whole (before)", whole), ("folded as read (now)", folded)):
        print(f"{name:22s} {r['seconds']:7.1f} s  peak {r['max_rss_mb']:7.0f} MB  ({r['guids']:,} guids)")
    print(f"ratio whole/folded:    time {whole['seconds'] / folded['seconds']:.2f}x  peak memory {whole['max_rss_mb'] / folded['max_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
