"""evaluate job: predictions against known labels.

``evaluate(truth, pred)`` is pure: two tables in (``guid,typology`` and
``guid,typology[,source,...]``), a JSON-ready dict out: macro-F1 (the task's metric), accuracy, a
per-class table, the confusion counts, a breakdown by prediction ``source`` (text / image / blend /
default) and the coverage of the join. ``run`` reads the two files (CSV or Parquet, local or S3)
and writes ``metrics.json``, ``per_class.csv``, ``confusion.png`` and ``report.md`` into one output
directory, atomically.

Joining on guid never drops a row silently: a truth guid without a prediction is scored as wrong
(it lowers its class's recall) and counted under ``coverage.missing_from_pred``; predictions for
guids the truth does not know, rows without a guid and duplicate guids are counted and listed in
``coverage`` (duplicates: the first row of a guid is the one scored; in the score job's output,
the row its note does not mark as a duplicate, so a guid's row read without error wins over a
malformed one before it).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd

from . import report, storage
from .catalogue import DUPLICATE_NOTE, CsvError, decode_csv_bytes, parquet_data_files, read_strict_csv, repeated_columns, with_text_columns
from .config import Settings
from .log import get_logger
from .schema import CLASS_INDEX, CLASSES
from .storage import S3Options

log = get_logger(__name__)

TRUTH_COLUMNS = ("guid", "typology")
PRED_COLUMNS = ("guid", "typology")  # "source" is optional: a bare submission file can be evaluated too
EXAMPLES = 5  # how many example guids an error or a coverage entry lists
NO_PREDICTION = "(no prediction)"  # the by-source row of truth guids that the predictions miss
NO_SOURCE = "(no source column)"
OUTPUT_FILES = ("metrics.json", "per_class.csv", "confusion.png", "report.md")


class EvaluateError(CsvError):
    """A truth or prediction table that cannot be evaluated; the message says which file, where
    and why. A ``CsvError`` so that the CLI reports it as bad input (one line, exit code 2)."""


# --- reading (I/O at the edge) -------------------------------------------------------------------


def _rescore_partitions(url: str, s3: S3Options | None) -> list[tuple[str, str]]:
    from .rescore import partition_dirs  # late: rescore pulls in the score job

    return partition_dirs(url, s3)


def read_table(url: str, required: Sequence[str], what: str, s3: S3Options | None = None) -> pd.DataFrame:
    """A CSV (by extension ``.csv``) or Parquet (``.parquet``/``.pq``, or a directory of Parquet
    parts) file as a DataFrame of strings; the required columns must be there. ``what`` names the
    file's role in error messages ("truth", "predictions", ...)."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not storage.exists(url, s3):
        raise EvaluateError(f"{what} {url}: no such file")
    lower = name.lower()
    if lower.endswith(".csv"):
        text = decode_csv_bytes(storage.read_bytes(url, s3), f"{what} {url}")
        try:
            # Strings only: guids that look like numbers must not become floats, "NA" is not missing.
            header, records, lines = read_strict_csv(text, f"{what} {url}")
        except CsvError as exc:
            raise EvaluateError(str(exc)) from None
        frame = pd.DataFrame(records, columns=header, dtype=object) if records else pd.DataFrame({c: pd.Series(dtype=object) for c in header})
        # Where each row starts in the file: a quoted newline makes it differ from the row number.
        frame.attrs["lines"] = np.asarray(lines)  # pandas copies attrs into every derived frame: not a list
    elif storage.is_dir(url, s3) and _rescore_partitions(url, s3):
        from .rescore import committed_partitions, current_predictions

        committed = committed_partitions(url, s3)
        if not committed:  # else every guid would count as unpredicted, silently
            raise EvaluateError(f"{what} {url}: rescore's date=* partitions, none of them committed (no _SUCCESS: interrupted nights); run rescore again")

        # rescore's predictions/ holds one partition per night, each with only that night's
        # rows: the current prediction of a guid is its newest committed row, not all of them.
        frame = current_predictions(url, s3, partitions=committed).drop(columns="date").astype(object)
        frame = frame.where(frame.notna(), "").astype(str)
        log.info("%s %s: rescore's date partitions, read as each guid's current prediction (%d guids)", what, url, len(frame))
    elif lower.endswith((".parquet", ".pq")) or storage.is_dir(url, s3):
        frame = _parquet_frame(url, required, what, s3)
    else:
        raise EvaluateError(f"{what} {url}: unknown file type (expected .csv or .parquet)")
    frame.columns = _folded(frame.columns)
    frame = _unrepeated(frame, f"{what} {url}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EvaluateError(f"{what} {url}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns) or 'nothing'})")
    for column in frame.columns:
        # A pandas category column (Parquet dictionary-encoded by pandas) is text too; fillna("")
        # on it raised "Cannot setitem on a Categorical with a new category".
        if frame[column].dtype == object or isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object).fillna("").astype(str).str.strip()
    return frame


