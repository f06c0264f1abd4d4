"""Per-class F1 averaged over the fold seeds of a repeated cross-validation, with each class's
wins/ties/losses of a model against its baseline (shared by the train_text and train_image
benchmarks). On small data one split says little per class: a handful of rows moves a rare
class's F1 by 0.05-0.2, so the same comparison is run on several fold seeds."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def across_seeds(runs: Sequence[dict], columns: Sequence[str], model: str, baseline: str, macro_keys: Sequence[str]) -> dict:
    """``runs``: one dict per fold seed with "seed", "per_class" (rows with "class", "support"
    and the F1 ``columns``, the classes in the same order in every run) and the ``macro_keys``
    (each a dict name -> score). Returns the per-class means of ``columns``, the model's
    wins/ties/losses against the baseline per class, and the mean of each macro score."""
    classes = [row["class"] for row in runs[0]["per_class"]]
    table = []
    for i, name in enumerate(classes):
        assert all(r["per_class"][i]["class"] == name for r in runs), "runs list their classes in different orders"
        values = {c: np.array([r["per_class"][i][c] for r in runs], dtype=float) for c in columns}
        diff = values[model] - values[baseline]
        table.append(
            {
                "class": name,
                "support": runs[0]["per_class"][i]["support"],
                **{c: round(float(v.mean()), 3) for c, v in values.items()},
                "wins_ties_losses": f"{int((diff > 1e-9).sum())}/{int((np.abs(diff) <= 1e-9).sum())}/{int((diff < -1e-9).sum())}",
            }
        )
    means = {key: {name: float(np.mean([r[key][name] for r in runs])) for name in runs[0][key]} for key in macro_keys}
    return {"seeds": [r["seed"] for r in runs], "per_class": table, **means}
