"""Writing and reading the petastorm image dataset without Spark's Hadoop file systems.

Spark executors encode rows with the Unischema's codecs and stream them into Parquet part files
through pyarrow (local or S3 alike: Spark's own ``s3a://`` writer needs Hadoop jars that a pip
install does not have). The driver then adds petastorm's metadata, so that ``make_reader`` and
``make_batch_reader`` read the result like any petastorm dataset.
"""
from __future__ import annotations

import importlib.util
import io
import posixpath
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.arrow import ArrowFSWrapper
from petastorm.codecs import CompressedImageCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from PIL import Image
from pyspark.sql.types import IntegerType, LongType, StringType

from . import storage
from .storage import S3Options

_SCALAR_TYPES = {StringType: pa.string(), IntegerType: pa.int32(), LongType: pa.int64()}


def _close_end_of_ventilation_race() -> None:
    """Make petastorm 0.13.1's thread pool never end a read before it has started.

    ``ThreadPool.get_results`` raises "no more results" when ``all_workers_done()`` (every worker
    has returned as many items as were ventilated to it: 0 == 0 before anything is ventilated)
    and *then* the ventilator says it has ``completed()``. A small dataset (a rank's shard of one
    or two row groups) is ventilated in microseconds, so the ventilator can finish between the
    two checks: the reader then yields no rows at all (seen in CI: a 3-image dataset read back
    empty, although its metadata and parts were right). Asking the ventilator first closes the
    window: once it has completed, the per-worker counts are final. Idempotent.
    """
    from petastorm.workers_pool.thread_pool import ThreadPool

    if getattr(ThreadPool.all_workers_done, "_ventilation_checked_first", False):
        return
    workers_done = ThreadPool.all_workers_done

    def all_workers_done(self) -> bool:
        ventilation_over = not self._ventilator or self._ventilator.completed()
        return ventilation_over and workers_done(self)

    all_workers_done._ventilation_checked_first = True  # type: ignore[attr-defined]
    ThreadPool.all_workers_done = all_workers_done


_close_end_of_ventilation_race()


def arrow_schema(schema: Unischema) -> pa.Schema:
    """The Parquet schema petastorm expects for ``schema`` (what Spark would have written)."""
    fields = []
    for name, field in schema.fields.items():
        if isinstance(field.codec, CompressedImageCodec):
            arrow_type = pa.binary()
        elif isinstance(field.codec, ScalarCodec):
            arrow_type = _SCALAR_TYPES[type(field.codec._spark_type)]
        else:
            raise TypeError(f"field {name}: codec {field.codec!r} is not supported by petastorm_io")
        fields.append(pa.field(name, arrow_type, nullable=field.nullable))
    return pa.schema(fields)


def write_empty_part(url: str, schema: Unischema, s3: S3Options | None = None) -> None:
    """A part file of no rows with ``schema``'s columns: a dataset whose every row failed still
    opens (petastorm and Spark need one part to read its schema)."""
    storage.write_parquet(url, arrow_schema(schema).empty_table(), s3)


def encode_row(schema: Unischema, row: Mapping[str, Any]) -> dict[str, Any]:
    """Encode one row's values with the fields' codecs (images -> compressed bytes)."""
    encoded = {}
    for name, field in schema.fields.items():
        value = row.get(name)
        if value is None:
            if not field.nullable:
                raise ValueError(f"field {name} is not nullable")
            encoded[name] = None
        elif isinstance(field.codec, CompressedImageCodec):
            encoded[name] = encode_image(field, value)
        else:
            encoded[name] = field.codec.encode(field, value)
    return encoded


def encode_image(field: UnischemaField, pixels: np.ndarray) -> bytes:
    """Compress one image as the field's codec stores it. JPEG goes through Pillow (libjpeg-turbo)
    rather than the codec's own ``cv2.imencode``: the same format, which the codec's ``decode``
    (``cv2.imdecode``) reads back, at about a quarter of the CPU (1.0 vs 4.6 ms a 512-px image),
    because cv2 needs an RGB->BGR copy first and encodes slower. Crawl and ingest encode every
    stored image, so this is much of their CPU after decoding. Other formats keep the codec's
    encoder."""
    codec = field.codec
    if codec.image_codec == "jpeg" and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=codec._quality)
        return buffer.getvalue()
    return bytes(codec.encode(field, pixels))


