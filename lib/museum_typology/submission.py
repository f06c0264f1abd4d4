"""The competition submission: ``guid,typology``, one row per guid of the sample submission, in its
order.

``build_submission`` is pure; ``run`` reads a predictions file (the score job's output) and the
guid order (the sample submission, or test.csv when there is none), and writes the CSV atomically.
A guid of the order without a prediction is an error: a submission is never filled in silently.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from . import storage
from .catalogue import CsvError
from .config import Settings
from .evaluate import EXAMPLES, read_table, repeat_marked
from .log import get_logger
from .schema import CLASS_INDEX
from .storage import S3Options

log = get_logger(__name__)
COLUMNS = ("guid", "typology")


class SubmissionError(CsvError):
    """Predictions that cannot make a complete submission; the message says how many guids and
    shows a few. A ``CsvError``, so the CLI reports it as one line (exit code 2)."""


def build_submission(predictions: pd.DataFrame, guid_order: Sequence[str], predictions_name: str = "predictions", order_name: str = "sample submission") -> pd.DataFrame:
    """``predictions`` (guid, typology, anything else ignored) -> a ``guid,typology`` DataFrame with
    exactly the guids of ``guid_order``, once each, in that order. Rows the score job's
    ``note`` marks as repeats of a guid are left out (``evaluate.repeat_marked``). Errors (``SubmissionError``): an empty or repeated guid in the
    order; a prediction whose class is not in ``CLASSES``, for a guid of the order or not (the
    score job writes none, so the file is not what it seems); a guid predicted twice with
    different classes (in a file without the score job's notes); guids of the order without a
    prediction. Other predictions for guids outside the order are left out (the caller counts
    them). Pure."""
    missing_columns = [c for c in COLUMNS if c not in predictions.columns]
    if missing_columns:
        raise SubmissionError(f"{predictions_name}: missing column(s) {', '.join(missing_columns)} (found: {', '.join(map(str, predictions.columns))})")
    order = [str(g).strip() for g in guid_order]
    if any(not g for g in order):
        raise SubmissionError(f"{order_name}: {sum(1 for g in order if not g)} row(s) without a guid")
    repeated = pd.Series(order)[pd.Series(order).duplicated()].unique().tolist()
    if repeated:
        raise SubmissionError(f"{order_name}: {len(repeated)} guid(s) listed more than once, e.g. {_examples(repeated)}")

    pred = predictions[list(COLUMNS)].fillna("").astype(str).apply(lambda column: column.str.strip())
    if "note" in predictions.columns:
        # A guid repeated in the scored file: the score job scored every row and marked the ones
        # that do not count; they are left out, as evaluate leaves them. Rows it did not mark
        # (two score outputs put together) must still agree.
        pred = pred[~repeat_marked(predictions["note"])]
    pred = pred[pred["guid"] != ""]  # the score job keeps rows it could not read, with no guid
    unknown = pred[~pred["typology"].isin(CLASS_INDEX)]
    if len(unknown):
        raise SubmissionError(
            f"{predictions_name}: {len(unknown)} prediction(s) with a class outside the 15, e.g. "
            + ", ".join(f"{g}: {t!r}" for g, t in zip(unknown["guid"][:EXAMPLES], unknown["typology"][:EXAMPLES]))
        )
    classes_per_guid = pred.groupby("guid", sort=False)["typology"].nunique()
    conflicting = classes_per_guid[classes_per_guid > 1].index.tolist()
    if conflicting:
        raise SubmissionError(f"{predictions_name}: {len(conflicting)} guid(s) predicted twice with different classes, e.g. {_examples(conflicting)}")

    by_guid = dict(zip(pred["guid"], pred["typology"]))
    missing = [g for g in order if g not in by_guid]
    if missing:
        raise SubmissionError(f"{predictions_name}: {len(missing)} of the {len(order)} guids of the {order_name} have no prediction, e.g. {_examples(missing)}")
    return pd.DataFrame({"guid": order, "typology": [by_guid[g] for g in order]})


def _examples(guids: Sequence[str]) -> str:
    return ", ".join(guids[:EXAMPLES]) + (" …" if len(guids) > EXAMPLES else "")


def to_csv(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(frame[list(COLUMNS)].itertuples(index=False, name=None))
    return buffer.getvalue().encode("utf-8")


def write_submission(frame: pd.DataFrame, output_url: str, s3: S3Options | None = None) -> None:
    """Write ``guid,typology`` as UTF-8 CSV in one atomic write (local or S3)."""
    storage.write_bytes(output_url, to_csv(frame), s3)


def default_order_url(settings: Settings, s3: S3Options | None = None) -> str:
    """Where the guid order comes from: ``submission.sample_csv`` in the data directory, or
    ``ingest.test_csv`` when the data has no sample submission."""
    data = settings.get("paths.data")
    sample = storage.under(data, settings.get("submission.sample_csv"))
    return sample if storage.exists(sample, s3) else storage.under(data, settings.get("ingest.test_csv"))


def run(settings: Settings, predictions_url: str, output_url: str, order_url: str | None = None) -> dict[str, Any]:
    """``predictions_url`` (CSV/Parquet with guid, typology; the score job's output) -> the
    submission at ``output_url`` in the guid order of ``order_url`` (a CSV/Parquet with a guid
    column; default: ``default_order_url``). Returns {"output", "rows", "order_from",
    "predictions_not_in_order"}. Raises ``SubmissionError`` when a guid has no prediction."""
    s3 = S3Options.from_settings(settings.section("s3"))
    order_url = order_url or default_order_url(settings, s3)
    if not output_url.lower().endswith(".csv"):
        raise SubmissionError(f"{output_url}: a submission is a CSV file; name it .csv")
    for name, url in (("predictions", predictions_url), ("guid order", order_url)):
        if storage.same_location(url, output_url):
            raise SubmissionError(f"{output_url}: the submission would overwrite its {name} file; write it elsewhere")
    predictions = read_table(predictions_url, COLUMNS, "predictions", s3)
    order = read_table(order_url, ("guid",), "guid order", s3)["guid"].tolist()
    frame = build_submission(predictions, order, f"predictions {predictions_url}", f"guid order {order_url}")
    extra = len(set(predictions["guid"]) - set(order) - {""})
    if extra:
        log.warning("submission: %d predicted guids are not in %s and are left out", extra, order_url)
    write_submission(frame, output_url, s3)
    log.info("submission: %d rows in the order of %s -> %s", len(frame), order_url, output_url)
    return {"output": output_url, "rows": len(frame), "order_from": order_url, "predictions_not_in_order": extra}
