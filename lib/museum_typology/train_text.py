"""train-text job: cross-validated training of the text model, its report, bundle and
out-of-fold probabilities.

read the catalogue CSVs -> K grouped stratified folds: linear member (TF-IDF + pooled word
vectors), BiLSTM member and the baseline on each -> blend weight and temperature on the
out-of-fold predictions -> write the bundle (models/text/<version>/), oof/text.parquet and the
report, each atomically.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import bundles, report, storage
from .catalogue import InputRow, decode_csv_bytes, parse_catalogue_csv
from .config import Settings
from .ingest import read_input_rows
from .log import get_logger, progress
from .schema import CLASSES, SPLIT_CRAWL
from .storage import S3Options
from .text import NORMALIZATION_VERSION, normalize
from .text_model import (
    Embedder,
    LinearMember,
    TextModel,
    TextSettings,
    blend,
    blend_logits,
    data_hash,
    BiLstmRunner,
    fold_ids,
    fit_class_offsets,
    fit_logit_temperature,
    margins,
    softmax,
    labelled_texts,
    load_navec_table,
    make_linear_svc,
    seed_everything,
    settings_dict,
    train_word_vectors,
)

log = get_logger(__name__)


class TrainTextError(ValueError):
    """Labelled data the text model cannot be cross-validated on (a user error: one clear line)."""


# Bump when a change to the training code changes the model it trains from the same data and
# settings: the run key includes it, so bundles of older code are not reused.
# 2: the navec scale no longer follows the string-hash seed (bundles of 1 were one of its variants).
TRAINING_VERSION = 2


def check_folds(y: np.ndarray, fold: np.ndarray, folds: int, where: str) -> None:
    """Every fold holds rows and every training side two classes at least. Identical titles stay
    in one fold, so a few distinct titles leave folds empty (sklearn then failed deep inside)."""
    sizes = np.bincount(fold, minlength=folds)
    if sizes.min() == 0:
        raise TrainTextError(f"{where}: {int((sizes == 0).sum())} of {folds} folds get no titles: the labelled rows have fewer distinct titles than folds (identical titles stay in one fold); lower text.folds or add data")
    for k in range(folds):
        if len(np.unique(y[fold != k])) < 2:
            raise TrainTextError(f"{where}: the rows outside fold {k + 1} of {folds} hold a single typology; the model needs two at least")


def cross_fitted_predictions(lstm: np.ndarray, tfidf_margin: np.ndarray, y: np.ndarray, fold: np.ndarray, grid: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Out-of-fold decisions whose tuned parts (the linear member's temperature, the blend weight,
    class offsets) were fitted without the fold they decide: {"blend": argmax of the blend,
    "offsets": argmax with class offsets}."""
    result = {"blend": np.zeros(len(y), dtype=np.int64), "offsets": np.zeros(len(y), dtype=np.int64)}
    for k in np.unique(fold):
        inside, outside = fold == k, fold != k
        tfidf = softmax(tfidf_margin, fit_logit_temperature(tfidf_margin[outside], y[outside]))
        weight, _ = choose_weight(lstm[outside], tfidf[outside], y[outside], grid)
        log_blend = blend_logits(lstm, tfidf, weight)
        offsets = fit_class_offsets(log_blend[outside], y[outside])
        result["blend"][inside] = log_blend[inside].argmax(1)
        result["offsets"][inside] = (log_blend[inside] + offsets).argmax(1)
    return result


def choose_weight(lstm: np.ndarray, tfidf: np.ndarray, y: np.ndarray, grid: tuple[float, ...]) -> tuple[float, dict[float, float]]:
    """The blend weight with the best out-of-fold macro-F1 (ties -> the more even blend)."""
    scores = {w: report.macro_f1(y, blend(lstm, tfidf, w).argmax(axis=1)) for w in grid}
    best = max(scores, key=lambda w: (round(scores[w], 6), -abs(w - 0.5)))
    return best, scores


