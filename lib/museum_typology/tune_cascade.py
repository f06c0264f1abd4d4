"""tune-cascade job: fit the cascade's thresholds and blend weight on out-of-fold predictions.

Reads ``oof/text.parquet`` and ``oof/image.parquet`` (guid, label, proba), pairs image rows with
text rows of the same label (``cascade.paired_oof``: the shared data has almost no real pairs),
searches the conf's grids for the best macro-F1, and writes a versioned bundle
``models/cascade/<version>/`` (``cascade.json`` + ``report.md``, atomically with ``_SUCCESS``) and
then ``models/cascade/latest``. The version hashes the settings and the OOF files' content.
Real pairs (guids in both files) are scored with the tuned and the baseline parameters beside it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from . import bundles, clean, storage
from .cascade import CascadeParams, cross_fitted, decide, paired_oof, source_breakdown, tune
from .config import Settings, number_within, whole_number
from .log import get_logger
from .report import macro_f1
from .schema import CLASSES
from .storage import S3Options

log = get_logger(__name__)


class TuneError(ValueError):
    """An out-of-fold file is missing or unusable, or the [cascade] settings cannot be tuned with."""


def read_oof(url: str, s3: S3Options | None, source: str) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """(guids, labels as class indices, probabilities [n, 15], model_version) of an OOF file.

    Read and checked by the clean job's reader (``clean.read_oof_table`` + ``clean.oof_from_table``:
    readable Parquet, rows, unique non-empty guids, known labels, 15 finite non-negative
    probabilities summing to 1), so both jobs accept and refuse the same files; its ``OofError``
    becomes a ``TuneError``. ``source``: the kind of model the file must come from ("text" or
    "image"): the two files given the other way round would tune thresholds on swapped roles."""
    try:
        table = clean.read_oof_table(url, s3)
        oof = clean.oof_from_table(table, url)
    except clean.OofError as exc:
        raise TuneError(str(exc)) from None
    if oof.sources[0] != source:
        raise TuneError(f"{url}: holds out-of-fold predictions of the {oof.sources[0]} model, given as the {source} one")
    # The version score compares with the bundle it scores with (score.cascade_mismatch): the
    # first row's alone let a file of several runs, or one starting with an empty value, pass.
    if len(oof.model_versions) > 1:
        raise TuneError(f"{url}: holds out-of-fold predictions of {len(oof.model_versions)} model versions ({', '.join(oof.model_versions)}); tune on one training run's file")
    return oof.guids, oof.y, oof.proba, oof.model_versions[0] if oof.model_versions else ""


def shared_rows(t_guids: list[str], i_guids: list[str]) -> list[tuple[int, int]]:
    """(text row, image row) of each guid both out-of-fold files hold, in the image file's order."""
    where = {g: k for k, g in enumerate(t_guids)}
    return [(where[g], k) for k, g in enumerate(i_guids) if g in where]


def label_disagreements(t_guids: list[str], t_y: np.ndarray, i_guids: list[str], i_y: np.ndarray) -> list[tuple[str, int, int]]:
    """(guid, text label, image label) for each guid the two files label differently: models
    trained on other labels (train-text with a clean --manifest, the image folds without). The
    tuning pairs each image row with text rows of its own label, so it still works, but with the
    image file's labels as the truth; said, not refused (clean, which averages one guid's
    probabilities under one label, refuses such files)."""
    return [(i_guids[i], int(t_y[t]), int(i_y[i])) for t, i in shared_rows(t_guids, i_guids) if t_y[t] != i_y[i]]


# Bumped when tuning changes what the same out-of-fold files and settings give (the pairing, the
# grid search, the cross-fitting, the report): a bundle tuned before is tuned again, not reused.
TUNING_VERSION = 1


def oof_digest(guids: list[str], y: np.ndarray, proba: np.ndarray) -> str:
    """sha256 of an OOF file's content as read (guids, labels, probabilities): the bundle version
    changes with the data even when the file's model_version column is absent or unchanged."""
    h = hashlib.sha256()
    h.update(json.dumps(guids, ensure_ascii=False).encode())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(proba, dtype=np.float64).tobytes())
    return h.hexdigest()


