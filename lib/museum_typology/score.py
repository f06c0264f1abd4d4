"""score job: classify rows of a CSV with the newest text bundle.

Output: ``guid,typology,confidence,source,model_version,note``, one row per input row in input
order. ``source`` is ``text`` when the description decided, ``default`` when there was nothing to
score (``note`` says why). The scoring issue grows this into the full text/image cascade.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import storage
from .catalogue import InputRow, decode_csv_bytes, parse_catalogue_csv
from .config import Settings
from .log import get_logger
from .schema import CLASSES
from .storage import S3Options
from .text import normalize

log = get_logger(__name__)
OUTPUT_COLUMNS = ("guid", "typology", "confidence", "source", "model_version", "note")
SOURCE_TEXT, SOURCE_DEFAULT = "text", "default"


def read_rows(url: str, s3: S3Options | None = None) -> list[InputRow]:
    """Rows to score: ``guid`` and ``description`` are required, anything else is ignored."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not storage.exists(url, s3):
        raise storage.StorageError(f"{url}: no such file")
    text = decode_csv_bytes(storage.read_bytes(url, s3), name)
    return parse_catalogue_csv(text, name, split="score", required=("guid", "description"), labelled=False)


def decide(rows: Sequence[InputRow], texts: Sequence[str], proba: np.ndarray, default_class: str, version: str) -> list[dict[str, Any]]:
    """Rows, their normalised texts and text probabilities (ignored where the text is empty) ->
    output records. Pure."""
    records = []
    for row, text, p in zip(rows, texts, proba):
        if not text:
            note = "no description" if not row.description else "description has no words"
            records.append(_record(row, default_class, 0.0, SOURCE_DEFAULT, version, note))
        else:
            best = int(np.argmax(p))
            records.append(_record(row, CLASSES[best], float(p[best]), SOURCE_TEXT, version, row.rejected_reason))
    return records


def _record(row: InputRow, typology: str, confidence: float, source: str, version: str, note: str | None) -> dict[str, Any]:
    return {"guid": row.guid or "", "typology": typology, "confidence": round(confidence, 6), "source": source, "model_version": version, "note": note or ""}


def to_csv(records: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=OUTPUT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode("utf-8")


def run(settings: Settings, input_url: str, output_url: str, model_dir: str) -> dict[str, Any]:
    from .text_model import TextModel
    from .train_text import resolve_bundle

    s3 = S3Options.from_settings(settings.section("s3"))
    rows = read_rows(input_url, s3)
    bundle = resolve_bundle(model_dir, s3)
    model = TextModel.load(bundle)
    texts = [normalize(r.description) for r in rows]
    # Only rows with words reach the model; the others get the default class in decide().
    with_text = [i for i, text in enumerate(texts) if text]
    proba = np.zeros((len(texts), len(CLASSES)))
    if with_text:
        proba[with_text] = model.predict_proba([texts[i] for i in with_text], batch_size=int(settings.get("score.batch_size")))
    records = decide(rows, texts, proba, settings.get("score.default_class"), model.version)
    storage.write_bytes(output_url, to_csv(records), s3)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["source"]] = counts.get(record["source"], 0) + 1
    log.info("score: %d rows -> %s (%s) with text bundle %s", len(records), output_url, counts, model.version)
    return {"rows": len(records), "sources": counts, "output": output_url, "model_version": model.version}
