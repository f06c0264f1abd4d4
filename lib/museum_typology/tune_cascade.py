"""tune-cascade job: fit the cascade's thresholds and blend weight on out-of-fold predictions.

Reads ``oof/text.parquet`` and ``oof/image.parquet`` (guid, label, proba), pairs image rows with
text rows of the same label (``cascade.paired_oof``: the shared data has almost no real pairs),
searches the conf's grids for the best macro-F1, and writes a versioned bundle
``models/cascade/<version>/`` (``cascade.json`` + ``report.md``) and ``models/cascade/latest``.
Real pairs (guids in both files) are scored with the tuned and the baseline parameters beside it.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from . import bundles, storage
from .cascade import CascadeParams, cross_fitted, decide, paired_oof, source_breakdown, tune
from .config import Settings
from .log import get_logger
from .report import macro_f1
from .schema import CLASSES
from .storage import S3Options

log = get_logger(__name__)


class TuneError(ValueError):
    """An out-of-fold file is missing or unusable."""


def read_oof(url: str, s3: S3Options | None) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """(guids, labels as class indices, probabilities [n, 15], model_version) of an OOF file."""
    if not storage.exists(url, s3):
        raise TuneError(f"{url}: no out-of-fold file (run train-text / train-image first)")
    fs, path = storage.filesystem(url, s3)
    table = pq.read_table(path, filesystem=fs)
    missing = [c for c in ("guid", "label", "proba") if c not in table.column_names]
    if missing:
        raise TuneError(f"{url}: missing column(s) {', '.join(missing)}")
    labels = table.column("label").to_pylist()
    unknown = sorted({label for label in labels if label not in CLASSES})
    if unknown:
        raise TuneError(f"{url}: unknown label(s) {unknown[:3]}")
    proba = np.asarray(table.column("proba").to_pylist(), dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(CLASSES):
        raise TuneError(f"{url}: proba must hold {len(CLASSES)} floats per row, got shape {proba.shape}")
    versions = table.column("model_version").to_pylist() if "model_version" in table.column_names else [""]
    return table.column("guid").to_pylist(), np.array([CLASSES.index(label) for label in labels]), proba, str(versions[0] if versions else "")


def run(settings: Settings, text_oof: str, image_oof: str, cascade_dir: str) -> dict[str, Any]:
    s3 = S3Options.from_settings(settings.section("s3"))
    conf = settings.section("cascade")
    baseline = CascadeParams.from_dict(conf)
    t_guids, t_y, t_proba, t_version = read_oof(text_oof, s3)
    i_guids, i_y, i_proba, i_version = read_oof(image_oof, s3)
    text_pairs, image_pairs, y, groups = paired_oof(t_proba, t_y, i_proba, i_y, int(conf["pairs_per_image"]), int(conf["seed"]))
    if len(y) == 0:
        raise TuneError(f"{image_oof}: no image row shares a label with {text_oof}: nothing to tune on")
    best, table = tune(text_pairs, image_pairs, y, conf["threshold_grid"], conf["weight_grid"], baseline.default_class)
    held_out = cross_fitted(text_pairs, image_pairs, y, groups, int(conf["folds"]), conf["threshold_grid"], conf["weight_grid"], baseline.default_class, int(conf["seed"]))
    ones = np.ones(len(y), dtype=bool)
    tuned_decision, baseline_decision = decide(text_pairs, image_pairs, ones, ones, best), decide(text_pairs, image_pairs, ones, ones, baseline)
    metrics: dict[str, Any] = {
        "pairs": int(len(y)),
        "folds": int(conf["folds"]) - 1,
        "params": best.to_dict(),
        "baseline_params": baseline.to_dict(),
        "paired_macro_f1": {"tuned": macro_f1(y, tuned_decision.label), "tuned_cross_fitted": macro_f1(y, held_out), "baseline": macro_f1(y, baseline_decision.label),
                            "text_only": macro_f1(y, text_pairs.argmax(1)), "image_only": macro_f1(y, image_pairs.argmax(1))},
        "paired_sources": {"tuned": source_breakdown(tuned_decision, y), "baseline": source_breakdown(baseline_decision, y)},
        "real_pairs": real_pairs(t_guids, t_proba, i_guids, i_y, i_proba, best, baseline),
        "inputs": {"text_oof": text_oof, "text_model": t_version, "image_oof": image_oof, "image_model": i_version},
    }
    digest = hashlib.sha256(json.dumps([t_version, i_version, conf], sort_keys=True, default=str).encode()).hexdigest()
    version = bundles.make_version(digest)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        (local / "cascade.json").write_text(json.dumps({"version": version, "params": best.to_dict(), "metrics": metrics}, ensure_ascii=False, indent=1))
        (local / "grid.json").write_text(json.dumps(table, indent=0))
        (local / "report.md").write_text(report_markdown(metrics), encoding="utf-8")
        url = storage.join(cascade_dir, version)
        storage.upload_directory(str(local), url, s3)
    bundles.publish_latest(cascade_dir, version, s3)
    log.info("tune-cascade: %s (paired macro-F1 %.3f, baseline %.3f) -> %s", best, metrics["paired_macro_f1"]["tuned"], metrics["paired_macro_f1"]["baseline"], url)
    return {"bundle": url, "version": version, "params": best, "metrics": metrics}


def real_pairs(t_guids, t_proba, i_guids, i_y, i_proba, tuned: CascadeParams, baseline: CascadeParams) -> dict[str, Any]:
    """Items that really have both modalities in the OOF files, scored both ways (few here)."""
    where = {g: k for k, g in enumerate(t_guids)}
    both = [(where[g], k) for k, g in enumerate(i_guids) if g in where]
    if not both:
        return {"rows": 0}
    t_rows, i_rows = (np.array(x) for x in zip(*both))
    y, ones = i_y[i_rows], np.ones(len(both), dtype=bool)
    return {
        "rows": len(both),
        "accuracy": {name: float((decide(t_proba[t_rows], i_proba[i_rows], ones, ones, p).label == y).mean()) for name, p in (("tuned", tuned), ("baseline", baseline))},
    }


def report_markdown(metrics: dict[str, Any]) -> str:
    f1 = metrics["paired_macro_f1"]
    lines = [
        "# Cascade tuning",
        "",
        f"Tuned on {metrics['pairs']} virtual items (each image out-of-fold row paired with text out-of-fold rows of the same label).",
        "",
        "| parameters | t_text | t_image | w_text | paired macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for name in ("tuned", "baseline"):
        p = metrics["params"] if name == "tuned" else metrics["baseline_params"]
        lines.append(f"| {name} | {p['t_text']} | {p['t_image']} | {p['w_text']} | {f1[name]:.3f} |")
    lines += ["", f"Cross-fitted (parameters tuned on the other {metrics['folds']} folds' images, scored on the held-out images' pairs): {f1['tuned_cross_fitted']:.3f} against {f1['baseline']:.3f} for the baseline's parameters."]
    lines += ["", f"Text alone: {f1['text_only']:.3f}; image alone: {f1['image_only']:.3f}.", "", "Decisions by source (tuned):", ""]
    for source, values in metrics["paired_sources"]["tuned"].items():
        lines.append(f"- {source}: {values['rows']} rows, accuracy {values['accuracy']:.3f}")
    real = metrics["real_pairs"]
    lines += ["", f"Real items with both modalities: {real['rows']}" + (f"; accuracy tuned {real['accuracy']['tuned']:.3f}, baseline {real['accuracy']['baseline']:.3f}." if real["rows"] else ".")]
    return "\n".join(lines) + "\n"
