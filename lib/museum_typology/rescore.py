"""rescore job: the nightly incremental scoring of a catalogue into dated prediction partitions.

``PREDICTIONS/date=YYYY-MM-DD/`` holds the rows scored that night only (a delta): the columns of
score's Parquet output (``guid, typology, confidence, source, model_version, note,
text_confidence, image_confidence, description_hash, image_sha256``) plus ``reason``, why the row
was scored again. The current prediction of a guid is its row in the newest committed partition
that has it (``current_predictions``).

A catalogue row (``guid,description``; CSV or Parquet, one file or a directory of them) is scored
when, against that current state:

- ``new``: no committed partition before the run's date has its guid;
- ``model``: the state's ``model_version`` is not the current ``ScorerSpec.model_version`` (any
  difference, a rollback included);
- ``description``: the hash of its normalised description differs (``score.description_hash``, so
  case, spacing and ё/е do not count);
- ``image``: its image's sha256 differs (an image that appeared or disappeared included).

``model`` comes before ``description``: a new text bundle may normalise by other rules, and then
the stored hashes differ from the new ones although the catalogue did not change.

The first that applies is the row's ``reason``, in that order; the image is compared only for rows
that nothing else sends to scoring. Image hashes: a petastorm dataset (``--image-dataset``) carries
each original file's sha256 in its ``sha256`` column, read without the images; files
(``--images DIR``) are read and hashed on the executors, every night, for the rows the other
checks leave (size and mtime are not trusted: a copy can keep both and change the bytes).

Catalogue rows that cannot be keyed by guid are not scored: an empty guid, a guid holding a
control character (CSV tools cut such a field, so no later join would find it), and a guid already
seen (a guid's first row read without error counts, in file order). Each is listed with why in
the partition's ``_not_scored.parquet`` and counted in its summary. Every catalogue row is
rescored, unchanged or not scored; the summary reconciles the three with the row count.

Re-running a night: the state is read from partitions dated before the run's date only, so the
same night computes the same delta. When the night's partition is already committed with exactly
the planned rows (guids, reasons, input hashes, model version), the same counts and the same rows
not scored, nothing is scored or written; otherwise (or with ``force``) the delta is scored again and replaces the
partition whole (``storage.atomic_directory``). A date older than the newest committed partition
is refused: the state only moves forward.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .catalogue import InputRow, has_control_character, rows_of_record, where_recorded
from .config import Settings
from .errors import InternalError
from .image_source import known_guids
from .log import get_logger
from .score import (
    DETAIL_COLUMNS,
    OUTPUT_COLUMNS,
    OUTPUT_SCHEMA,
    Scorer,
    ScoreError,
    ScorerFactory,
    ScorerSpec,
    description_hash,
    find_dataset_images,
    ImageFiles,
    find_image_files,
    plan_tasks,
    read_dataset_images,
    read_rows,
    score_tasks,
)
from .storage import S3Options
from .text import NORMALIZATION_VERSION, normalize

log = get_logger(__name__)

REASONS = ("new", "model", "description", "image")  # in the order they are tested
NOT_SCORED = ("empty guid", "unusable guid", "duplicate guid")
PARTITION_COLUMNS = (*OUTPUT_COLUMNS, *DETAIL_COLUMNS, "reason")
PARTITION_SCHEMA = pa.schema([*OUTPUT_SCHEMA, pa.field("reason", pa.string())])
STATE_COLUMNS = ("guid", "model_version", "description_hash", "image_sha256")
PART_FILE, SUMMARY_FILE = "part-00000.parquet", "_summary.json"
# Every catalogue row the night did not score, one row each with why (the summary holds only
# counts and the first EXAMPLES); "_" so that Spark and the partition readers pass it by.
NOT_SCORED_FILE = "_not_scored.parquet"
NOT_SCORED_SCHEMA = pa.schema([("source_file", pa.string()), ("source_row", pa.int64()), ("guid", pa.string()), ("kind", pa.string()), ("message", pa.string())])
PARTITION_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
# A partition a local commit set aside (storage._commit's ".NAME.old-*"; once "NAME.old-*").
SET_ASIDE_RE = re.compile(r"\.?(date=\d{4}-\d{2}-\d{2})\.old-[0-9a-f]{8}")
CATALOGUE_SUFFIXES = (".csv", ".parquet", ".pq")
# The summary keys that describe the plan (what a re-run compares before skipping).
PLAN_KEYS = (
    "date", "model_version", "rows", "rescored", "reasons", "unchanged", "not_scored", "not_scored_examples",
    "absent_from_catalogue", "absent_examples", "state_partitions",
)
EXAMPLES = 20


class RescoreError(ScoreError):
    """Unusable arguments or predictions directory (a user error: one clear line, exit code 2)."""


# ---------------------------------------------------------------- arguments and inputs


def run_date(date: str | None, today: dt.date | None = None) -> str:
    """``date`` checked as YYYY-MM-DD and not after tomorrow, or today's date (UTC)."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    if date is None:
        return today.isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise ValueError
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise RescoreError(f"--date must be a date as YYYY-MM-DD, got {date!r}") from None
    # rescore only moves forward: one partition dated in the future (a typo) would refuse every
    # night until that date. Tomorrow is allowed for a cluster whose clock runs ahead of UTC.
    if day > today + dt.timedelta(days=1):
        raise RescoreError(f"--date {date} is in the future (today is {today.isoformat()} UTC); a partition of that date would refuse every night before it")
    return date


