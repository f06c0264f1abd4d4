#!/usr/bin/env python
"""Text model benchmark: the train-text job against the simple baseline, repeated over fold seeds.

For each fold seed (``text.seed``: the folds, the word vectors and the BiLSTMs' initial weights)
``museum_typology.train_text.run`` trains the model in K stratified folds on the shared labelled
titles and, in the same folds, the simple baseline (char+word TF-IDF + LinearSVC, balanced class
weights, ``text.baseline_C``). Its metrics hold both out-of-fold results side by side; this
prints them per seed and then averaged over the seeds, per class with the model's wins, ties
and losses against the baseline. The model's figure is the honest one the job reports
(``macro_f1.final``: blend weight and class offsets chosen on the other folds only).

On 3.8K titles with noisy labels one split says little per class (a few titles move a rare
class's F1 by several points), hence the seeds. Each seed is a full train-text run: 3.5-4.5
minutes on an idle 2-core machine.

    .venv/bin/python benchmarks/train_text.py [--data DIR] [--seeds 13,5,6] [--json out.json] [--set KEY=VALUE] [--against KEY=VALUE]

``--against`` runs every seed a second time with that setting (in turn, so a busy spell of the
machine hits both) and prints its table too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from repeated_cv import across_seeds  # noqa: E402

os.environ.setdefault("MUSEUM_NO_PROGRESS", "1")
MEMBERS = ("baseline", "tfidf", "bilstm", "final")


def seed_run(settings, data: str, tmp: str, seed: int) -> dict:
    from museum_typology import train_text

    settings = settings.set(["text", "seed"], seed, "--seeds")
    started = time.time()
    result = train_text.run(settings, data, f"{tmp}/models/text-seed{seed}", f"{tmp}/oof/text-seed{seed}.parquet")
    metrics = result["metrics"]
    return {
        "seed": seed,
        "rows": metrics["rows"],
        "macro_f1": {name: metrics["macro_f1"][name] for name in MEMBERS},
        "per_class": [{"class": r["class"], "support": r["support"], "baseline_f1": r["baseline_f1"], "linear_f1": r["linear_f1"], "f1": r["f1"]} for r in metrics["per_class"]],
        "blend_weight_bilstm": metrics["blend_weight_bilstm"],
        "seconds": round(time.time() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", default="13,5,6", help="comma-separated fold seeds")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--against", action="append", default=[], help="KEY=VALUE: also run each seed with this setting, in turn with the others, and print both")
    args = parser.parse_args()

    from museum_typology import report
    from museum_typology.config import load_settings
    from museum_typology.log import setup_logging

    setup_logging("WARNING")
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        settings = load_settings(overrides=[f"paths.work_dir={tmp}", *args.overrides], environ={})
        against = load_settings(overrides=[f"paths.work_dir={tmp}/against", *args.overrides, *args.against], environ={}) if args.against else None
        for seed in [int(v) for v in args.seeds.split(",") if v.strip()]:
            for name, chosen in (("runs", settings), ("runs_against", against)):
                if chosen is None:
                    continue
                run = seed_run(chosen, args.data, tmp if name == "runs" else f"{tmp}/against", seed)
                results.setdefault(name, []).append(run)
                label = f" with {' '.join(args.against)}" if name == "runs_against" else ""
                print(f"fold seed {seed}{label} ({run['seconds']} s): " + ", ".join(f"{k} {v:.3f}" for k, v in run["macro_f1"].items()), flush=True)
    results["mean"] = across_seeds(results["runs"], ["baseline_f1", "linear_f1", "f1"], "f1", "baseline_f1", ["macro_f1"])
    if args.against:
        results["mean_against"] = across_seeds(results["runs_against"], ["baseline_f1", "linear_f1", "f1"], "f1", "baseline_f1", ["macro_f1"])
        print(f"\nwith {' '.join(args.against)}, mean over fold seeds:")
        print(report.markdown_table(results["mean_against"]["per_class"], ["class", "support", "baseline_f1", "linear_f1", "f1", "wins_ties_losses"]))
        print(json.dumps(results["mean_against"]["macro_f1"], indent=1))
    results["load_avg_end"] = os.getloadavg()[0]
    mean = results["mean"]
    print(f"\nmean over fold seeds {mean['seeds']} (f1 = the model; wins/ties/losses of the model against the baseline):")
    print(report.markdown_table(mean["per_class"], ["class", "support", "baseline_f1", "linear_f1", "f1", "wins_ties_losses"]))
    print(json.dumps(mean["macro_f1"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
