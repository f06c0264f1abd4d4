"""The run's report: one static HTML page, ``WORK_DIR/report/index.html``, plus copies of the PNGs it
shows, assembled from whatever the work directory holds.

It reads: ``ingest/summary.json`` (counts), ``models/text/<latest>/`` and ``models/image/<latest>/``
(``metrics.json`` and ``report/*.png``), ``clean/review/index.html`` and ``clean/summary.json``,
the evaluate output (``evaluate/`` or the directory named in ``outputs``), the prediction files
(source and class counts) and the submission; the stage timings come from the caller. A piece that is absent shows as "not run", one that cannot
be read shows why: the report never fails a run that has already done its work.

``collect`` does the reading, ``render_html`` (pure) the page; ``build_run_report`` writes both
atomically (local or S3).
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pandas as pd

from . import storage
from .bundles import LATEST, latest_version
from .evaluate import read_table
from .log import get_logger
from .storage import S3Options

log = get_logger(__name__)

REPORT_DIR = "report"
PREDICTION_SUFFIXES = (".csv", ".parquet")
# Errors that make one piece unreadable (a broken JSON, a file without the expected columns):
# that piece says so and the rest of the report is still written.
PIECE_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #a33; font-style: italic; } .source { color: #666; font-size: .85em; }
img { max-width: 100%; border: 1px solid #ddd; margin: .3em .3em .3em 0; }
"""


@dataclass
class Piece:
    """One part of the report as found in the work directory. ``data`` is None when the stage did
    not run (nothing at ``source``); ``error`` says why an existing piece could not be read;
    ``images`` are PNGs to copy next to the page (report file name -> bytes); ``stale`` says why
    a piece found in the work directory is not this run's."""

    source: str
    data: Any = None
    error: str | None = None
    images: dict[str, bytes] = field(default_factory=dict)
    stale: str | None = None


# --- reading the work directory (I/O) ------------------------------------------------------------


def collect(work_dir: str, outputs: Mapping[str, Any] | None = None, s3: S3Options | None = None) -> dict[str, Piece]:
    """Every piece of the report, keyed by section: ingest, text, image, clean, evaluate,
    predictions, submission."""
    outputs = _flat_outputs(outputs or {})
    readers: dict[str, Callable[[], Piece]] = {
        "ingest": lambda: _json_piece(storage.join(work_dir, "ingest", "summary.json"), s3),
        "text": lambda: _model_piece(work_dir, "text", s3),
        "image": lambda: _model_piece(work_dir, "image", s3),
        "clean": lambda: _clean_piece(work_dir, s3),
        "evaluate": lambda: _evaluate_piece(work_dir, outputs, s3),
        "predictions": lambda: _predictions_piece(work_dir, outputs, s3),
        "submission": lambda: _submission_piece(work_dir, outputs, s3),
    }
    pieces = {}
    for name, read in readers.items():
        try:
            pieces[name] = read()
        except PIECE_ERRORS as exc:
            log.warning("run report: %s could not be read: %s", name, exc)
            pieces[name] = Piece(source=name, error=" ".join(str(exc).split()) or type(exc).__name__)
    return pieces


# The pipeline stage that writes each piece: when a run stops, the pieces of the stages it did not
# finish are an earlier run's.
PIECE_STAGES = {"ingest": "ingest", "image": "train-image", "text": "train-text", "clean": "clean", "predictions": "score", "submission": "submission"}


def mark_unfinished_stages(pieces: Mapping[str, Piece], outputs: Mapping[str, Any]) -> None:
    """Mark as an earlier run's every piece found whose stage is not among ``outputs`` (the
    stages this run finished). For a run that stopped; pure but for ``pieces``' ``stale``."""
    for name, stage in PIECE_STAGES.items():
        piece = pieces.get(name)
        if piece is not None and piece.data is not None and stage not in outputs:
            piece.stale = f"from an earlier run: this run stopped before its {stage} stage finished"