def _parquet_frame(url: str, required: Sequence[str], what: str, s3: S3Options | None) -> pd.DataFrame:
    """A Parquet file, or a directory's data files one by one (``parquet_data_files``: read as
    one dataset, a file's "GUID" column came in as empty guids beside another file's "guid"),
    as one DataFrame whose column names are folded as a CSV header is. Each file of a
    directory must hold the required columns itself, else its rows would join as empty."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url, s3)
    directory = storage.is_dir(url, s3)
    try:
        files = parquet_data_files(fs, path, f"{what} {url}") if directory else [path]
    except CsvError as exc:
        raise EvaluateError(str(exc)) from None
    frames = []
    for file in files:
        relative = file[len(path):].lstrip("/")
        where = f"{what} {url}: its file {relative}" if directory else f"{what} {url}"
        try:
            with fs.open_input_file(file) as handle:
                table = pq.ParquetFile(handle).read(use_threads=False)
            # the guids as text, cast in Arrow: pandas would read "1.0" where score wrote "1"
            frame = with_text_columns(table, ["guid"]).to_pandas()
        except (OSError, ValueError, NotImplementedError) as exc:  # pyarrow: a decimal guid cannot be cast to text
            raise EvaluateError(f"{where}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
        frame.columns = _folded(frame.columns)
        for column, value in hive_partition_values(relative).items():
            if column not in frame.columns:  # a partition column lives in the folder's name only
                frame[column] = value
        missing = [c for c in required if c not in frame.columns]
        if directory and missing:
            raise EvaluateError(f"{where}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns) or 'nothing'}); every Parquet file of the directory is read")
        frames.append(_unrepeated(frame, where))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def hive_partition_values(relative_path: str) -> dict[str, str]:
    """The partition columns a Hive-style path gives its file, as text, folded as column names
    are ("typology=a/part-0.parquet" -> {"typology": "a"}): Spark and pyarrow keep them out of
    the files. Read from the path as written (pyarrow would take "guid=001" for the number 1).
    Pure."""
    values = {}
    for segment in relative_path.split("/")[:-1]:
        key, equals, value = segment.partition("=")
        if equals and key:
            value = unquote(value)
            values[_folded([unquote(key)])[0]] = "" if value == HIVE_NULL else value
    return values


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Hive, Spark and pyarrow name a partition of nulls


def _folded(columns) -> list[str]:
    """Column names compared without case, surrounding spaces or a byte-order mark, as a CSV
    header is read."""
    return [str(c).strip().lstrip("\ufeff").lower() for c in columns]


def _unrepeated(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame``, unless it names a column twice: "guid" and "GUID" (or "source" and "SOURCE")
    in one Parquet file, which holds the data is anybody's guess. A CSV's header was checked as
    it was read."""
    repeated = [c for c in repeated_columns(list(frame.columns)) if c]
    if repeated:
        raise EvaluateError(f"{where}: column(s) {', '.join(repeated)} appear more than once (compared without case or surrounding spaces)")
    return frame


