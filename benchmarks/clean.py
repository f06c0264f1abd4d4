#!/usr/bin/env python
"""Does cleaning the labels help? Cross-validated macro-F1 of a text classifier trained on the
original labels against the same classifier trained on the cleaned labels, same folds, one run.

The classifier is the suite's char+word TF-IDF LinearSVC (``text_model.make_linear_svc``, the
text baseline and linear member), fast enough to be trained many times; the folds are the text
model's grouped stratified folds (``text_model.fold_ids``: identical titles stay in one fold).

Two ways of getting the cleaned labels, both reported:

(A) the job's manifest: the decisions of a ``clean`` run on the real out-of-fold probabilities
    (default ``var/clean/cleaned_manifest.parquet``, made from ``var/oof/text.parquet`` and
    ``image.parquet``). Training rows take their cleaned label (relabel) or leave (drop). Not
    honest: the OOF probabilities that decided a training row's fate came from fold models that
    were trained on the held-out fold's original labels, so held-out label information leaks into
    the cleaned training labels. It measures what the shipped manifest does, optimistically.
(B) nested, honest: inside each outer fold, the training part alone is cleaned: an inner 4-fold
    CV of the same classifier gives out-of-fold probabilities (softmaxed margins at a fitted
    temperature), and the job's own logic decides (``clean.spark_clusters`` with one k per scope,
    then ``clean.clean_labels``). The held-out fold never influences its own training labels.

Evaluation is always on held-out folds, against the ORIGINAL labels (nothing is "fixed" in the
test set), on (1) every held-out row and (2) the held-out rows that the full clean run kept
unchanged (the rows whose labels nobody questions: a cleaner, if smaller, test set). (3) is the
held-out rows against their cleaned labels (the job's relabels applied, drops left out): circular,
shown, not trusted. The text model's TF-IDF member uses the same folds, C and seed as the classifier
here, so the model "trained on original labels" in fold k is the very member whose out-of-fold
predictions made the job's relabels in fold k: it scores 1.0 on them by construction.

    .venv/bin/python benchmarks/clean.py [--data DIR] [--manifest FILE] [--folds 5] [--no-nested] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("MUSEUM_NO_PROGRESS", "1")


def fit_predict(texts: list[str], y: np.ndarray, train: np.ndarray, held: np.ndarray, C: float, seed: int) -> np.ndarray:
    from museum_typology.text_model import make_linear_svc

    model = make_linear_svc(C, seed).fit([texts[i] for i in train], y[train])
    return model.predict([texts[i] for i in held])


def inner_oof(texts: list[str], y: np.ndarray, rows: np.ndarray, folds: np.ndarray, C: float, seed: int) -> np.ndarray:
    """Out-of-fold probabilities over ``rows`` from an inner CV (fold ids ``folds`` per row)."""
    from museum_typology.text_model import fit_logit_temperature, make_linear_svc, margins, softmax

    logits = np.zeros((len(rows), 15))
    for k in np.unique(folds):
        tr, te = rows[folds != k], rows[folds == k]
        model = make_linear_svc(C, seed).fit([texts[i] for i in tr], y[tr])
        logits[folds == k] = margins(model, [texts[i] for i in te])
    return softmax(logits, fit_logit_temperature(logits, y[rows]))


def macro(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray) -> float:
    from museum_typology.report import macro_f1

    return macro_f1(y_true[mask], y_pred[mask])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="catalogue CSVs (default: paths.data)")
    parser.add_argument("--manifest", default=str(ROOT / "var" / "clean" / "cleaned_manifest.parquet"), help="a clean job's manifest for (A)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-nested", action="store_true", help="skip (B)")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()

    from museum_typology import clean
    from museum_typology.config import load_settings
    from museum_typology.ingest import read_input_rows
    from museum_typology.log import setup_logging
    from museum_typology.schema import CLASS_INDEX, CLASSES
    from museum_typology.text_model import TextSettings, fold_ids, labelled_texts

    setup_logging("WARNING")
    settings = load_settings()
    ts = TextSettings.from_settings(settings)
    data = labelled_texts(read_input_rows(args.data or settings.get("paths.data"), settings))
    texts, y = data.texts, data.y
    fold = fold_ids(data, args.folds, ts.seed)
    C = ts.baseline_C
    started = time.time()

    cleaned = clean.read_cleaned_labels(args.manifest)
    actions = {r["guid"]: r["action"] for r in pq.read_table(args.manifest, columns=["guid", "action"]).to_pylist()}
    in_manifest = np.array([g in cleaned for g in data.guids])
    kept = np.array([actions.get(g) == "keep" for g in data.guids])
    y_job = np.array([CLASS_INDEX[cleaned[g]] if cleaned.get(g) else -1 if g in cleaned else y[i] for i, g in enumerate(data.guids)])
    print(f"{len(y)} labelled titles, {args.folds} grouped folds; manifest {args.manifest}: {in_manifest.sum()} of them named, "
          f"{(y_job != y).sum() - (y_job < 0).sum()} relabelled, {(y_job < 0).sum()} dropped, {kept.sum()} kept unchanged")

    pred = {name: np.zeros(len(y), dtype=np.int64) for name in ("original", "job", "job_drop_only", "nested")}
    nested_counts = []
    spark = None
    if not args.no_nested:
        from museum_typology.session import build_spark

        spark = build_spark(settings, "bench-clean")
    cs = clean.CleanSettings.from_settings(settings)
    # (B) uses one k per scope: the silhouette search over the full grid, five times, would take
    # most of the run on 2 cores; 3 per label and 12 overall are what the full run mostly picks.
    nested_cs = clean.CleanSettings(**{**cs.__dict__, "label_k": (3,), "overall_k": (12,)})
    for k in range(args.folds):
        t0 = time.time()
        train, held = np.where(fold != k)[0], np.where(fold == k)[0]
        pred["original"][held] = fit_predict(texts, y, train, held, C, ts.seed)
        job_train = train[y_job[train] >= 0]
        pred["job"][held] = fit_predict(texts, y_job, job_train, held, C, ts.seed)
        pred["job_drop_only"][held] = fit_predict(texts, y, train[y_job[train] == y[train]], held, C, ts.seed)
        if spark is not None:
            # Inner folds grouped like the outer ones (identical titles together).
            inner = fold_ids(type(data)(guids=[data.guids[i] for i in train], texts=[texts[i] for i in train], y=y[train]), 4, ts.seed)
            proba = inner_oof(texts, y, train, inner, C, ts.seed)
            oof = clean.Oof([data.guids[i] for i in train], y[train], proba, ["text"] * len(train))
            label_cluster, cluster, k_choice = clean.spark_clusters(spark, oof, nested_cs)
            decided = clean.clean_labels(oof, nested_cs, label_cluster, cluster, k_choice)
            y_nested = np.array([CLASS_INDEX[t] if t else -1 for t in decided.new_labels])
            nested_counts.append({a: decided.actions.count(a) for a in clean.ACTIONS})
            pred["nested"][held] = _fit_nested(texts, train, y_nested, held, C, ts.seed)
        print(f"fold {k + 1}/{args.folds} done in {time.time() - t0:.0f} s" + (f" (nested cleaning: {nested_counts[-1]})" if nested_counts else ""), flush=True)

    everyone = np.ones(len(y), dtype=bool)
    judged = y_job >= 0
    rows = []
    for name in ("original", "job", "job_drop_only") + (("nested",) if spark is not None else ()):
        rows.append(
            {
                "trained on": name,
                "all held-out, original labels": macro(y, pred[name], everyone),
                "kept rows, original labels": macro(y, pred[name], kept & in_manifest),
                "held-out vs cleaned labels (biased)": macro(np.where(judged, y_job, y), pred[name], judged),
            }
        )
    names = {
        "original": "original labels",
        "job": "(A) job's cleaned labels (relabel + drop)",
        "job_drop_only": "(A) job's suspects dropped, none relabelled",
        "nested": "(B) nested: training part cleaned by the job's logic",
    }
    columns = list(rows[0])[1:]
    print(f"\nCross-validated macro-F1 ({args.folds} grouped folds, TF-IDF LinearSVC C={C}), one run, {time.time() - started:.0f} s:\n")
    print(f"| trained on | {' | '.join(columns)} |")
    print("|---|" + "---|" * len(columns))
    for r in rows:
        print(f"| {names[r['trained on']]} | " + " | ".join(f"{r[c]:.4f}" for c in columns) + " |")
    base = rows[0]
    print("\nratio cleaned / original:")
    for r in rows[1:]:
        print(f"  {names[r['trained on']]}: " + ", ".join(f"{c}: {r[c] / base[c]:.3f}" for c in columns))
    if nested_counts:
        print(f"nested cleaning per outer fold (training part only): {nested_counts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "nested_counts": nested_counts, "folds": args.folds, "C": C, "classes": list(CLASSES)}, ensure_ascii=False, indent=2))
    if spark is not None:
        spark.stop()
    return 0


def _fit_nested(texts: list[str], train: np.ndarray, y_train_clean: np.ndarray, held: np.ndarray, C: float, seed: int) -> np.ndarray:
    """Train on the cleaned training part (dropped rows out), predict the held-out fold."""
    from museum_typology.text_model import make_linear_svc

    keep = y_train_clean >= 0
    model = make_linear_svc(C, seed).fit([texts[i] for i in train[keep]], y_train_clean[keep])
    return model.predict([texts[i] for i in held])


if __name__ == "__main__":
    sys.exit(main())
