"""The "now against before" summary the side-by-side benchmarks print: medians of alternating
timed runs, rows/s of each, and their ratio (shared by score_dataset.py and
score_dataset_read.py)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


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