def check_arguments(catalogue_url: str, predictions_url: str, date: str | None, s3: S3Options | None = None) -> str:
    """Fail early, before Spark starts, on what the user can fix; returns the run's date."""
    date = run_date(date)
    if not storage.exists(catalogue_url, s3):
        raise storage.StorageError(f"{catalogue_url}: no such file or directory (--catalogue)")
    if storage.exists(predictions_url, s3) and not storage.is_dir(predictions_url, s3):
        raise RescoreError(f"{predictions_url}: --predictions must be a directory (of date=YYYY-MM-DD/ partitions), not a file")
    if storage.same_location(predictions_url, catalogue_url):
        raise RescoreError(f"{predictions_url}: --predictions is the --catalogue directory; the next night would read the predictions back as catalogue rows")
    below = storage.path_below(predictions_url, catalogue_url)
    if below is not None and not _skipped_name(below) and storage.is_dir(catalogue_url, s3):
        raise RescoreError(
            f"{predictions_url}: --predictions is inside the --catalogue directory; the next night would read the predictions back as catalogue rows "
            "(a folder whose name starts with _ or . is skipped there: e.g. CATALOGUE/_predictions)"
        )
    return date


def _skipped_name(name: str) -> bool:
    """A path under the catalogue directory that ``read_catalogue`` skips: a part of it hidden or
    ``_``-prefixed."""
    return any(part.startswith((".", "_")) for part in name.split("/"))


def read_catalogue(url: str, s3: S3Options | None = None) -> list[InputRow]:
    """Rows of one CSV/Parquet file, or of every ``.csv``/``.parquet``/``.pq`` file under a
    directory (sorted by path; hidden and ``_``-prefixed names skipped), through ``score.read_rows``."""
    if not storage.exists(url, s3):
        raise storage.StorageError(f"{url}: no such file or directory (--catalogue)")
    if not storage.is_dir(url, s3):
        return read_rows(url, s3)
    names = [
        name for name in storage.list_files(url, s3, recursive=True)
        if name.lower().endswith(CATALOGUE_SUFFIXES) and not _skipped_name(name)
    ]
    if not names:
        raise RescoreError(f"{url}: no .csv or .parquet files in the catalogue directory")
    rows: list[InputRow] = []
    for name in names:
        # Named by the path under the catalogue: museum_a/items.csv and museum_b/items.csv differ.
        rows.extend(read_rows(storage.join(url, name), s3, name=name))
    return rows


# ---------------------------------------------------------------- the predictions directory


