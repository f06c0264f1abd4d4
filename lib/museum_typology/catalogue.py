"""Reading the catalogue CSVs (``guid,description,typology``) into checked input rows.

Structural problems (a missing file or column, bytes that are not UTF-8, a malformed quote, after
which where the next row starts cannot be known) raise ``CsvError`` naming the file, the line and
the problem. Row problems (an empty or duplicate guid, an unknown label, a row with more or fewer
fields than the header) keep the row and record why it was rejected, so nothing is dropped
silently.
"""
from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from .schema import CLASS_INDEX


# Python's csv refuses a field over 131072 characters by default, which would make one long
# description a CsvError for the whole file. The text is already in memory, so the limit
# protects nothing here; raise it (it is process-wide, and only ever raised, never lowered).
_FIELD_SIZE_LIMIT = 2**31 - 1  # the C long of every platform can hold it
csv.field_size_limit(max(csv.field_size_limit(), _FIELD_SIZE_LIMIT))

# The columns a file must have: an unlabelled file (test.csv) need not carry a typology column.
LABELLED_COLUMNS: tuple[str, ...] = ("guid", "description", "typology")
UNLABELLED_COLUMNS: tuple[str, ...] = ("guid", "description")
CATALOGUE_COLUMNS: tuple[str, ...] = ("guid", "description", "typology", "url")  # all the parser reads


class CsvError(ValueError):
    """A CSV that cannot be read at all; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class InputRow:
    """One data row of an input CSV, with its provenance and, if unusable, why."""

    guid: str | None
    split: str
    source_file: str
    source_row: int  # 1-based data row number (the header is row 0)
    source_line: int  # physical line where the row starts, for error messages
    description: str | None
    typology: str | None
    url: str | None = None
    rejected_reason: str | None = None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def parse_catalogue_csv(
    text: str,
    source_file: str,
    split: str,
    required: Sequence[str] | None = None,
    labelled: bool = True,
    used: Sequence[str] | None = None,
) -> list[InputRow]:
    """Parse CSV text (BOM already stripped or not) into ``InputRow``s. Pure: text in, rows out.

    ``required`` defaults to the columns a labelled or an unlabelled file must have. ``used``:
    the columns the caller reads, which must not be named twice (default: the catalogue's, less
    ``typology`` in an unlabelled file, whose labels are dropped); others may be."""
    if required is None:
        required = LABELLED_COLUMNS if labelled else UNLABELLED_COLUMNS
    if used is None:
        used = [name for name in CATALOGUE_COLUMNS if labelled or name != "typology"]
    columns, records = csv_records(text, source_file, f" (expected a header with {', '.join(required)})")
    refuse_repeated_columns(columns, source_file, used)
    missing = [name for name in required if name not in columns]
    if missing:
        raise CsvError(
            f"{source_file}: missing column(s) {', '.join(missing)} in the header (found: {', '.join(columns) or 'nothing'})"
        )
    index = {name: columns.index(name) for name in columns}
    rows: list[InputRow] = []
    data_row = 0
    for line_start, fields in records:
        data_row += 1

        def field(name: str) -> str | None:
            position = index.get(name)
            return _clean(fields[position]) if position is not None and position < len(fields) else None

        reason = None
        if len(fields) != len(columns):
            reason = f"{source_file} row {data_row} (line {line_start}): {len(fields)} fields, header has {len(columns)}"
        guid = field("guid")
        typology = field("typology") if "typology" in index else None
        if reason is None and guid is None:
            reason = f"{source_file} row {data_row} (line {line_start}): empty guid"
        if reason is None and has_control_character(guid):
            # pandas and some CSV tools cut a field at NUL, so later jobs would see another guid.
            reason = f"{source_file} row {data_row} (line {line_start}): guid {guid!r} holds a control character"
        if reason is None and labelled and typology is None:
            reason = f"{source_file} row {data_row} (line {line_start}): empty typology in a labelled file"
        if reason is None and labelled and typology is not None and typology not in CLASS_INDEX:
            # Only a labelled file's label is used; an unlabelled file's column is dropped below.
            reason = f"{source_file} row {data_row} (line {line_start}): unknown typology {typology!r}"
        rows.append(
            InputRow(
                guid=guid,
                split=split,
                source_file=source_file,
                source_row=data_row,
                source_line=line_start,
                description=field("description"),
                typology=typology if labelled else None,
                url=field("url"),
                rejected_reason=reason,
            )
        )
    return rows


def with_text_columns(table, names: Sequence[str]):
    """A pyarrow table whose columns ``names`` (matched without case or spaces) are text, cast in
    Arrow: a guid column that pandas wrote as floats (integers with a missing value) reads
    "1", not "1.0", and binary reads as its UTF-8 text, not "b'abc'". Every job that reads
    guids from Parquet reads them this way, so they match. Bytes that are not UTF-8 raise
    pyarrow's ``ArrowInvalid``."""
    import pyarrow as pa

    wanted = {name.lower() for name in names}
    for position, name in enumerate(table.column_names):
        kind = table.schema.field(position).type
        if str(name).strip().lower() in wanted and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            column = table.column(position)
            # Whole floats through int64: Arrow writes 10000000007.0 as "1.0000000007e+10", not the
            # "10000000007" of the CSV (below 1e10 it writes "1", but not above).
            if pa.types.is_floating(kind) and _whole_int64(column):
                column = column.cast(pa.int64())
            table = table.set_column(position, name, column.cast(pa.string()))
    return table