def say_rows_left_out(rows: list[InputRow]) -> None:
    """Log how many rows of the labelled titles file (train.csv) the text model does not learn
    from, and why (the reader's reasons, counted, with examples; descriptions without words):
    10 rows labelled "Графика " left their class without a word."""
    from collections import Counter

    from .schema import SPLIT_TRAIN

    labelled = [r for r in rows if r.split == SPLIT_TRAIN]
    rejected = [r for r in labelled if r.rejected_reason]
    wordless = [r for r in labelled if not r.rejected_reason and r.typology is not None and not normalize(r.description)]
    if not rejected and not wordless:
        return
    kinds = Counter(reason_kind(r.rejected_reason) for r in rejected)
    if wordless:
        kinds["without words in the description"] = len(wordless)
    examples = [r.rejected_reason for r in rejected[:3]] or [f"{r.source_file} row {r.source_row}: {r.description!r}" for r in wordless[:3]]
    log.warning("train-text: %d of %d labelled rows left out: %s; e.g. %s", len(rejected) + len(wordless), len(labelled), ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()), "; ".join(examples))


def reason_kind(reason: str | None) -> str:
    """A reader's reason without its file and row ("train.csv row 7 (line 8): unknown typology
    'Графика '" -> "unknown typology"), to count rows by kind."""
    text = (reason or "").split(": ", 1)[-1]
    return text.split(" '", 1)[0].split(" (", 1)[0].strip() or "rejected"


def read_url_only_rows(data_dir: str, settings: Settings, s3: S3Options | None = None) -> list[InputRow]:
    """The rows of the URL CSV (``text.url_only_csv``) under ``data_dir``, for the word vectors'
    corpus only; [] when the setting is empty or the file is not there. Its labels are not read
    (nor checked): these rows do not train the classifiers."""
    name = settings.get("text.url_only_csv")
    if not name:
        return []
    url = storage.under(data_dir, name)
    if not storage.exists(url, s3):
        log.info("%s: not found; the word vectors learn from the labelled and test rows only", url)
        return []
    rows = parse_catalogue_csv(decode_csv_bytes(storage.read_bytes(url, s3), name), name, SPLIT_CRAWL, required=("description",), labelled=False)
    log.info("%s: %d rows, their descriptions for the word vectors", name, len(rows))
    return rows