def committed_partitions(predictions_url: str, s3: S3Options | None = None) -> list[tuple[str, str]]:
    """``(date, url)`` of the committed ``date=YYYY-MM-DD`` partitions, oldest first. Temporary,
    uncommitted (no ``_SUCCESS``) and other entries are ignored."""
    if not storage.exists(predictions_url, s3):
        return []
    if not storage.is_dir(predictions_url, s3):
        raise RescoreError(f"{predictions_url}: --predictions must be a directory (of date=YYYY-MM-DD/ partitions), not a file")
    found = []
    entries = storage.list_entries(predictions_url, s3)
    listed = partition_dirs(predictions_url, s3, entries)
    if not storage.is_s3(predictions_url):  # only a local commit sets a night aside
        present = {date for date, _ in listed}
        for name, _ in entries:
            aside = SET_ASIDE_RE.fullmatch(name)
            if aside and aside.group(1)[len("date="):] not in present:
                log.warning("rescore: night %s was set aside by a crash (%s) and is not read; the next rescore run puts it back", aside.group(1), storage.join(predictions_url, name))
    for date, url in listed:
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            continue
        if storage.is_committed(url, s3):
            found.append((date, url))
        else:
            log.warning("rescore: %s has no %s marker (an interrupted write?); ignored", url, storage.SUCCESS_MARKER)
    return sorted(found)


def put_back_set_aside_partitions(predictions_url: str, s3: S3Options | None = None) -> None:
    """Put back a partition a crash left set aside. A local commit over a re-run night's partition
    renames the old one to ``.date=X.old-*`` and then the new one in; a crash between the two left
    no ``date=X``, which only a re-run of that same night restored, and the next night read the
    history without it (and can no longer re-run X)."""
    if storage.is_s3(predictions_url) or not storage.is_dir(predictions_url, s3):
        return  # an S3 commit copies over the old objects: it sets nothing aside
    names = {match.group(1) for name, _ in storage.list_entries(predictions_url, s3) if (match := SET_ASIDE_RE.fullmatch(name))}
    for name in sorted(names):
        url = storage.join(predictions_url, name)
        missing = not storage.exists(url, s3)
        storage.clean_up_after_crashes(url, s3)
        if missing:
            log.warning("rescore: %s was set aside by a crash and no partition had replaced it; put back", url)


def remove_abandoned_writes(predictions_url: str, partitions: Sequence[tuple[str, str]], s3: S3Options | None = None) -> None:
    """Delete the temporary folders of killed nights older than the newest committed one: such a
    night can no longer be re-run (rescore only moves forward), so nothing else would remove a
    whole catalogue's worth of predictions left there."""
    if not partitions or not storage.is_dir(predictions_url, s3):
        return
    newest = partitions[-1][0]
    for name, _ in storage.list_entries(predictions_url, s3):
        # the temporary folder of a night's write (storage.atomic_directory), left by a killed run
        match = PARTITION_RE.fullmatch(storage.temporary_owner(name) or "")
        if match and match.group(1) < newest:
            storage.delete_dir(storage.join(predictions_url, name), s3)
            log.info("rescore: removed %s, the write of night %s killed before it committed (night %s is newer)", name, match.group(1), newest)


def partition_dirs(predictions_url: str, s3: S3Options | None = None, entries: Sequence[tuple[str, bool]] | None = None) -> list[tuple[str, str]]:
    """``(date, url)`` of the ``date=YYYY-MM-DD`` directories directly under a directory, committed
    or not, in listing order (``evaluate`` tells rescore's history from other Parquet by them).
    ``entries``: ``storage.list_entries``' listing when the caller has it."""
    found = []
    for name, is_dir in storage.list_entries(predictions_url, s3) if entries is None else entries:
        match = PARTITION_RE.fullmatch(name)
        if is_dir and match:
            found.append((match.group(1), storage.join(predictions_url, name)))
    return found


def read_partition(url: str, s3: S3Options | None = None, columns: Sequence[str] = PARTITION_COLUMNS) -> pa.Table:
    """The rows of one partition (its Parquet files), with the partition schema's types."""
    fs, path = storage.filesystem(url, s3)
    files = [name for name in storage.list_files(url, s3) if name.endswith(".parquet") and not name.startswith((".", "_"))]
    schema = pa.schema([PARTITION_SCHEMA.field(name) for name in columns])
    tables = []
    for name in files:
        try:
            table = pq.read_table(f"{path}/{name}", filesystem=fs)
            tables.append(table.select(list(columns)).cast(schema))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, OSError) as exc:
            raise RescoreError(f"{url}/{name}: not a predictions partition file ({exc})") from None
    return pa.concat_tables(tables) if tables else schema.empty_table()