# --- the pure part -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """Truth rows (first row per guid) joined with their prediction: class indices in ``CLASSES``
    order, ``-1`` where the prediction is missing; ``source`` per row (``NO_PREDICTION`` there)."""

    guids: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    source: list[str]
    coverage: dict[str, Any]


def records_first(pred: pd.DataFrame) -> pd.DataFrame:
    """The score job's output with each guid's row of record before the rows its note marks as
    repeats of that guid (``DUPLICATE_NOTE``: the score job scores every row and says which one
    counts, the first read without error); otherwise in order. A table without a note column
    (predictions made elsewhere) is returned as it is. Pure."""
    if "note" not in pred.columns:
        return pred
    return pred.iloc[np.argsort(repeat_marked(pred["note"]).to_numpy(), kind="stable")]


def repeat_marked(notes: pd.Series) -> pd.Series:
    """True where the score job's note marks a row as a repeat of a guid whose row of record is
    another (``DUPLICATE_NOTE``)."""
    return notes.fillna("").astype(str).str.contains(DUPLICATE_NOTE, regex=False)


def align(truth: pd.DataFrame, pred: pd.DataFrame, truth_name: str = "truth", pred_name: str = "predictions") -> Alignment:
    """Check both tables (columns, class names) and join them on guid. Pure."""
    truth = _checked(truth, TRUTH_COLUMNS, truth_name)
    pred = _checked(pred, PRED_COLUMNS, pred_name)
    if truth.empty:
        raise EvaluateError(f"{truth_name}: no rows with a guid to evaluate")
    has_source = "source" in pred.columns
    truth_first = truth.drop_duplicates("guid", keep="first")
    pred_first = records_first(pred).drop_duplicates("guid", keep="first")
    truth_guids = set(truth_first["guid"])
    pred_by_guid = dict(zip(pred_first["guid"], pred_first["typology"]))
    source_by_guid = dict(zip(pred_first["guid"], pred_first["source"])) if has_source else {}

    guids = truth_first["guid"].tolist()
    y_true = np.array([CLASS_INDEX[t] for t in truth_first["typology"]], dtype=np.int64)
    y_pred = np.array([CLASS_INDEX[pred_by_guid[g]] if g in pred_by_guid else -1 for g in guids], dtype=np.int64)
    source = [NO_PREDICTION if g not in pred_by_guid else (source_by_guid[g] or "(empty)") if has_source else NO_SOURCE for g in guids]
    missing = [g for g in guids if g not in pred_by_guid]
    extra = [g for g in pred_first["guid"] if g not in truth_guids]
    coverage = {
        "truth_rows": int(truth.attrs.get("rows", len(truth))),
        "pred_rows": int(pred.attrs.get("rows", len(pred))),
        "scored_rows": len(guids),
        "matched": len(guids) - len(missing),
        "missing_from_pred": _listing(missing),
        "not_in_truth": _listing(extra),
        "duplicate_truth": _duplicates(truth),
        "duplicate_pred": _duplicates(pred),
        "truth_rows_without_guid": int(truth.attrs.get("without_guid", 0)),
        "pred_rows_without_guid": int(pred.attrs.get("without_guid", 0)),
        "has_source": has_source,
    }
    return Alignment(guids, y_true, y_pred, source, coverage)


def summarise(alignment: Alignment) -> dict[str, Any]:
    """Metrics of an alignment. Macro-F1 averages the classes that occur in the truth or the
    predictions (a class nobody has and nobody predicts has no F1; with all 15 present it is the
    mean over the 15); a missing prediction counts as wrong."""
    y_true, y_pred = alignment.y_true, alignment.y_pred
    labels = _scored_labels(y_true, y_pred)
    matched = y_pred >= 0
    per_class = report.per_class_table(y_true, y_pred)
    predicted = np.bincount(y_pred[matched], minlength=len(CLASSES))
    for index, (row, count) in enumerate(zip(per_class, predicted)):
        row["predicted"] = int(count)
        if index not in labels:  # nobody has it, nobody predicts it: no F1 (not 0, which the mean would count)
            row.update(precision=None, recall=None, f1=None)
    by_source = []
    for name in sorted(set(alignment.source), key=lambda s: (s == NO_PREDICTION, s)):
        mask = np.array([s == name for s in alignment.source])
        by_source.append(
            {
                "source": name,
                "rows": int(mask.sum()),
                "share": float(mask.mean()),
                "accuracy": float((y_true[mask] == y_pred[mask]).mean()),
                "macro_f1": report.macro_f1(y_true[mask], y_pred[mask], _scored_labels(y_true[mask], y_pred[mask])),
            }
        )
    from sklearn.metrics import confusion_matrix

    return {
        "rows": int(len(y_true)),
        "macro_f1": report.macro_f1(y_true, y_pred, labels),
        "accuracy": float((y_true == y_pred).mean()),
        # The same metric over the truth rows that have a prediction: how good the predictions
        # that exist are, apart from how many are missing.
        "macro_f1_matched": report.macro_f1(y_true[matched], y_pred[matched], _scored_labels(y_true[matched], y_pred[matched])) if matched.any() else 0.0,
        "classes_scored": [CLASSES[i] for i in labels],
        "per_class": per_class,
        "by_source": by_source,
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(len(CLASSES)))).tolist(),
        # per given class, its truth rows without a prediction (not in "confusion": no column)
        "no_prediction": report.no_prediction_counts(y_true, y_pred).tolist(),
        "coverage": alignment.coverage,
    }


def evaluate(truth: pd.DataFrame, pred: pd.DataFrame, truth_name: str = "truth", pred_name: str = "predictions") -> dict[str, Any]:
    """``truth`` (guid, typology) against ``pred`` (guid, typology[, source, ...]) -> metrics dict:
    ``macro_f1``, ``accuracy``, ``macro_f1_matched``, ``classes_scored``, ``per_class`` (class,
    precision, recall, f1, support, predicted), ``by_source`` (source, rows, share, accuracy,
    macro_f1), ``confusion`` (15x15 counts, rows = truth, in ``CLASSES`` order), ``no_prediction``
    (per class, truth rows without a prediction), ``coverage``.
    Raises ``EvaluateError`` for a missing column or a class name outside ``CLASSES``. Pure."""
    return summarise(align(truth, pred, truth_name, pred_name))


def _line_of(frame: pd.DataFrame, row: int) -> str:
    """" (line N)" for data row ``row`` of a frame read from CSV (``read_table``), else ""."""
    lines = frame.attrs.get("lines")
    return f" (line {lines[row - 1]})" if lines is not None and 0 < row <= len(lines) else ""


def _checked(frame: pd.DataFrame, required: Sequence[str], name: str) -> pd.DataFrame:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise EvaluateError(f"{name}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns)) or 'nothing'})")
    columns = [c for c in (*required, "source", "note") if c in frame.columns]
    out = frame[columns].copy()
    for column in columns:
        out[column] = out[column].fillna("").astype(str).str.strip()
    # 1-based data row numbers (the header is row 0), as in the ingest manifest.
    out.insert(0, "row", np.arange(1, len(out) + 1))
    unknown = out[~out["typology"].isin(CLASS_INDEX)]
    if len(unknown):
        first = unknown.iloc[0]
        names = sorted(set(unknown["typology"]))
        shown = ", ".join(repr(n) for n in names[:EXAMPLES]) + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")
        raise EvaluateError(
            f"{name}: unknown typology {shown} in {len(unknown)} row(s) (first: row {first['row']}{_line_of(frame, first['row'])}, guid {first['guid'] or '(empty)'}); "
            f"expected one of the {len(CLASSES)} classes of museum_typology.schema.CLASSES"
        )
    with_guid = out[out["guid"] != ""].copy()
    # Counts of the whole table travel with the frame, so coverage can report the rows that
    # cannot be joined (no guid) next to the ones that can.
    with_guid.attrs = {"rows": len(out), "without_guid": len(out) - len(with_guid)}
    return with_guid


def _listing(guids: Sequence[str]) -> dict[str, Any]:
    return {"count": len(guids), "examples": list(guids[:EXAMPLES])}


def _duplicates(frame: pd.DataFrame) -> dict[str, Any]:
    """Guids that occur more than once: how many guids and extra rows, and how many of those
    guids disagree about the class (only the first row of each is scored)."""
    repeated = frame[frame["guid"].duplicated(keep=False)]
    if repeated.empty:
        return {"guids": 0, "extra_rows": 0, "conflicting": 0, "examples": []}
    groups = repeated.groupby("guid", sort=False)["typology"].nunique()
    return {
        "guids": int(len(groups)),
        "extra_rows": int(len(repeated) - len(groups)),
        "conflicting": int((groups > 1).sum()),
        "examples": groups.index[:EXAMPLES].tolist(),
    }


def _scored_labels(y_true: np.ndarray, y_pred: np.ndarray) -> list[int]:
    return sorted((set(y_true.tolist()) | set(y_pred.tolist())) - {-1})


# --- writing -------------------------------------------------------------------------------------


def per_class_csv(metrics: dict[str, Any]) -> bytes:
    buffer = io.StringIO()
    columns = ["class", "precision", "recall", "f1", "support", "predicted"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in metrics["per_class"]:
        writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


def markdown_report(metrics: dict[str, Any]) -> str:
    cov = metrics["coverage"]
    lines = [
        "# Evaluation",
        "",
        f"Truth: `{metrics.get('truth', '')}`  ",
        f"Predictions: `{metrics.get('pred', '')}`",
        "",
        f"**macro-F1 {metrics['macro_f1']:.3f}**, accuracy {metrics['accuracy']:.3f} on {metrics['rows']} truth guids "
        f"({len(metrics['classes_scored'])} classes scored; a missing prediction counts as wrong). "
        f"Over the {cov['matched']} guids that have a prediction: macro-F1 {metrics['macro_f1_matched']:.3f}.",
        "",
        "## Coverage",
        "",
        f"- truth rows: {cov['truth_rows']} ({cov['truth_rows_without_guid']} without a guid), prediction rows: {cov['pred_rows']} ({cov['pred_rows_without_guid']} without a guid)",
        f"- truth guids without a prediction: {_describe_listing(cov['missing_from_pred'])}",
        f"- predicted guids not in the truth (not scored): {_describe_listing(cov['not_in_truth'])}",
        f"- duplicate guids in the truth: {_describe_duplicates(cov['duplicate_truth'])}",
        f"- duplicate guids in the predictions: {_describe_duplicates(cov['duplicate_pred'])}",
        "",
        "## By source",
        "",
        report.markdown_table(metrics["by_source"], ["source", "rows", "share", "accuracy", "macro_f1"]),
        "",
        "## Per class",
        "",
        report.markdown_table(metrics["per_class"], ["class", "support", "predicted", "precision", "recall", "f1"]),
        "",
        "![confusion](confusion.png)",
    ]
    return "\n".join(lines) + "\n"


def _describe_listing(listing: dict[str, Any]) -> str:
    return str(listing["count"]) + (f" (e.g. {', '.join(listing['examples'])})" if listing["count"] else "")


def _describe_duplicates(dup: dict[str, Any]) -> str:
    if not dup["guids"]:
        return "none"
    return f"{dup['guids']} guids, {dup['extra_rows']} extra rows, {dup['conflicting']} with conflicting classes; the first row is scored (e.g. {', '.join(dup['examples'])})"


def run(settings: Settings, truth_url: str, pred_url: str, output_url: str) -> dict[str, Any]:
    """Evaluate ``pred_url`` against ``truth_url`` and write metrics.json, per_class.csv,
    confusion.png and report.md into ``output_url`` (replaced whole, atomically).
    Returns {"output", "files": {name: url}, "metrics"}."""
    s3 = S3Options.from_settings(settings.section("s3"))
    for name, url in (("--truth", truth_url), ("--pred", pred_url)):
        if storage.same_location(url, output_url) or storage.is_inside(url, output_url):
            raise EvaluateError(f"{url}: {name} is inside the --output directory, which evaluate replaces whole; give another --output")
    storage.check_replaceable(output_url, ("metrics.json",), "evaluate", s3, only=OUTPUT_FILES)
    truth = read_table(truth_url, TRUTH_COLUMNS, "truth", s3)
    pred = read_table(pred_url, PRED_COLUMNS, "predictions", s3)
    alignment = align(truth, pred, f"truth {truth_url}", f"predictions {pred_url}")
    metrics = {"truth": truth_url, "pred": pred_url, **summarise(alignment)}
    png = report.confusion_png(alignment.y_true, alignment.y_pred, f"evaluation: macro-F1 {metrics['macro_f1']:.3f} on {metrics['rows']} guids")
    contents = {
        "metrics.json": json.dumps(metrics, ensure_ascii=False, indent=2).encode("utf-8"),
        "per_class.csv": per_class_csv(metrics),
        "confusion.png": png,
        "report.md": markdown_report(metrics).encode("utf-8"),
    }
    with storage.atomic_directory(output_url, s3, job="evaluate") as staging:
        for name, data in contents.items():
            storage.write_bytes(storage.join(staging, name), data, s3)
    cov = metrics["coverage"]
    if cov["missing_from_pred"]["count"] or cov["not_in_truth"]["count"] or cov["duplicate_truth"]["guids"] or cov["duplicate_pred"]["guids"]:
        log.warning(
            "evaluate: %d truth guids have no prediction (scored as wrong), %d predicted guids are not in the truth, duplicate guids: truth %d, predictions %d",
            cov["missing_from_pred"]["count"],
            cov["not_in_truth"]["count"],
            cov["duplicate_truth"]["guids"],
            cov["duplicate_pred"]["guids"],
        )
    log.info("evaluate: macro-F1 %.3f, accuracy %.3f on %d guids -> %s", metrics["macro_f1"], metrics["accuracy"], metrics["rows"], output_url)
    return {"output": output_url, "files": {name: storage.join(output_url, name) for name in OUTPUT_FILES}, "metrics": metrics}