def check_conf(conf: dict[str, Any]) -> tuple[int, int, int]:
    """(folds, pairs_per_image, seed) of [cascade], refused (ConfigError, TuneError) when they cannot work."""
    values = {
        key: whole_number(f"cascade.{key}", conf.get(key), least, why)
        for key, least, why in (("folds", 2, "the cross-fitted estimate tunes on the other folds and scores the held-out one"), ("pairs_per_image", 1, "each image row needs a text row to pair with"), ("seed", 0, "a random seed"))
    }
    for key in ("threshold_grid", "weight_grid"):
        grid = conf.get(key)
        if not isinstance(grid, list) or not grid or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid):
            raise TuneError(f"cascade.{key} = {grid!r}: must be a non-empty list of numbers")
    # Each grid point becomes a CascadeParams: a weight outside [0, 1] failed there, after both
    # trainings, under the name w_text; a threshold above 1 means "never", NaN or inf nothing.
    for value in conf["weight_grid"]:
        number_within("a value of cascade.weight_grid", value, 0.0, 1.0)
    for value in conf["threshold_grid"]:
        number_within("a value of cascade.threshold_grid", value, 0.0, float("inf"), high_included=False)
    return values["folds"], values["pairs_per_image"], values["seed"]


def run(settings: Settings, text_oof: str, image_oof: str, cascade_dir: str) -> dict[str, Any]:
    s3 = S3Options.from_settings(settings.section("s3"))
    conf = settings.section("cascade")
    folds, per_image, seed = check_conf(conf)  # before reading anything: a bad setting fails at once
    baseline = CascadeParams.from_dict(conf)
    t_guids, t_y, t_proba, t_version = read_oof(text_oof, s3, "text")
    i_guids, i_y, i_proba, i_version = read_oof(image_oof, s3, "image")
    differ = label_disagreements(t_guids, t_y, i_guids, i_y)
    if differ:
        guid, text_label, image_label = differ[0]
        log.warning(
            "tune-cascade: %d guid(s) labelled otherwise in %s than in %s, e.g. %s: %s there, %s here; "
            "the pairs take the image file's labels (train both models on the same labels, the same --manifest, to tune on one truth)",
            len(differ), text_oof, image_oof, guid, CLASSES[text_label], CLASSES[image_label],
        )
    t_digest, i_digest = oof_digest(t_guids, t_y, t_proba), oof_digest(i_guids, i_y, i_proba)
    # The data's digests too: the model_version column may be absent, or the same over new data.
    digest = hashlib.sha256(json.dumps([t_version, i_version, t_digest, i_digest, conf, TUNING_VERSION], sort_keys=True, default=str).encode()).hexdigest()
    reused = reusable_cascade(cascade_dir, digest, s3)
    if reused is not None:
        # Tuning is deterministic: the same inputs and settings give this bundle again. A new
        # version would change every prediction's model_version, and rescore would score the
        # whole catalogue again for nothing.
        log.info("tune-cascade: %s was tuned on these out-of-fold files and settings; reused", reused["bundle"])
        return reused
    text_pairs, image_pairs, y, groups = paired_oof(t_proba, t_y, i_proba, i_y, per_image, seed)
    if len(y) == 0:
        raise TuneError(f"{image_oof}: no image row shares a label with {text_oof}: nothing to tune on")
    if len(np.unique(groups)) < 2:  # the cross-fitted estimate tunes on the other images' pairs
        raise TuneError(f"{image_oof}: only one image row shares a label with {text_oof}; tuning needs two at least")
    best, table = tune(text_pairs, image_pairs, y, conf["threshold_grid"], conf["weight_grid"], baseline.default_class)
    held_out = cross_fitted(text_pairs, image_pairs, y, groups, folds, conf["threshold_grid"], conf["weight_grid"], baseline.default_class, seed)
    ones = np.ones(len(y), dtype=bool)
    tuned_decision, baseline_decision = decide(text_pairs, image_pairs, ones, ones, best), decide(text_pairs, image_pairs, ones, ones, baseline)
    metrics: dict[str, Any] = {
        "pairs": int(len(y)),
        "folds": folds,  # as configured (cascade.folds); each held-out fold is tuned on the other folds - 1
        "params": best.to_dict(),
        "baseline_params": baseline.to_dict(),
        "paired_macro_f1": {"tuned": macro_f1(y, tuned_decision.label), "tuned_cross_fitted": macro_f1(y, held_out), "baseline": macro_f1(y, baseline_decision.label),
                            "text_only": macro_f1(y, text_pairs.argmax(1)), "image_only": macro_f1(y, image_pairs.argmax(1))},
        "paired_sources": {"tuned": source_breakdown(tuned_decision, y), "baseline": source_breakdown(baseline_decision, y)},
        "real_pairs": real_pairs(t_guids, t_proba, i_guids, i_y, i_proba, best, baseline),
        "inputs": {"text_oof": text_oof, "text_model": t_version, "text_digest": t_digest, "image_oof": image_oof, "image_model": i_version, "image_digest": i_digest, "label_disagreements": len(differ)},
    }
    version = bundles.make_version(digest)
    url = storage.join(cascade_dir, version)
    # Atomic, with _SUCCESS, like the text and image bundles: a crash leaves no half bundle that
    # score could pick up; ``latest`` moves only after the commit.
    with storage.atomic_directory(url, s3, job="tune-cascade", sweep_abandoned_after_s=storage.ABANDONED_STAGING_AGE_S) as staging:  # _SUCCESS names the owner
        storage.write_bytes(storage.join(staging, "cascade.json"), json.dumps({"version": version, "run_key": digest, "params": best.to_dict(), "metrics": metrics}, ensure_ascii=False, indent=1).encode(), s3)
        storage.write_bytes(storage.join(staging, "grid.json"), json.dumps(table, indent=0).encode(), s3)
        storage.write_bytes(storage.join(staging, "report.md"), report_markdown(metrics).encode("utf-8"), s3)
    bundles.publish_latest(cascade_dir, version, s3)
    log.info("tune-cascade: %s (paired macro-F1 %.3f cross-fitted, %.3f in-sample; baseline %.3f) -> %s", best, metrics["paired_macro_f1"]["tuned_cross_fitted"], metrics["paired_macro_f1"]["tuned"], metrics["paired_macro_f1"]["baseline"], url)
    return {"bundle": url, "version": version, "params": best, "metrics": metrics, "reused": False}