def current_predictions(
    predictions_url: str, s3: S3Options | None = None, before: str | None = None, columns: Sequence[str] = PARTITION_COLUMNS,
    partitions: Sequence[tuple[str, str]] | None = None, compact_above: int = 1_000_000,
) -> pd.DataFrame:
    """The current prediction of every guid: its row in the newest committed partition that has
    it (``before``: only partitions dated strictly earlier), plus ``date``, the partition it came
    from. Sorted by guid. Guids that left the catalogue keep their last prediction. ``partitions``:
    ``committed_partitions``' answer when the caller has it (each partition's marker is a request
    on S3). Memory: the rows read are folded to one per guid whenever they pass twice the
    guids kept and ``compact_above``, so it holds about three catalogues' rows at most, not the
    history's."""
    if partitions is None and not storage.exists(predictions_url, s3):  # a typo read as "no predictions yet"
        raise RescoreError(f"{predictions_url}: no such predictions directory (rescore writes date=YYYY-MM-DD/ partitions there)")
    columns = list(dict.fromkeys(["guid", *columns]))
    tables = [pa.schema([*(PARTITION_SCHEMA.field(name) for name in columns), ("date", pa.string())]).empty_table()]
    held, kept = 0, 0
    for date, url in committed_partitions(predictions_url, s3) if partitions is None else partitions:
        if before is not None and date >= before:
            continue
        table = read_partition(url, s3, columns)
        tables.append(table.append_column("date", pa.array([date] * table.num_rows, pa.string())))
        held += table.num_rows
        # Every night a model changes adds the whole catalogue to the history: without folding
        # the rows read so far to one per guid, a year of nights held many catalogues at once.
        if held > max(2 * kept, compact_above):
            tables = [newest_per_guid(pa.concat_tables(tables))]
            held = kept = tables[0].num_rows
    frame = pa.concat_tables(tables).to_pandas()
    # Oldest partition first, rows in file order: the last row of a guid is its newest.
    frame = frame.drop_duplicates("guid", keep="last")
    return frame.sort_values("guid", kind="stable").reset_index(drop=True)


def newest_per_guid(table: pa.Table) -> pa.Table:
    """Each guid's last row (the rows oldest first), in the order those rows had. (Not
    ``Table.group_by``: pyarrow 10's crashes the process on a table of several chunks.)"""
    codes = pc.dictionary_encode(table.column("guid").combine_chunks(), null_encoding="encode").indices.to_numpy()
    _, first_from_end = np.unique(codes[::-1], return_index=True)
    return table.take(np.sort(len(codes) - 1 - first_from_end))


# ---------------------------------------------------------------- images


class ImageHashes:
    """Where score finds each guid's image (a ``DIR/<guid>`` file first, else a dataset row) and
    the sha256 score will record for it, computed only for the guids asked about."""

    def __init__(self, spark, images_dir: str | None, image_dataset: str | None, s3: S3Options | None, max_bytes: int, guids: Collection[str] = ()):
        self.spark, self.s3, self.max_bytes = spark, s3, max_bytes
        self.files = find_image_files(images_dir, s3, guids) if images_dir else ImageFiles()
        self.dataset = find_dataset_images(image_dataset, s3) if image_dataset else {}

    def __call__(self, guids: Sequence[str]) -> dict[str, str | None]:
        result: dict[str, str | None] = {guid: None for guid in guids}
        files = {guid: self.files[guid] for guid in guids if guid in self.files}
        result.update(hash_files(self.spark, files, self.s3, self.max_bytes))
        by_part: dict[str, list[str]] = {}
        for guid in guids:
            # An ambiguous guid gets no image in score (not the dataset's either): no hash.
            if guid not in self.files and guid not in self.files.ambiguous and guid in self.dataset:
                by_part.setdefault(self.dataset[guid], []).append(guid)
        for part, part_guids in by_part.items():
            result.update(dataset_hashes(part, part_guids, self.s3))
        return result


def dataset_hashes(part_url: str, guids: Sequence[str], s3: S3Options | None) -> dict[str, str | None]:
    """guid -> the sha256 score records for a dataset row: its ``sha256`` column (the original
    file's hash, read without the images), or where that is empty, the hash of the stored bytes."""
    fs, path = storage.filesystem(part_url, s3)
    wanted = set(guids)
    has_sha = "sha256" in pq.read_schema(path, filesystem=fs).names
    found: dict[str, str | None] = {}
    if has_sha:
        table = pq.read_table(path, columns=["guid", "sha256"], filesystem=fs, filters=[("guid", "in", sorted(wanted))])
        # Like score.read_dataset_images: the last row of a guid in the part file wins.
        found = {guid: sha or None for guid, sha in zip(table.column("guid").to_pylist(), table.column("sha256").to_pylist())}
    missing = {guid for guid in wanted if not found.get(guid)}
    if missing:
        for guid, (image, _) in read_dataset_images(part_url, missing, s3).items():
            found[guid] = hashlib.sha256(image).hexdigest() if image is not None else None
    return {guid: found.get(guid) for guid in guids}