def run(settings: Settings, data_dir: str, model_dir: str, oof_url: str, folds: int | None = None, manifest: str | None = None, retrain: bool = False) -> dict[str, Any]:
    """Train the text model in K folds, or reuse the bundle under ``model_dir`` that ``oof_url``
    names when it was trained on the same data and settings (unless ``retrain``). Returns the bundle, out-of-fold and report URLs, the metrics, and ``reused``."""
    started = time.time()
    s3 = S3Options.from_settings(settings.section("s3"))
    if folds is not None:
        settings = settings.set(["text", "folds"], int(folds), "--folds")
    ts = TextSettings.from_settings(settings)
    seed_everything(ts.seed)
    # Where the results go, before the folds train: a file as --model-dir failed with a traceback
    # after every fold, a folder as --oof after the bundle was committed.
    storage.check_can_write(model_dir, "--model-dir", folder=True, s3=s3)
    storage.check_can_write(oof_url, "--oof", folder=False, s3=s3)

    rows = read_input_rows(data_dir, settings, s3)
    data = labelled_texts(rows)
    say_rows_left_out(rows)
    where = f"{data_dir} with --manifest {manifest}" if manifest else data_dir
    if manifest:  # the clean job's decisions: relabelled rows get their new label, dropped rows leave
        from .clean import apply_cleaned_labels, read_cleaned_labels

        data = apply_cleaned_labels(data, read_cleaned_labels(manifest, s3))
    if len(data) < ts.folds * 2:
        raise TrainTextError(f"{where}: only {len(data)} labelled rows with a description; need at least {ts.folds * 2}")
    corpus = [normalize(r.description) for r in [*rows, *read_url_only_rows(data_dir, settings, s3)] if r.description]
    log.info("train-text: %d labelled titles, %d descriptions for word vectors, %d folds", len(data), len(corpus), ts.folds)

    fold = fold_ids(data, ts.folds, ts.seed)
    check_folds(data.y, fold, ts.folds, where)
    # The run key: the labelled titles, every description the word vectors learn from, and the
    # settings. The same key means the same model, so a bundle trained under it is reused.
    digest = data_hash(data)
    conf_digest = hashlib.sha256(json.dumps({**settings_dict(ts), "normalization": NORMALIZATION_VERSION, "training_version": TRAINING_VERSION}, sort_keys=True).encode()).hexdigest()
    corpus_digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()
    run_key = hashlib.sha256((digest + conf_digest + corpus_digest).encode()).hexdigest()
    reusable = None if retrain else bundles.reusable_bundle(model_dir, run_key, oof_url, s3)
    if reusable:
        bundle_url, metrics = reusable
        log.info("train-text: %s was trained on these data and settings; reused (--retrain trains again)", bundle_url)
        return {"bundle": bundle_url, "oof": oof_url, "report": storage.join(bundle_url, "report", "report.md"), "metrics": metrics, "reused": True}
    vectors = train_word_vectors(corpus, ts)
    vocabulary = {token for text in corpus for token in text.split()}
    navec = load_navec_table(vocabulary) if ts.use_navec else {}
    log.info("word vectors: %d FastText words, %d of %d corpus words found in navec", len(vectors.key_to_index), len(navec), len(vocabulary))
    embedder = Embedder(vectors, navec, ts.max_len)
    tokens = embedder.token_ids(data.texts)  # the BiLSTM's input
    pooled = embedder.pooled(data.texts)  # the linear member's word-vector features

    oof = {name: np.zeros((len(data), len(CLASSES))) for name in ("tfidf_margin", "lstm")}
    baseline_pred = np.zeros(len(data), dtype=np.int64)
    lstm_folds, tfidf_folds = [], []
    runner = BiLstmRunner(ts.max_len, embedder.dim, ts)
    for k in progress(range(ts.folds), desc="train-text folds", total=ts.folds, unit="fold"):
        train, held = np.where(fold != k)[0], np.where(fold == k)[0]
        train_texts = [data.texts[i] for i in train]
        held_texts = [data.texts[i] for i in held]
        tfidf = LinearMember(ts.tfidf_C, ts.tfidf_vectors_weight, ts.seed).fit(train_texts, pooled[train], data.y[train])
        baseline = make_linear_svc(ts.baseline_C, ts.seed).fit(train_texts, data.y[train])
        baseline_pred[held] = baseline.predict(held_texts)
        oof["tfidf_margin"][held] = margins(tfidf, held_texts, pooled[held])
        for s in range(ts.lstm_seeds):
            lstm = runner.fit(tokens.rows(train), data.y[train], s)
            oof["lstm"][held] += runner.predict(lstm, tokens.rows(held)) / ts.lstm_seeds
            lstm_folds.append(lstm)
        tfidf_folds.append(tfidf)
        log.info(
            "fold %d/%d: macro-F1 baseline %.3f, tfidf %.3f, bilstm %.3f",
            k + 1,
            ts.folds,
            report.macro_f1(data.y[held], baseline_pred[held]),
            report.macro_f1(data.y[held], oof["tfidf_margin"][held].argmax(1)),
            report.macro_f1(data.y[held], oof["lstm"][held].argmax(1)),
        )

    tfidf_temperature = fit_logit_temperature(oof["tfidf_margin"], data.y)
    oof["tfidf"] = softmax(oof["tfidf_margin"], tfidf_temperature)
    weight, weight_scores = choose_weight(oof["lstm"], oof["tfidf"], data.y, ts.blend_grid)
    blended = blend(oof["lstm"], oof["tfidf"], weight)
    log_blend = blend_logits(oof["lstm"], oof["tfidf"], weight)
    # Honest scores: the blend weight (and the class offsets) used on each fold are chosen on the
    # other folds only. Offsets are kept only if they win under that cross-fitting.
    honest = cross_fitted_predictions(oof["lstm"], oof["tfidf_margin"], data.y, fold, ts.blend_grid)
    use_offsets = report.macro_f1(data.y, honest["offsets"]) > report.macro_f1(data.y, honest["blend"])
    offsets = fit_class_offsets(log_blend, data.y) if use_offsets else np.zeros(len(CLASSES))
    honest_pred = honest["offsets" if use_offsets else "blend"]
    temperature = fit_logit_temperature(log_blend + offsets, data.y)
    calibrated = softmax(log_blend + offsets, temperature)

    version = bundles.make_version(run_key)
    metrics = build_metrics(data.y, baseline_pred, oof, blended, calibrated, honest_pred, weight, weight_scores, temperature)
    metrics["class_offsets"] = dict(zip(CLASSES, offsets.round(3).tolist())) if use_offsets else None
    metrics["macro_f1"]["blend_cross_fitted"] = report.macro_f1(data.y, honest["blend"])
    metrics["macro_f1"]["offsets_cross_fitted"] = report.macro_f1(data.y, honest["offsets"])
    metrics.update(version=version, run_key=run_key, data_hash=digest, rows=len(data), folds=ts.folds, seconds=round(time.time() - started, 1))
    model = TextModel(
        embedder, lstm_folds, tfidf_folds, weight, temperature, version, tfidf_temperature=tfidf_temperature, offsets=offsets, settings=ts,
        normalization=NORMALIZATION_VERSION, _runner=runner,
    )

    bundle_url = storage.join(model_dir, version)
    oof_bytes = bundles.oof_parquet(data.guids, data.y, fold, calibrated, version, "text")
    with tempfile.TemporaryDirectory(prefix="text-bundle-") as tmp:
        local = Path(tmp) / version
        model.save(local, {"conf.json": {"text": settings_dict(ts), "settings": settings.values}, "metrics.json": metrics})
        write_report(local / "report", data.y, baseline_pred, honest_pred, calibrated, blended, metrics)
        (local / bundles.BUNDLE_OOF).write_bytes(oof_bytes)
        with storage.atomic_directory(bundle_url, s3, job="train-text", sweep_abandoned_after_s=storage.ABANDONED_STAGING_AGE_S) as staging:  # _SUCCESS names the owner
            storage.upload_directory(str(local), staging, s3)
    # The out-of-fold file before ``latest``, as train-image does: a kill in between never leaves
    # a newest bundle beside the previous run's out-of-fold file.
    storage.write_bytes(oof_url, oof_bytes, s3)
    bundles.publish_latest(model_dir, version, s3)
    log.info("train-text: macro-F1 %.3f (baseline %.3f), bundle %s", metrics["macro_f1"]["final"], metrics["macro_f1"]["baseline"], bundle_url)
    return {"bundle": bundle_url, "oof": oof_url, "report": storage.join(bundle_url, "report", "report.md"), "metrics": metrics, "reused": False}


