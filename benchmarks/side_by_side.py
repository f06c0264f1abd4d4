"""The "now against before" summary the side-by-side benchmarks print: medians of alternating
timed runs, rows/s of each, and their ratio (shared by score_dataset.py, score_dataset_read.py
and score_batch_order.py), and the alternating runs themselves."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


def alternate(timed: Callable[[str], tuple[float, Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """One warm-up run of each side (page cache, imports), then ``repeats`` rounds of "now" and
    "before" in turn. ``timed(name)`` returns (seconds, a count to report); returns the seconds
    per side and each side's last count."""
    timed("now"), timed("before")
    seconds: dict[str, list[float]] = {"now": [], "before": []}
    counts: dict[str, Any] = {}
    for _ in range(repeats):
        for name in ("now", "before"):
            took, counts[name] = timed(name)
            seconds[name].append(took)
    return seconds, counts


def report_now_vs_before(seconds: dict[str, list[float]], rows: int, context: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    """``seconds``: {"now": [...], "before": [...]} over ``rows`` rows each run; ``context`` goes
    first in the printed JSON (and in ``json_path`` when given)."""
    now, before = statistics.median(seconds["now"]), statistics.median(seconds["before"])
    results = {
        **context,
        "seconds": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "rows_per_s_now": round(rows / now, 2),
        "rows_per_s_before": round(rows / before, 2),
        "ratio_now_vs_before": round(before / now, 2),
    }
    print(json.dumps(results, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    return results


def json_of_fresh_process(code: str) -> dict[str, Any]:
    """Run ``code`` in a new Python process (so that its peak memory, max RSS, is its own) and
    return the JSON object its last line prints."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