def _hash_partition(s3: S3Options | None, max_bytes: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            shas = []
            for url in batch["url"]:
                try:
                    # Score refuses a file over images.max_bytes unread and records no hash; so
                    # does this, or such a row would look changed (and be re-scored) every night.
                    raw, _ = storage.read_bytes_within(url, max_bytes, s3)
                    shas.append(None if raw is None else hashlib.sha256(raw).hexdigest())
                except OSError:  # score notes "image unreadable" and records no hash
                    shas.append(None)
            yield pd.DataFrame({"guid": batch["guid"].to_numpy(), "sha256": shas})

    return run


def hash_files(spark, urls: Mapping[str, str], s3: S3Options | None, max_bytes: int) -> dict[str, str | None]:
    """guid -> sha256 of the file's bytes (None when unreadable or over ``max_bytes``, as score
    records it), read and hashed on the executors."""
    if not urls:
        return {}
    partitions = max(1, min(len(urls), spark.sparkContext.defaultParallelism * 4))
    frame = spark.createDataFrame(pd.DataFrame({"guid": list(urls), "url": list(urls.values())}), "guid string, url string")
    hashed = frame.repartition(partitions).mapInPandas(_hash_partition(s3, max_bytes), "guid string, sha256 string").toPandas()
    return dict(zip(hashed["guid"], hashed["sha256"].where(hashed["sha256"].notna(), None)))


# ---------------------------------------------------------------- the plan (pure, given the image hashes)


@dataclass
class RescorePlan:
    rescore: list[tuple[int, str]]  # (catalogue row index, reason), in catalogue order
    unchanged: int
    not_scored: list[tuple[int, str, str]]  # (catalogue row index, kind, message)
    absent: list[str]  # guids of the state that the catalogue no longer has, sorted

    def counts(self) -> dict[str, Any]:
        reasons = Counter(reason for _, reason in self.rescore)
        kinds = Counter(kind for _, kind, _ in self.not_scored)
        return {
            "rescored": len(self.rescore),
            "reasons": {reason: reasons[reason] for reason in REASONS},
            "unchanged": self.unchanged,
            "not_scored": {kind: kinds[kind] for kind in NOT_SCORED},
            "not_scored_examples": [message for _, _, message in self.not_scored[:EXAMPLES]],
            "absent_from_catalogue": len(self.absent),
            "absent_examples": self.absent[:EXAMPLES],
        }


def normalised_hash(description: str | None, normalization: int = NORMALIZATION_VERSION) -> str | None:
    """The description hash score records: of the normalised text, None when it has no words."""
    return description_hash(normalize(description, normalization))


def plan_rescore(
    rows: Sequence[InputRow],
    state: Mapping[str, Mapping[str, Any]],
    model_version: str,
    image_hashes: Callable[[list[str]], Mapping[str, str | None]],
    normalization: int = NORMALIZATION_VERSION,
) -> RescorePlan:
    """Which catalogue rows to score and why. ``state``: guid -> its current ``model_version``,
    ``description_hash``, ``image_sha256``; ``image_hashes`` is asked once, for the rows whose
    text and model are unchanged."""
    record = rows_of_record(rows)
    rescore: list[tuple[int, str]] = []
    check: list[int] = []
    not_scored: list[tuple[int, str, str]] = []
    for index, row in enumerate(rows):
        where = f"{row.source_file} row {row.source_row}"
        if row.guid is None:
            # The reader's own reason when it has one (a row with too few fields has no guid either).
            not_scored.append((index, "empty guid", row.rejected_reason or f"{where}: empty guid"))
            continue
        if has_control_character(row.guid):
            not_scored.append((index, "unusable guid", row.rejected_reason or f"{where}: guid {row.guid!r} holds a control character"))
            continue
        recorded = where_recorded(rows, record, index, with_file=True)
        if recorded:
            not_scored.append((index, "duplicate guid", f"{where}: duplicate guid {row.guid} ({recorded})"))
            continue
        old = state.get(row.guid)
        if old is None:
            rescore.append((index, "new"))
        elif old.get("model_version") != model_version:
            rescore.append((index, "model"))
        elif normalised_hash(row.description, normalization) != old.get("description_hash"):
            rescore.append((index, "description"))
        else:
            check.append(index)
    unchanged = 0
    if check:
        current = image_hashes([rows[i].guid for i in check])  # type: ignore[misc]
        for index in check:
            guid = rows[index].guid
            if current.get(guid) != state[guid].get("image_sha256"):  # type: ignore[index]
                rescore.append((index, "image"))
            else:
                unchanged += 1
    return RescorePlan(sorted(rescore), unchanged, not_scored, sorted(set(state) - set(record)))


# ---------------------------------------------------------------- writing


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame.loc[:, list(PARTITION_COLUMNS)], schema=PARTITION_SCHEMA, preserve_index=False), buffer)
    return buffer.getvalue()