def build_metrics(y, baseline_pred, oof, blended, calibrated, final_pred, weight, weight_scores, temperature) -> dict[str, Any]:
    per_class_final = report.per_class_table(y, final_pred)
    per_class_base = report.per_class_table(y, baseline_pred)
    per_class_linear = report.per_class_table(y, oof["tfidf"].argmax(1))
    per_class_lstm = report.per_class_table(y, oof["lstm"].argmax(1))
    per_class = [
        {"class": f["class"], "support": f["support"], "baseline_f1": b["f1"], "linear_f1": lin["f1"], "bilstm_f1": bl["f1"], "f1": f["f1"], "precision": f["precision"], "recall": f["recall"]}
        for f, b, lin, bl in zip(per_class_final, per_class_base, per_class_linear, per_class_lstm)
    ]
    return {
        "macro_f1": {
            "baseline": report.macro_f1(y, baseline_pred),
            "tfidf": report.macro_f1(y, oof["tfidf"].argmax(1)),
            "bilstm": report.macro_f1(y, oof["lstm"].argmax(1)),
            "blend": report.macro_f1(y, blended.argmax(1)),
            "final": report.macro_f1(y, final_pred),
        },
        "blend_weight_bilstm": weight,
        "blend_scores": {str(k): v for k, v in weight_scores.items()},
        "temperature": temperature,
        "ece": {"before_calibration": report.expected_calibration_error(blended, y), "after_calibration": report.expected_calibration_error(calibrated, y)},
        "confidence_0_7": confidence_check(calibrated, y, 0.7),
        "per_class": per_class,
    }