def _flat_outputs(outputs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The pipeline's {stage: {name: path}} (or {stage: path}) as (stage, name, path) rows."""
    rows = []
    for stage, value in outputs.items():
        if isinstance(value, Mapping):
            rows.extend((str(stage), str(name), str(path)) for name, path in value.items())
        else:
            rows.append((str(stage), "", str(value)))
    return rows


def _read_json(url: str, s3: S3Options | None) -> Any:
    try:
        return json.loads(storage.read_bytes(url, s3).decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{url}: not valid JSON ({exc})") from None


def _json_piece(url: str, s3: S3Options | None) -> Piece:
    return Piece(url, _read_json(url, s3)) if storage.exists(url, s3) else Piece(url)


def _pngs(directory: str, prefix: str, s3: S3Options | None) -> dict[str, bytes]:
    if not storage.is_dir(directory, s3):
        return {}
    return {f"{prefix}-{name}": storage.read_bytes(storage.join(directory, name), s3) for name in storage.list_files(directory, s3) if name.lower().endswith(".png")}


def _model_piece(work_dir: str, kind: str, s3: S3Options | None) -> Piece:
    """The bundle ``latest`` names for ``kind``: its metrics.json and its report's PNGs."""
    models = storage.join(work_dir, "models", kind)
    try:
        version = latest_version(models, s3)
    except storage.StorageError as exc:
        return Piece(storage.join(models, LATEST), error=str(exc))
    if version is None:
        return Piece(storage.join(models, LATEST))
    bundle = storage.join(models, version)
    piece = _json_piece(storage.join(bundle, "metrics.json"), s3)
    if piece.data is not None:
        piece.data.setdefault("version", version)
        piece.images = _pngs(storage.join(bundle, "report"), kind, s3)
    return piece


def _clean_piece(work_dir: str, s3: S3Options | None) -> Piece:
    review = storage.join(work_dir, "clean", "review", "index.html")
    data: dict[str, Any] = {}
    if storage.exists(review, s3):
        data["review"] = review
    summary = storage.join(work_dir, "clean", "summary.json")
    if storage.exists(summary, s3):
        data["summary"], data["summary_url"] = _read_json(summary, s3), summary
    return Piece(storage.join(work_dir, "clean"), data or None)


def _evaluate_piece(work_dir: str, outputs: list[tuple[str, str, str]], s3: S3Options | None) -> Piece:
    named = [path for stage, name, path in outputs if stage == "evaluate" and name in ("output", "metrics")]
    directory = storage.join(work_dir, "evaluate")
    if named:
        directory = named[0].rsplit("/", 1)[0] if named[0].endswith(".json") else named[0]
    piece = _json_piece(storage.join(directory, "metrics.json"), s3)
    # The pipeline does not evaluate: an evaluation left in the work directory by an earlier,
    # manual run may be of other predictions than this run's, and must not pass for this run's.
    # The same path is not enough: the pipeline rewrites its predictions file at the same place.
    predicted = {path for stage, _, path in outputs if stage == "score"}
    if piece.data is not None and not named and predicted:
        pred = piece.data.get("pred")
        same_file = pred is not None and storage.filesystem_path(str(pred)) in {storage.filesystem_path(p) for p in predicted}  # ./var/x and var/x alike
        if not same_file or _modified(storage.join(directory, "metrics.json"), s3) < _modified(pred, s3):
            piece.stale = f"from an earlier evaluate run, of {pred}, not of this run's predictions"
    confusion = storage.join(directory, "confusion.png")
    if piece.data is not None and storage.exists(confusion, s3):
        piece.images = {"evaluate-confusion.png": storage.read_bytes(confusion, s3)}
    return piece


def _modified(url: str, s3: S3Options | None) -> float:
    fs, path = storage.filesystem(url, s3)
    mtime = fs.get_file_info(path).mtime
    return mtime.timestamp() if mtime is not None else 0.0


def _predictions_piece(work_dir: str, outputs: list[tuple[str, str, str]], s3: S3Options | None) -> Piece:
    """Prediction files: those the score stage reported, else the files under WORK_DIR/predictions."""
    urls = [path for stage, _, path in outputs if stage == "score" and path.lower().endswith(PREDICTION_SUFFIXES)]
    directory = storage.join(work_dir, "predictions")
    if not urls and storage.is_dir(directory, s3):
        urls = [storage.join(directory, name) for name in storage.list_files(directory, s3) if name.lower().endswith(PREDICTION_SUFFIXES)]
    if not urls:
        return Piece(directory)
    return Piece(directory, [{"url": url, **prediction_summary(read_table(url, ("guid", "typology"), "predictions", s3))} for url in urls if storage.exists(url, s3)] or None)


def prediction_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """rows; per source: rows, share, mean confidence; per predicted class: rows. Pure."""
    rows = len(frame)
    sources = frame["source"] if "source" in frame.columns else pd.Series(["(no source column)"] * rows, dtype=object)
    confidence = pd.to_numeric(frame["confidence"], errors="coerce") if "confidence" in frame.columns else pd.Series([math.nan] * rows)
    by_source = []
    for name, group in confidence.groupby(sources.values, sort=True):
        by_source.append({"source": str(name), "rows": int(len(group)), "share": len(group) / rows, "mean_confidence": float(group.mean()) if group.notna().any() else None})
    by_class = [{"typology": str(name), "rows": int(count)} for name, count in frame["typology"].value_counts().sort_index().items()]
    return {"rows": rows, "by_source": by_source, "by_class": by_class}


def _submission_piece(work_dir: str, outputs: list[tuple[str, str, str]], s3: S3Options | None) -> Piece:
    named = [path for stage, name, path in outputs if "submission" in (stage, name) or path.endswith("submission.csv")]
    url = named[0] if named else storage.join(work_dir, "submission.csv")
    if not storage.exists(url, s3):
        return Piece(url)
    frame = read_table(url, ("guid", "typology"), "submission", s3)
    return Piece(url, {"url": url, "rows": len(frame), "distinct_guids": int(frame["guid"].nunique())})


# --- the page (pure) -----------------------------------------------------------------------------


def render_html(title: str, pieces: Mapping[str, Piece], timings: Mapping[str, float], outputs: Mapping[str, Any], work_dir: str, generated: str, stopped: str | None = None) -> str:
    """The report page; ``stopped`` (why a run stopped) heads it when the run failed. Every string
    from the work directory, the timings or the caller is HTML-escaped. Pure."""
    sections = [
        ("Timings", _timings_html(timings)),
        ("Ingest", _piece_html(pieces.get("ingest"), _ingest_html)),
        ("Text model", _piece_html(pieces.get("text"), lambda p: _text_html(p))),
        ("Image model", _piece_html(pieces.get("image"), lambda p: _image_html(p))),
        ("Label cleaning", _piece_html(pieces.get("clean"), lambda p: _clean_html(p, work_dir))),
        ("Evaluation", _piece_html(pieces.get("evaluate"), _evaluate_html)),
        ("Predictions", _piece_html(pieces.get("predictions"), _predictions_html)),
        ("Submission", _piece_html(pieces.get("submission"), lambda p: _submission_html(p, work_dir))),
        ("Outputs", _outputs_html(outputs)),
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="source">generated {_e(generated)} from the work directory <code>{_e(work_dir)}</code></p>',
        *([f'<p class="missing">This run stopped: {_e(stopped)}. The stages after it did not run; what the work directory still holds of them is an earlier run\'s.</p>'] if stopped else []),
        "<h2>At a glance</h2>",
        _kv_table(_glance(pieces, timings)),
    ]
    for heading, content in sections:
        body.append(f"<h2>{_e(heading)}</h2>\n{content}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, style: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1%}" if style == "%" else f"{value:.1f}" if style == "s" else f"{value:.3f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cell(value: Any, style: str = "") -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{_e(_fmt(value, style))}</td>' if numeric else f"<td>{_e(_fmt(value, style))}</td>"


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str] | tuple[str, str, str]]) -> str:
    """An HTML table; ``columns`` are (key, header[, style]) with style "%" (share), "s" (seconds)."""
    head = "".join(f"<th>{_e(c[1])}</th>" for c in columns)
    lines = [f"<table><tr>{head}</tr>"]
    for row in rows:
        lines.append("<tr>" + "".join(_cell(row.get(c[0]), c[2] if len(c) > 2 else "") for c in columns) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _kv_table(pairs: Sequence[tuple[str, Any] | tuple[str, Any, str]]) -> str:
    """Rows of (label, value[, style]), style as in ``_table``."""
    return "<table>" + "".join(f"<tr><th>{_e(p[0])}</th>{_cell(p[1], p[2] if len(p) > 2 else '')}</tr>" for p in pairs) + "</table>"


def _images(piece: Piece) -> str:
    return "".join(f'<a href="{_e(quote(name))}"><img src="{_e(quote(name))}" alt="{_e(name)}" width="520"></a>' for name in sorted(piece.images))


def _piece_html(piece: Piece | None, render: Callable[[Piece], str]) -> str:
    if piece is None or (piece.data is None and piece.error is None):
        where = f' <span class="source">(nothing at {_e(piece.source)})</span>' if piece else ""
        return f'<p class="missing">not run{where}</p>'
    if piece.error is not None:
        return f'<p class="missing">could not be read: {_e(piece.error)}</p>'
    stale = f'<p class="missing">{_e(piece.stale)}</p>\n' if piece.stale else ""
    return f'<p class="source">from {_e(piece.source)}</p>\n' + stale + render(piece)


def _glance(pieces: Mapping[str, Piece], timings: Mapping[str, float]) -> list[tuple[str, Any]]:
    def get(name: str, pick: Callable[[Any], Any]) -> Any:
        piece = pieces.get(name)
        if piece is None or (piece.data is None and piece.error is None):
            return "not run"
        if piece.error is not None:
            return "could not be read"
        try:
            value = pick(piece.data)
        except PIECE_ERRORS:
            return "—"
        if piece.stale:
            whose = "an earlier run's, not of this run's predictions" if name == "evaluate" else "an earlier run's"
            return f"{_fmt(value)} ({whose})"
        return value

    image = pieces.get("image")
    # After train-image --final its bundle is latest: its figure is on the held-out validation fold
    # of its own fine-tuning, not out of fold.
    final = image is not None and isinstance(image.data, dict) and image.data.get("mode") == "final"
    return [
        ("ingest: input rows / images stored", get("ingest", lambda d: f"{d['input_rows']} / {d['dataset_rows']}")),
        ("text model: out-of-fold macro-F1", get("text", lambda d: _headline_f1(d["macro_f1"]))),
        ("image model (--final): validation macro-F1" if final else "image model: out-of-fold macro-F1",
         get("image", lambda d: d["validation_macro_f1"] if final else d["macro_f1"])),
        ("label cleaning", get("clean", lambda d: "review page" if "review" in d else "summary only")),
        ("evaluation: macro-F1", get("evaluate", lambda d: d["macro_f1"])),
        ("predictions: rows", get("predictions", lambda d: ", ".join(str(p["rows"]) for p in d))),
        ("submission: rows", get("submission", lambda d: d["rows"])),
        ("total time (s)", float(sum(timings.values())) if timings else "—", "s"),
    ]


def _headline_f1(macro: Any) -> Any:
    return macro.get("final") if isinstance(macro, Mapping) else macro


def _timings_html(timings: Mapping[str, float]) -> str:
    if not timings:
        return '<p class="missing">no stage timings recorded</p>'
    total = sum(timings.values()) or 1.0
    rows = [{"stage": stage, "seconds": float(seconds), "minutes": float(seconds) / 60, "share": float(seconds) / total} for stage, seconds in timings.items()]
    rows.append({"stage": "total", "seconds": float(sum(timings.values())), "minutes": float(sum(timings.values())) / 60, "share": 1.0})
    return _table(rows, [("stage", "stage"), ("seconds", "seconds", "s"), ("minutes", "minutes", "s"), ("share", "share", "%")])


def _ingest_html(piece: Piece) -> str:
    d = piece.data
    pairs = [
        ("input rows", d.get("input_rows")),
        ("manifest rows", d.get("manifest_rows")),
        ("images stored (dataset rows)", d.get("dataset_rows")),
        ("counts reconciled", d.get("reconciled")),
        ("orphan images", len(d.get("orphan_images") or [])),
        ("refused archive members", len(d.get("unsafe_archive_members") or {})),
        ("seconds", d.get("seconds"), "s"),
    ]
    files = [{"file": k, "rows": v} for k, v in (d.get("input_rows_per_file") or {}).items()]
    statuses = [{"status": k, "rows": v} for k, v in sorted((d.get("status_counts") or {}).items())]
    return _kv_table(pairs) + "<h3>Rows per file</h3>" + _table(files, [("file", "file"), ("rows", "rows")]) + "<h3>Manifest statuses</h3>" + _table(statuses, [("status", "status"), ("rows", "rows")])


TEXT_MODELS = {
    "baseline": "baseline: char+word TF-IDF + LinearSVC",
    "tfidf": "TF-IDF LinearSVC member",
    "bilstm": "FastText+navec BiLSTM member",
    "blend": "blend (weight chosen in-sample)",
    "blend_cross_fitted": "blend, weight cross-fitted",
    "offsets_cross_fitted": "blend + class offsets, cross-fitted",
    "final": "the model (calibrated)",
}


def _text_html(piece: Piece) -> str:
    d = piece.data
    out = [_kv_table([("version", d.get("version")), ("labelled titles", d.get("rows")), ("folds", d.get("folds")), ("training seconds", d.get("seconds"), "s")])]
    macro = d.get("macro_f1")
    if isinstance(macro, Mapping):
        # The known members in a fixed order (the model last), then any key this module does not know.
        keys = [k for k in TEXT_MODELS if k in macro] + [k for k in macro if k not in TEXT_MODELS]
        out.append("<h3>Out-of-fold macro-F1</h3>" + _table([{"model": TEXT_MODELS.get(k, k), "macro_f1": macro[k]} for k in keys], [("model", "model"), ("macro_f1", "macro-F1")]))
    ece, conf = d.get("ece") or {}, d.get("confidence_0_7") or {}
    if ece or conf:
        out.append(
            "<h3>Calibration</h3>"
            + _kv_table(
                [
                    ("ECE before calibration", ece.get("before_calibration")),
                    ("ECE after calibration", ece.get("after_calibration")),
                    (f"rows with confidence ≥ {conf.get('threshold', 0.7)}", _fmt(conf.get("share_above"), "%")),
                    ("accuracy among them", _fmt(conf.get("accuracy_above"), "%")),
                ]
            )
        )
    if d.get("per_class"):
        out.append("<h3>Per class (out-of-fold)</h3>" + _table(d["per_class"], [("class", "class"), ("support", "support"), ("baseline_f1", "baseline F1"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall")]))
    out.append(_images(piece))
    return "\n".join(out)


def _image_html(piece: Piece) -> str:
    d = piece.data
    keys = [
        ("version", "version"),
        ("mode", "mode"),
        ("rows", "labelled images"),
        ("folds", "folds"),
        ("processes", "Horovod processes"),
        ("macro_f1", "out-of-fold macro-F1 (classes present)"),
        ("accuracy", "accuracy"),
        ("per_fold_macro_f1", "macro-F1 per fold"),
        ("validation_macro_f1", "validation macro-F1"),
        ("best_epoch", "best epoch (0-based)"),
        ("epochs_run", "epochs run"),
        ("seconds", "training seconds"),
    ]
    pairs = [(label, [round(v, 3) for v in d[k]] if k == "per_fold_macro_f1" and isinstance(d[k], list) else d[k], "s" if k == "seconds" else "") for k, label in keys if k in d]
    out = [_kv_table(pairs)]
    per_class = [r for r in d.get("per_class") or [] if r.get("support")]
    if per_class:
        out.append("<h3>Per class (classes with images)</h3>" + _table(per_class, [("class", "class"), ("support", "support"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall")]))
    out.append(_images(piece))
    return "\n".join(out)


def _relative_href(work_dir: str, url: str) -> str | None:
    """A link from report/index.html to a file inside the work directory (None when outside)."""
    base = work_dir.rstrip("/") + "/"
    return "../" + quote(url[len(base):]) if url.startswith(base) else None


def _clean_html(piece: Piece, work_dir: str) -> str:
    d = piece.data
    out = []
    if "review" in d:
        href = _relative_href(work_dir, d["review"])
        link = f'<a href="{_e(href)}">{_e(d["review"])}</a>' if href else f"<code>{_e(d['review'])}</code>"
        out.append(f"<p>Review page: {link}</p>")
    else:
        out.append('<p class="missing">no review page (clean/review/index.html)</p>')
    if "summary" in d:
        out.append(f'<p class="source">summary: {_e(d["summary_url"])}</p>' + _clean_summary_html(d["summary"]))
    return "\n".join(out)


def _clean_summary_html(summary: Any) -> str:
    """The clean job's summary.json (rows, actions, suspected, per_class, suspicious_clusters);
    any other shape is shown generically, so a change there never breaks the report."""
    if not (isinstance(summary, Mapping) and isinstance(summary.get("per_class"), list) and isinstance(summary.get("actions"), Mapping)):
        return _generic_html(summary)
    pairs: list[tuple[str, Any]] = [("rows", summary.get("rows"))]
    pairs += [(f"action: {name}", count) for name, count in summary["actions"].items()]
    pairs += [(key.replace("_", " "), summary[key]) for key in ("suspected", "suspected_by_confident_learning", "filter") if key in summary]
    clusters = [c for c in summary.get("suspicious_clusters") or [] if isinstance(c, Mapping)]
    pairs.append(("suspicious clusters", len(clusters)))
    out = [_kv_table(pairs), "<h3>Per class</h3>" + _generic_html(summary["per_class"])]
    if clusters:
        out.append("<h3>Suspicious clusters</h3>" + _generic_html(clusters))
    return "\n".join(out)


def _generic_html(value: Any, depth: int = 0) -> str:
    """A JSON value of a shape this module does not know (the clean job's summary): scalars as a
    key/value table, lists of objects and objects of objects as tables, nested values below."""
    if isinstance(value, Mapping):
        if value and all(isinstance(v, Mapping) for v in value.values()):
            # {"графика": {"keep": 10, "relabel": 2}, ...}: one row per key.
            columns = list(dict.fromkeys(k for v in value.values() for k in v))
            rows = [{"": key, **{c: v.get(c) for c in columns}} for key, v in value.items()]
            return _table(rows, [("", ""), *[(c, c) for c in columns]])
        scalars = [(k, v) for k, v in value.items() if not isinstance(v, (Mapping, list))]
        out = [_kv_table(scalars)] if scalars else []
        for key, sub in value.items():
            if isinstance(sub, (Mapping, list)) and depth < 3:
                out.append(f"<h3>{_e(key)}</h3>" + _generic_html(sub, depth + 1))
        return "\n".join(out)
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            return _table(value, [(c, c) for c in columns])
        return f"<p>{_e(_fmt(value))}</p>"
    return f"<p>{_e(_fmt(value))}</p>"


def _evaluate_html(piece: Piece) -> str:
    d = piece.data
    cov = d.get("coverage") or {}
    pairs = [
        ("truth", d.get("truth")),
        ("predictions", d.get("pred")),
        ("macro-F1", d.get("macro_f1")),
        ("accuracy", d.get("accuracy")),
        ("truth guids scored", d.get("rows")),
        ("macro-F1 over guids with a prediction", d.get("macro_f1_matched")),
        ("truth guids without a prediction (scored as wrong)", (cov.get("missing_from_pred") or {}).get("count")),
        ("predicted guids not in the truth", (cov.get("not_in_truth") or {}).get("count")),
        ("duplicate guids: truth / predictions", f"{(cov.get('duplicate_truth') or {}).get('guids', '—')} / {(cov.get('duplicate_pred') or {}).get('guids', '—')}"),
    ]
    out = [_kv_table(pairs)]
    if d.get("by_source"):
        out.append("<h3>By source</h3>" + _table(d["by_source"], [("source", "source"), ("rows", "rows"), ("share", "share", "%"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1")]))
    if d.get("per_class"):
        out.append("<h3>Per class</h3>" + _table(d["per_class"], [("class", "class"), ("support", "support"), ("predicted", "predicted"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1")]))
    out.append(_images(piece))
    return "\n".join(out)


def _predictions_html(piece: Piece) -> str:
    out = []
    for summary in piece.data:
        out.append(f"<h3>{_e(summary['url'])}: {summary['rows']} rows</h3>")
        out.append(_table(summary["by_source"], [("source", "source"), ("rows", "rows"), ("share", "share", "%"), ("mean_confidence", "mean confidence")]))
        out.append(_table(summary["by_class"], [("typology", "predicted class"), ("rows", "rows")]))
    return "\n".join(out)


def _submission_html(piece: Piece, work_dir: str) -> str:
    d = piece.data
    href = _relative_href(work_dir, d["url"])
    link = f'<a href="{_e(href)}">{_e(d["url"])}</a>' if href else f"<code>{_e(d['url'])}</code>"
    return f"<p>{link}</p>" + _kv_table([("rows", d["rows"]), ("distinct guids", d["distinct_guids"])])


def _outputs_html(outputs: Mapping[str, Any]) -> str:
    rows = [{"stage": s, "name": n, "path": p} for s, n, p in _flat_outputs(outputs)]
    if not rows:
        return '<p class="missing">no outputs reported</p>'
    return _table(rows, [("stage", "stage"), ("name", "output"), ("path", "path")])


# --- writing -------------------------------------------------------------------------------------


def build_run_report(
    work_dir: str,
    timings: Mapping[str, float],
    outputs: Mapping[str, Any],
    s3: S3Options | None = None,
    title: str = "museum-typology run",
    stopped: str | None = None,
) -> str:
    """Write ``WORK_DIR/report/`` (index.html + the PNGs it shows), replacing it whole and
    atomically, and return the URL of ``index.html``. ``stopped``: why the run stopped, when a
    stage failed (the page says so at its top, so an earlier run's report is not taken for it).

    ``timings``: stage name -> seconds, in the order to show. ``outputs``: the pipeline's
    {stage: {name: path}}; the report lists them, reads the prediction files of stage "score"
    (else the files in WORK_DIR/predictions/), the evaluate directory of stage "evaluate"
    (name "output"; else WORK_DIR/evaluate/) and a path ending in submission.csv (else
    WORK_DIR/submission.csv). Missing pieces show as "not run"."""
    pieces = collect(work_dir, outputs, s3)
    if stopped:
        mark_unfinished_stages(pieces, outputs)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = render_html(title, pieces, timings, outputs, work_dir, generated, stopped)
    report_dir = storage.join(work_dir, REPORT_DIR)
    with storage.atomic_directory(report_dir, s3) as staging:
        for piece in pieces.values():
            for name, data in piece.images.items():
                storage.write_bytes(storage.join(staging, name), data, s3)
        storage.write_bytes(storage.join(staging, "index.html"), page.encode("utf-8"), s3)
    url = storage.join(report_dir, "index.html")
    log.info("run report: %s (%s not run)", url, ", ".join(name for name, p in pieces.items() if p.data is None and p.error is None) or "nothing")
    return url