def summary_bytes(summary: Mapping[str, Any]) -> bytes:
    return (json.dumps(summary, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def not_scored_records(rows: Sequence[InputRow], not_scored: Sequence[tuple[int, str, str]]) -> list[dict[str, Any]]:
    """The rows of ``NOT_SCORED_FILE``: the catalogue rows not scored (``RescorePlan.not_scored``), in order."""
    return [{"source_file": rows[i].source_file, "source_row": rows[i].source_row, "guid": rows[i].guid, "kind": kind, "message": message} for i, kind, message in not_scored]


def not_scored_parquet(records: Sequence[Mapping[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(records), schema=NOT_SCORED_SCHEMA), buffer)
    return buffer.getvalue()


def write_partition(url: str, frame: pd.DataFrame, summary: Mapping[str, Any], not_scored: bytes, s3: S3Options | None, before_commit: Callable[[], None] = lambda: None) -> None:
    """The night's rows, the rows it did not score and its summary, committed whole (``_SUCCESS``
    last) or not at all. ``before_commit`` runs last before the commit and may refuse it."""
    with storage.atomic_directory(url, s3) as tmp:
        storage.write_bytes(storage.join(tmp, PART_FILE), to_parquet(frame), s3)
        storage.write_bytes(storage.join(tmp, NOT_SCORED_FILE), not_scored, s3)
        storage.write_bytes(storage.join(tmp, SUMMARY_FILE), summary_bytes(summary), s3)
        before_commit()


def check_no_night_came_meanwhile(predictions_url: str, date: str, read_at_start: Sequence[tuple[str, str]], s3: S3Options | None) -> None:
    """Refuse to commit night ``date`` when another rescore committed a night other than this one
    after this run read its state (an overlapping scheduled run): a later night committed first
    broke "only moves forward", and an earlier one left this night's delta computed without it
    (a description changed that night stayed predicted from the old text)."""
    start = {d for d, _ in read_at_start if d != date}
    came = sorted({d for d, _ in committed_partitions(predictions_url, s3) if d != date} - start)
    if came and max(came) > date:
        raise RescoreError(f"{predictions_url}: night {max(came)} was committed by another rescore while this one ran; not committing date={date} (rescore only moves forward, and that later night already covers this one)")
    if came:
        raise RescoreError(f"{predictions_url}: night(s) {', '.join(came)} committed by another rescore while this one ran; not committing date={date}, whose changes were computed without them: run it again")


def _already_complete(url: str, planned: list[tuple], plan_summary: Mapping[str, Any], not_scored: list[dict[str, Any]], s3: S3Options | None) -> bool:
    """The committed partition holds exactly the planned rows, made from the same inputs, and
    lists exactly these rows as not scored (the summary keeps only the first few of them: a
    catalogue whose 25th rejected row moved would otherwise keep a stale list)."""
    if not storage.is_committed(url, s3):
        return False
    try:
        stored = json.loads(storage.read_bytes(storage.join(url, SUMMARY_FILE), s3))
        table = read_partition(url, s3, ("guid", "reason", "description_hash", "image_sha256", "model_version"))
        with storage.open_input_file(storage.join(url, NOT_SCORED_FILE), s3) as f:
            stored_not_scored = pq.read_table(f).to_pylist()
    except (OSError, ValueError):  # damaged, or written before rows not scored were listed: written again
        return False
    if any(stored.get(key) != plan_summary[key] for key in PLAN_KEYS) or stored_not_scored != not_scored:
        return False
    return list(zip(*(table.column(name).to_pylist() for name in table.column_names))) == planned


# ---------------------------------------------------------------- the job


def run(
    spark,
    settings: Settings,
    catalogue_url: str,
    predictions_url: str,
    spec: ScorerSpec,
    date: str | None = None,
    images_dir: str | None = None,
    image_dataset: str | None = None,
    force: bool = False,
    factory: ScorerFactory = Scorer.cached,
) -> dict[str, Any]:
    """Score what changed in ``catalogue_url`` since the newest committed partitions of
    ``predictions_url`` into ``predictions_url/date=DATE/`` (see the module docstring)."""
    s3 = S3Options.from_settings(settings.section("s3"))
    date = check_arguments(catalogue_url, predictions_url, date, s3)
    partition_url = storage.join(predictions_url, f"date={date}")
    put_back_set_aside_partitions(predictions_url, s3)
    partitions = committed_partitions(predictions_url, s3)
    remove_abandoned_writes(predictions_url, partitions, s3)
    newer = [d for d, _ in partitions if d > date]
    if newer:
        raise RescoreError(
            f"{predictions_url}: partition date={newer[-1]} is newer than --date {date}; rescore only moves forward "
            f"(the state of {date} would ignore it). Re-run date {newer[-1]} or a later one."
        )
    rows = read_catalogue(catalogue_url, s3)
    before = [(d, url) for d, url in partitions if d < date]
    state_frame = current_predictions(predictions_url, s3, before=date, columns=STATE_COLUMNS, partitions=partitions)
    state = {record["guid"]: record for record in state_frame.to_dict("records")}  # string columns: None for null
    images = ImageHashes(spark, images_dir, image_dataset, s3, spec.max_bytes, known_guids(rows))
    version = spec.model_version
    log.info("rescore %s: %d catalogue rows against %d guids from %d partition(s), model %s", date, len(rows), len(state), len(before), version)
    plan = plan_rescore(rows, state, version, images, spec.text_normalization)

    counts = plan.counts()
    summary: dict[str, Any] = {
        "date": date,
        "model_version": version,
        "rows": len(rows),
        **counts,
        "state_partitions": [d for d, _ in before],
        "catalogue": catalogue_url,
        "partition": partition_url,
    }
    accounted = counts["rescored"] + counts["unchanged"] + sum(counts["not_scored"].values())
    if accounted != len(rows):  # every catalogue row is rescored, unchanged or not scored
        raise InternalError(f"rescore: {len(rows)} catalogue rows, {accounted} accounted for")
    delta = [rows[i] for i, _ in plan.rescore]
    reasons = [reason for _, reason in plan.rescore]
    not_scored = not_scored_records(rows, plan.not_scored)

    if not force and storage.is_committed(partition_url, s3):
        current = images([row.guid for row in delta]) if delta else {}  # type: ignore[misc]
        planned = [(row.guid, reason, normalised_hash(row.description, spec.text_normalization), current.get(row.guid), version) for row, reason in zip(delta, reasons)]
        if _already_complete(partition_url, planned, summary, not_scored, s3):
            log.info("rescore %s: %s already holds this delta (%d rows); nothing to do", date, partition_url, len(delta))
            stored = json.loads(storage.read_bytes(storage.join(partition_url, SUMMARY_FILE), s3))
            return {**stored, "already_complete": True, "scored": 0}

    tasks = plan_tasks(delta, images.files, images.dataset, spec.text_normalization)
    result = score_tasks(spark, tasks, spec, int(settings.get("score.rows_per_partition")), factory, int(settings.get("score.rows_per_job")))
    frame = result.assign(reason=reasons)
    summary["sources"] = dict(sorted(Counter(frame["source"]).items()))
    write_partition(partition_url, frame, summary, not_scored_parquet(not_scored), s3, lambda: check_no_night_came_meanwhile(predictions_url, date, partitions, s3))
    log.info("rescore %s: %d rows scored (%s) -> %s", date, len(frame), summary["reasons"], partition_url)
    return {**summary, "already_complete": False, "scored": len(frame)}