def confidence_check(proba: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold means after calibration: share of rows above it, and their accuracy."""
    above = proba.max(axis=1) >= threshold
    accuracy = float((proba.argmax(axis=1)[above] == y[above]).mean()) if above.any() else float("nan")
    return {"threshold": threshold, "share_above": float(above.mean()), "accuracy_above": accuracy}


def write_report(directory: Path, y, baseline_pred, final_pred, calibrated, blended, metrics: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "confusion.png").write_bytes(report.confusion_png(y, final_pred, f"text model, out-of-fold (macro-F1 {metrics['macro_f1']['final']:.3f})"))
    (directory / "confusion_baseline.png").write_bytes(report.confusion_png(y, baseline_pred, f"baseline, out-of-fold (macro-F1 {metrics['macro_f1']['baseline']:.3f})"))
    (directory / "reliability.png").write_bytes(report.reliability_png({"blend, raw": (blended, y), "calibrated": (calibrated, y)}))
    macro = metrics["macro_f1"]
    text = [
        f"# Text model {metrics.get('version', '')}",
        "",
        f"{metrics.get('folds')}-fold grouped stratified cross-validation on {metrics.get('rows')} labelled titles (out-of-fold predictions).",
        "",
        "| model | macro-F1 |",
        "|---|---|",
        f"| baseline: char+word TF-IDF + LinearSVC (balanced) | {macro['baseline']:.3f} |",
        f"| linear member: TF-IDF + pooled word vectors, LinearSVC (margins -> softmax) | {macro['tfidf']:.3f} |",
        f"| FastText+navec BiLSTM member | {macro['bilstm']:.3f} |",
        f"| blend, weight tuned on the other folds (cross-fitted) | {macro['blend_cross_fitted']:.3f} |",
        f"| blend + macro-F1 class offsets, both cross-fitted | {macro['offsets_cross_fitted']:.3f} |",
        f"| **the model** (offsets {'kept' if metrics['class_offsets'] else 'dropped'}; BiLSTM weight {metrics['blend_weight_bilstm']}; calibrated, T={metrics['temperature']:.2f}) | {macro['final']:.3f} |",
        "",
        f"Calibration: ECE {metrics['ece']['before_calibration']:.3f} before, {metrics['ece']['after_calibration']:.3f} after. "
        f"Rows with confidence >= 0.7: {metrics['confidence_0_7']['share_above']:.1%}, accuracy among them {metrics['confidence_0_7']['accuracy_above']:.1%}.",
        "",
        "Per class (F1 of the baseline, of each member alone, of the model; the model's precision and recall):",
        "",
        report.markdown_table(metrics["per_class"], ["class", "support", "baseline_f1", "linear_f1", "bilstm_f1", "f1", "precision", "recall"]),
        "",
        "![confusion](confusion.png) ![reliability](reliability.png)",
    ]
    (directory / "report.md").write_text("\n".join(text) + "\n", encoding="utf-8")


def resolve_bundle(model_dir: str, s3: S3Options | None = None, cache_dir: str | None = None) -> Path:
    """The text bundle ``latest`` names under ``model_dir`` (or ``model_dir`` itself), as a local directory."""
    return bundles.resolve_bundle(model_dir, "calibration.json", "text", s3, cache_dir)