class PartWriter:
    """Streams encoded rows into one Parquet part file, a row group every ``row_group_bytes``.
    Holds at most one row group in memory."""

    def __init__(self, url: str, schema: Unischema, row_group_bytes: int, s3: S3Options | None = None):
        self.url, self.schema, self.row_group_bytes, self.s3 = url, schema, row_group_bytes, s3
        self.arrow = arrow_schema(schema)
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self.rows_written = 0

    def add(self, encoded: dict[str, Any]) -> None:
        self._buffer.append(encoded)
        self._buffered_bytes += sum(len(v) for v in encoded.values() if isinstance(v, (bytes, str)))
        if self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            fs, path = storage.filesystem(self.url, self.s3)
            fs.create_dir(posixpath.dirname(path), recursive=True)
            self._stream = fs.open_output_stream(path)
            self._writer = pq.ParquetWriter(self._stream, self.arrow, compression="snappy")
        table = pa.Table.from_pylist(self._buffer, schema=self.arrow)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self.rows_written += len(self._buffer)
        self._buffer, self._buffered_bytes = [], 0

    def close(self) -> int:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
        return self.rows_written


class ArrowS3Wrapper(ArrowFSWrapper):
    """fsspec's ``ArrowFSWrapper`` over a pyarrow ``S3FileSystem``, declared for the ``s3`` and
    ``s3a`` protocols. Without an argument it uses pyarrow's defaults (the standard AWS
    credential chain). Module-level, so petastorm's process pool can pickle it."""

    protocol = ("s3", "s3a")
    root_marker = ""
    cachable = False  # one per pyarrow filesystem; fsspec's instance cache would keep them all

    def __init__(self, fs: pafs.FileSystem | None = None, **kwargs: Any):
        super().__init__(fs if fs is not None else pafs.S3FileSystem(), **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path).rstrip("/")


def _register_fsspec_s3() -> None:
    """Let fsspec resolve ``s3://`` URLs without s3fs (not a dependency of this project).

    petastorm's ``make_reader`` turns the dataset URL into a path with ``fsspec.core.strip_protocol``,
    which imports the fsspec class registered for the scheme: s3fs for ``s3``. Where s3fs is not
    installed, register ``ArrowS3Wrapper`` for ``s3``/``s3a`` instead; with s3fs installed,
    nothing changes.
    """
    for protocol in ("s3", "s3a"):
        # fsspec.registry: a read-only view of the classes registered (or imported) so far.
        if protocol not in fsspec.registry and importlib.util.find_spec("s3fs") is None:
            fsspec.register_implementation(protocol, ArrowS3Wrapper, clobber=False)


def legacy_filesystem(url: str, s3: S3Options | None = None):
    """The filesystem object petastorm's (legacy pyarrow) ParquetDataset code can use."""
    if storage.is_s3(url):
        _register_fsspec_s3()
        fs, _ = storage.filesystem(url, s3)
        return ArrowS3Wrapper(fs)
    # From its module: the pyarrow.LocalFileSystem alias warns (FutureWarning) in every Spark task
    # that writes or reads the dataset; the class is what petastorm 0.13 needs (pinned, see README).
    from pyarrow.filesystem import LocalFileSystem

    return LocalFileSystem._get_instance()


def _dataset_path(url: str) -> str:
    return storage.filesystem(url)[1] if not storage.is_s3(url) else url.split("://", 1)[1].rstrip("/")


def write_metadata(url: str, schema: Unischema, spark_context, s3: S3Options | None = None) -> None:
    """Add petastorm's metadata (the pickled Unischema, row groups per file) to a written dataset."""
    from petastorm.etl import dataset_metadata

    def factory():
        return legacy_filesystem(url, s3)

    fs = factory()
    dataset = pq.ParquetDataset(_dataset_path(url), filesystem=fs, validate_schema=False)
    dataset_metadata._generate_unischema_metadata(dataset, schema)
    dataset_metadata._generate_num_row_groups_per_file(dataset, spark_context, factory)


def make_reader(url: str, s3: S3Options | None = None, **kwargs: Any):
    """petastorm ``make_reader`` over a local or S3 dataset written by this module."""
    from petastorm import make_reader as petastorm_make_reader

    return petastorm_make_reader(
        storage.to_uri(url), filesystem=legacy_filesystem(url, s3) if storage.is_s3(url) else None, **kwargs
    )


def read_columns(url: str, columns: Iterable[str], s3: S3Options | None = None) -> pa.Table:
    """Read plain (non-image) columns of the dataset with pyarrow, fast, without decoding images."""
    fs, path = storage.filesystem(url, s3)
    return pq.read_table(path, columns=list(columns), filesystem=fs)