def parquet_data_files(fs, path: str, name: str) -> list[str]:
    """The data files of a Parquet directory (``_SUCCESS``, ``.crc`` and other hidden files are
    not among them), for reading one by one: read as one dataset, every file takes the first
    file's column names as they are spelled ("GUID" in one file, "guid" in another comes in as
    empty guids) and a column one file lacks comes in empty. ``name``: the directory in errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        files = pq.ParquetDataset(path, filesystem=fs).files
    except (pa.ArrowInvalid, OSError) as exc:
        raise CsvError(f"{name}: not a readable Parquet directory ({exc})") from None
    if not files:
        raise CsvError(f"{name}: a directory without Parquet files")
    return files


def _whole_int64(column) -> bool:
    """Every value of a float column is whole and fits int64 (nulls aside)."""
    import pyarrow.compute as pc

    values = pc.drop_null(column)
    if len(values) == 0:
        return True
    finite = pc.all(pc.is_finite(values)).as_py()
    return bool(finite and pc.all(pc.equal(values, pc.floor(values))).as_py() and pc.max(pc.abs(values)).as_py() < 2**63)


def has_control_character(text: str | None) -> bool:
    """A C0 control character (NUL, tab, ...) or DEL inside ``text``: never part of a guid."""
    return text is not None and any(_is_control(ch) for ch in text)


def _is_control(ch: str) -> bool:
    return ord(ch) < 32 or ord(ch) == 127


def escape_control_characters(text: str) -> str:
    """``text`` with each control character (``has_control_character``) written as ``\\xNN``:
    how a guid holding one goes into a CSV file, where pandas and other readers cut a field at
    NUL (the row's note already gives the guid as it was read)."""
    return "".join(f"\\x{ord(ch):02x}" if _is_control(ch) else ch for ch in text)


def csv_records(text: str, where: str, expected: str = "") -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """CSV text (a BOM dropped) -> (the header's names, stripped and lower-cased; the records as
    (line where each starts, fields)), read strictly. Blank lines are skipped: only an empty or
    whitespace-only line is blank; a record of empty fields (',,') is a row. A malformed record
    is a ``CsvError`` naming its line when the iterator reaches it."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    try:
        header = [name.strip().lstrip("\ufeff").lower() for name in next(reader)]
    except StopIteration:
        raise CsvError(f"{where}: the file is empty{expected}") from None
    except csv.Error as exc:
        raise CsvError(f"{where}, line 1: unreadable header ({exc})") from None

    def records() -> Iterator[tuple[int, list[str]]]:
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise CsvError(f"{where}, line {line}: malformed CSV ({exc})") from None
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                yield line, fields

    return header, records()


def repeated_columns(header: list[str], read: Collection[str] | None = None) -> list[str]:
    """The names ``header`` holds more than once, sorted; ``read``: only these names count (the
    others are never read: a spreadsheet's trailing unnamed columns, ``guid,description,,``)."""
    return sorted({name for name in header if header.count(name) > 1 and (read is None or name in read)})


def refuse_repeated_columns(header: list[str], where: str, read: Collection[str] | None = None) -> None:
    """A column named twice is an error: which of the two holds the data is anybody's guess (a
    row would be read from the first, perhaps empty, one and scored as if it had no text).
    ``read``: as ``repeated_columns``."""
    repeated = repeated_columns(header, read)
    if repeated:
        raise CsvError(f"{where}, line 1: column(s) {', '.join(repeated)} appear more than once in the header")


def read_strict_csv(text: str, where: str) -> tuple[list[str], list[list[str]], list[int]]:
    """CSV text -> (lower-cased header, records of exactly as many fields, the line each record
    starts on), read as the catalogue parser reads. A record whose field count differs from the
    header's is a ``CsvError`` naming its line (pandas' reader took one extra field in the first
    record for an index column and shifted every column)."""
    header, records = csv_records(text, where)
    refuse_repeated_columns(header, where)
    rows: list[list[str]] = []
    lines: list[int] = []
    for line, fields in records:
        if len(fields) != len(header):
            raise CsvError(f"{where}, line {line}: {len(fields)} fields, the header has {len(header)}")
        rows.append(fields)
        lines.append(line)
    return header, rows, lines


def decode_csv_bytes(raw: bytes, source_file: str) -> str:
    """UTF-8 (with or without a BOM) -> text; anything else is a ``CsvError`` naming the line."""
    # Strip the BOM ourselves: the utf-8-sig codec reports error offsets relative to the bytes
    # *after* the BOM, which would point the line number at the wrong place.
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = raw[:offset].count(b"\n") + 1
        raise CsvError(f"{source_file}, line {line}: not UTF-8 text (byte {offset}: {exc.reason})") from None


# How the score job's note marks a row of a repeated guid that is not the guid's row of record
# (``rows_of_record``); evaluate reads it to score the row of record.
DUPLICATE_NOTE = "duplicate guid ("


def rows_of_record(rows: Sequence[InputRow]) -> dict[str, int]:
    """guid -> the index of the row that speaks for it: its first row read without error, else
    its first row. A malformed row (a comma too many cut its text) must not push aside a sound
    row of the same guid just because it comes first. Rows without a guid are left out."""
    record: dict[str, int] = {}
    for index, row in enumerate(rows):
        if row.guid is None:
            continue
        current = record.get(row.guid)
        if current is None or (rows[current].rejected_reason is not None and row.rejected_reason is None):
            record[row.guid] = index
    return record


def where_recorded(rows: Sequence[InputRow], record: Mapping[str, int], index: int, with_file: bool = False) -> str | None:
    """For ``rows[index]`` when another row is its guid's row of record (``record``:
    ``rows_of_record``), where that row is: "first at [FILE ]row N", or "read without error at
    [FILE ]row N" when a later sound row speaks for a malformed first one; else None."""
    guid = rows[index].guid
    if guid is None or record[guid] == index:
        return None
    other = rows[record[guid]]
    said = "first at" if record[guid] < index else "read without error at"
    return f"{said} {other.source_file + ' ' if with_file else ''}row {other.source_row}"


def reject_duplicates(rows: Iterable[InputRow]) -> list[InputRow]:
    """Keep the first row of each guid (across all files, in order); later ones are rejected
    with a reason pointing at the first, so both stay visible in the manifest. The first is the
    guid's row of record (``rows_of_record``): rows already rejected neither count nor change."""
    rows = list(rows)
    record = rows_of_record(rows)
    result: list[InputRow] = []
    for index, row in enumerate(rows):
        if row.rejected_reason is None and row.guid is not None and record[row.guid] != index:
            first = rows[record[row.guid]]
            row = replace(
                row,
                rejected_reason=(
                    f"{row.source_file} row {row.source_row} (line {row.source_line}): duplicate guid {row.guid}, "
                    f"first seen in {first.source_file} row {first.source_row} (line {first.source_line})"
                ),
            )
        result.append(row)
    return result