def reusable_cascade(cascade_dir: str, run_key: str, s3: S3Options | None) -> dict[str, Any] | None:
    """``run``'s result for the committed bundle ``latest`` names when it was tuned under
    ``run_key`` (the out-of-fold files' versions and content, and [cascade]); else None."""
    try:
        version = bundles.latest_version(cascade_dir, s3)
    except storage.StorageError as exc:  # tuned again; publishing the new cascade mends it
        log.info("%s; tuning again", exc)
        return None
    found = bundles.bundle_of_run(cascade_dir, version, run_key, "cascade.json", s3)
    if found is None:
        return None
    url, stored = found
    try:
        return {"bundle": url, "version": version, "params": CascadeParams.from_dict(stored["params"], tuned=True), "metrics": dict(stored["metrics"]), "reused": True}
    except (ValueError, KeyError, TypeError):  # a damaged bundle is tuned again, not reused
        return None


def real_pairs(t_guids, t_proba, i_guids, i_y, i_proba, tuned: CascadeParams, baseline: CascadeParams) -> dict[str, Any]:
    """Items that really have both modalities in the OOF files, scored both ways (few here)."""
    both = shared_rows(t_guids, i_guids)
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
        lines.append(f"| {'tuned (in-sample: chosen and scored on the same pairs)' if name == 'tuned' else name} | {p['t_text']} | {p['t_image']} | {p['w_text']} | {f1[name]:.3f} |")
    lines += ["", f"Cross-fitted (parameters tuned on the other {metrics['folds'] - 1} folds' images, scored on the held-out images' pairs): {f1['tuned_cross_fitted']:.3f} against {f1['baseline']:.3f} for the baseline's parameters."]
    lines += ["", f"Text alone: {f1['text_only']:.3f}; image alone: {f1['image_only']:.3f}.", "", "Decisions by source (tuned):", ""]
    for source, values in metrics["paired_sources"]["tuned"].items():
        lines.append(f"- {source}: {values['rows']} rows, accuracy {values['accuracy']:.3f}")
    real = metrics["real_pairs"]
    lines += ["", f"Real items with both modalities: {real['rows']}" + (f"; accuracy tuned {real['accuracy']['tuned']:.3f}, baseline {real['accuracy']['baseline']:.3f}." if real["rows"] else ".")]
    differ = metrics["inputs"].get("label_disagreements")
    if differ:
        lines += ["", f"**{differ} guid(s) are labelled otherwise in the text file than in the image file** (models trained on other labels): the pairs took the image file's labels."]
    return "\n".join(lines) + "\n"