class PartImageReader:
    """Stored images by guid from the dataset's Parquet part files, a row group at a time.

    A part file's guids are in no order (ingest and crawl write them as they come), so a guid
    filter cannot skip row groups by their statistics: asking the whole file for 128 guids read
    every image in it, once per request. This reader indexes each part's guids once (the small
    ``guid`` column), reads only the row groups holding the guids asked for, and keeps the last
    one read, so that requests in ``position`` order read each row group once. Where a guid
    occurs twice in one part file, its last row wins.

    It lives as long as its scorer (an executor's Python worker, across jobs), so a part file may
    be rewritten under it (a re-run of ingest writes the same names): every row read is checked
    against the guid asked for, and on a mismatch, or a guid asked for that an index from before
    the last ``release`` lacks, the part is indexed afresh. Holds the guid index
    of the ``indexed_parts`` most recently used part files and, until ``release``, one row group
    of images; no open files. Not thread-safe: one per scorer."""

    def __init__(self, s3: S3Options | None = None, indexed_parts: int = 32):
        self.s3 = s3
        self.indexed_parts = indexed_parts
        # url -> (guid -> (row group, row), has a sha256 column, the generation it was read in)
        self._index: OrderedDict[str, tuple[dict[str, tuple[int, int]], bool, int]] = OrderedDict()
        self._generation = 0  # + 1 at each release: indexes from before may be out of date
        self._last: tuple[tuple[str, int], pa.Table] | None = None
        self._filesystems: dict[str, pafs.FileSystem] = {}  # one S3 client per bucket, not per read
        self.row_groups_read = 0  # image row groups read so far (tests and benchmarks count them)
        self.parts_indexed = 0  # guid indexes read so far

    def _open(self, url: str) -> pq.ParquetFile:
        bucket = url.split("/", 3)[2] if storage.is_s3(url) else ""
        if bucket not in self._filesystems:
            self._filesystems[bucket] = storage.filesystem(url, self.s3)[0]
        return pq.ParquetFile(self._filesystems[bucket].open_input_file(storage.filesystem_path(url)))

    def _part(self, url: str) -> tuple[dict[str, tuple[int, int]], bool, int]:
        if url in self._index:
            self._index.move_to_end(url)
        else:
            parquet = self._open(url)
            positions: dict[str, tuple[int, int]] = {}
            for group in range(parquet.num_row_groups):
                for row, guid in enumerate(parquet.read_row_group(group, columns=["guid"]).column("guid").to_pylist()):
                    positions[guid] = (group, row)
            self._index[url] = (positions, "sha256" in parquet.schema_arrow.names, self._generation)
            self.parts_indexed += 1
            while len(self._index) > self.indexed_parts:
                self._index.popitem(last=False)
        return self._index[url]

    def position(self, url: str, guid: str) -> tuple[int, int] | None:
        """(row group, row) of ``guid`` in the part file, or None: the order to ask in."""
        return self._part(url)[0].get(guid)

    def _row_group(self, url: str, group: int, has_sha: bool) -> pa.Table:
        if self._last is None or self._last[0] != (url, group):
            self._last = None  # let the previous row group go before the next one is read
            table = self._open(url).read_row_group(group, columns=["guid", "image"] + (["sha256"] if has_sha else []))
            self._last = ((url, group), table)
            self.row_groups_read += 1
        return self._last[1]

    def _forget(self, url: str) -> None:
        self._index.pop(url, None)
        if self._last is not None and self._last[0][0] == url:
            self._last = None

    def release(self) -> None:
        """Let the row group kept go (a batch's end: the worker may idle for long, and the
        dataset may be rewritten before its next job)."""
        self._last = None
        self._generation += 1

    def read(self, url: str, guids: Iterable[str]) -> dict[str, tuple[bytes, str | None]]:
        """guid -> (stored image bytes (the codec's JPEG/PNG), sha256 of the original file or
        None) for those of ``guids`` in the part file; absent guids are left out."""
        guids = list(guids)
        found = self._read_indexed(url, guids)
        # A row that is not where the index says, or (with an index from before the last release)
        # a guid the planner found in the file but the index lacks: the file changed since.
        if found is None or (self._index[url][2] < self._generation and len(found) < len(set(guids))):
            self._forget(url)
            found = self._read_indexed(url, guids)
            if found is None:
                raise pa.ArrowInvalid(f"{url}: its rows moved while it was being read")
        return found

    def _read_indexed(self, url: str, guids: list[str]) -> dict[str, tuple[bytes, str | None]] | None:
        positions, has_sha, _ = self._part(url)
        wanted: dict[int, list[tuple[int, str]]] = {}
        for guid in guids:
            if guid in positions:
                group, row = positions[guid]
                wanted.setdefault(group, []).append((row, guid))
        found: dict[str, tuple[bytes, str | None]] = {}
        for group in sorted(wanted):
            try:
                table = self._row_group(url, group, has_sha)
            except (IndexError, pa.ArrowInvalid):  # fewer row groups than indexed
                return None
            stored, images = table.column("guid"), table.column("image")
            shas = table.column("sha256") if has_sha else None
            for row, guid in wanted[group]:
                if row >= table.num_rows or stored[row].as_py() != guid:
                    return None
                found[guid] = (images[row].as_py(), shas[row].as_py() if shas is not None else None)
        return found
