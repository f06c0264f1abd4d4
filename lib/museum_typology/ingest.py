"""Ingest job: the catalogue CSVs and their images into a petastorm dataset plus a manifest.

extract (driver: read and check the CSVs, list the images) -> transform (Spark: read, decode and
encode each image where it lies) -> load (part files, petastorm metadata, manifest, summary,
committed atomically). Every input row gets exactly one manifest row.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import catalogue, image_source, images, petastorm_io, schema, storage
from .catalogue import CsvError, InputRow, decode_csv_bytes, parse_catalogue_csv, reject_duplicates
from .config import ConfigError, Settings, packaged_defaults, whole_number
from .image_source import ImageIndex, ImageReader, build_index, known_guids
from .log import get_logger
from .session import executor_errors
from .schema import (
    MANIFEST_SCHEMA,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_TRAIN_IMAGES,
    STATUS_NO_IMAGE,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_REJECTED,
    make_image_schema,
)
from .storage import S3Options

log = get_logger(__name__)

# (settings key of the file name, split, labelled?)
INPUT_FILES = (
    ("ingest.train_csv", SPLIT_TRAIN, True),
    ("ingest.test_csv", SPLIT_TEST, False),
    ("ingest.image_items_csv", SPLIT_TRAIN_IMAGES, True),
)


def default_output(work_dir: str) -> str:
    """WORK_DIR/ingest: where ingest writes unless told otherwise."""
    return storage.join(work_dir, "ingest")


def dataset_of(output: str) -> str:
    """The petastorm dataset of an ingest output: what train-image, clean's review page and the
    pipeline's scoring read (by default that of ``default_output``)."""
    return storage.join(output, "dataset")


# Bumped when decoding or the manifest changes what the same inputs give: an output written by
# another version is not reused. ``decoder_version`` also follows the code itself, so a change
# nobody remembered to mark is caught too.
INGEST_VERSION = 1


def _source_digest(digest, modules) -> None:
    import inspect

    for module in modules:
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):  # no source shipped (bytecode only): the version numbers alone
            log.warning("%s: no source to hash; ingest's run key follows INGEST_VERSION and Pillow only", module.__name__)
            digest.update(module.__name__.encode())


@functools.lru_cache(maxsize=1)
def pixel_version() -> str:
    """A hash of what turns an image's bytes into the stored pixels: INGEST_VERSION, Pillow's
    version and the source of ``images`` (decoding), ``schema`` and ``petastorm_io`` (storing).
    train-image's run key takes it from the dataset's summary: other pixels, another model."""
    import PIL

    digest = hashlib.sha256(f"{INGEST_VERSION}\t{PIL.__version__}\n".encode())
    _source_digest(digest, (images, schema, petastorm_io))
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def decoder_version() -> str:
    """``pixel_version`` plus the source of the modules that read the rows, index the images and
    build the manifest: an edit of any of them decodes again rather than keep pixels or a
    manifest the new code would not give. Computed when this module is imported (below), so it
    names the code that runs, not a file edited since."""
    digest = hashlib.sha256(pixel_version().encode())
    _source_digest(digest, (catalogue, image_source, sys.modules[__name__]))
    return digest.hexdigest()


class IngestError(RuntimeError):
    """The job failed: an executor decodes differently from the driver, or the counts do not
    reconcile (missing or malformed inputs are ``CsvError``s: user errors)."""


@dataclass(frozen=True)
class DecodeSettings:
    max_side: int
    max_pixels: int
    max_bytes: int
    codec: str
    jpeg_quality: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeSettings:
        """The [images] settings, checked: a codec other than jpeg or png failed in an executor
        ("foo", from OpenCV) or stored something else than the docs say ("jpg" went through
        OpenCV's own JPEG, ignoring jpeg_quality, while scoring took it for lossless)."""
        section = settings.section("images")
        if section["codec"] not in IMAGE_CODECS:
            raise ConfigError(f"images.codec = {section['codec']!r}: must be one of {', '.join(IMAGE_CODECS)}")
        return cls(
            whole_number("images.max_side", section["max_side"], 1),
            whole_number("images.max_pixels", section["max_pixels"], 1),
            whole_number("images.max_bytes", section["max_bytes"], 1),
            str(section["codec"]),
            whole_number("images.jpeg_quality", section["jpeg_quality"], 1, maximum=100),
        )


IMAGE_CODECS = ("jpeg", "png")  # images.codec: petastorm's CompressedImageCodec, as the docs promise


# ---------------------------------------------------------------- extract


def read_input_rows(data_dir: str, settings: Settings, s3: S3Options | None = None) -> list[InputRow]:
    """Read and check every input CSV that exists; the labelled file is required."""
    rows: list[InputRow] = []
    for key, split, labelled in INPUT_FILES:
        name = settings.get(key)
        url = storage.under(data_dir, name)
        if not storage.exists(url, s3):
            if split == SPLIT_TRAIN:
                raise CsvError(f"{url}: no such file (the labelled CSV is required; set --data or {key})")
            log.warning("%s: not found, skipped", url)
            continue
        text = decode_csv_bytes(storage.read_bytes(url, s3), name)
        # An unlabelled file (test.csv) may come without a typology column (the parser's default).
        parsed = parse_catalogue_csv(text, name, split, labelled=labelled)
        log.info("%s: %d rows", name, len(parsed))
        rows.extend(parsed)
    return reject_duplicates(rows)


def image_index(data_dir: str, settings: Settings, s3: S3Options | None = None, rows: Sequence[InputRow] = ()) -> ImageIndex:
    """The images beside the rows; ``rows`` tell a guid such as ``MS.A`` from ``MS`` + extension."""
    name = settings.get("ingest.images")
    location = storage.under(data_dir, name)
    if not storage.exists(location, s3):
        if name != packaged_defaults()["ingest"]["images"]:  # set on purpose: a typo must not quietly drop every image
            raise storage.StorageError(f"{location}: no such images archive or directory (ingest.images = {name!r})")
        log.warning("%s: no images archive or directory; every row is text-only", location)
        return ImageIndex(location, "none")
    index = build_index(location, s3, known_guids(rows))
    log.info("%s: %d images (%d refused as unsafe names)", location, sum(map(len, index.members.values())), len(index.unsafe))
    return index


# ---------------------------------------------------------------- transform (pure planning)


def plan(rows: list[InputRow], index: ImageIndex) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rows into (decode tasks, finished manifest rows). Pure.

    A row needs decoding when its guid has exactly one image file; every other row is finished
    here with its status and reason.
    """
    unsafe_by_guid = index.unsafe_by_guid  # a refused sidecar (``../u1.xmp``) does not quarantine u1
    tasks: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    for row in rows:
        record = manifest_record(row)
        if row.rejected_reason:
            finished.append({**record, "status": STATUS_REJECTED, "reason": row.rejected_reason})
            continue
        members = index.members.get(row.guid or "", [])
        if row.guid in unsafe_by_guid and not members:
            finished.append({**record, "status": STATUS_QUARANTINED, "reason": unsafe_by_guid[row.guid]})
        elif not members:
            finished.append({**record, "status": STATUS_NO_IMAGE, "reason": None})
        elif len(members) > 1:
            finished.append(
                {**record, "status": STATUS_QUARANTINED, "reason": f"ambiguous: {len(members)} image files for this guid: {', '.join(members)}"}
            )
        else:
            tasks.append({**record, "image_member": members[0], "description": row.description})
    return tasks, finished


def manifest_record(row: InputRow) -> dict[str, Any]:
    return {
        "guid": row.guid,
        "split": row.split,
        "source_file": row.source_file,
        "source_row": row.source_row,
        "typology": row.typology,
        "has_description": row.description is not None,
        "status": None,
        "reason": None,
        "image_member": None,
        "orig_width": None,
        "orig_height": None,
        "sha256": None,
        "image_bytes": None,
    }


def partition_of(guid: str, partitions: int) -> int:
    """Stable across runs and machines (Python's hash() is salted per process)."""
    return zlib.crc32(guid.encode("utf-8")) % partitions


def decode_task(task: dict[str, Any], raw: bytes | None, read_error: str | None, decode: DecodeSettings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One image task -> (manifest row, dataset row or None). Pure."""
    record = {k: v for k, v in task.items() if k in MANIFEST_SCHEMA.names}
    if raw is None:
        return {**record, "status": STATUS_QUARANTINED, "reason": read_error}, None
    result = images.decode_image(raw, decode.max_side, decode.max_pixels, decode.max_bytes)
    record.update(sha256=result.sha256, image_bytes=result.num_bytes, orig_width=result.orig_width, orig_height=result.orig_height)
    if not result.ok:
        return {**record, "status": STATUS_QUARANTINED, "reason": result.reason}, None
    dataset_row = {
        "guid": task["guid"],
        "split": task["split"],
        "typology": task["typology"],
        "description": task["description"],
        "image": result.pixels,
        "orig_width": result.orig_width,
        "orig_height": result.orig_height,
        "sha256": result.sha256,
    }
    return {**record, "status": STATUS_OK, "reason": None}, dataset_row


def check_pixel_version(where: str, driver_pixel_version: str) -> None:
    """On an executor, before it decodes: the summary records the driver's ``pixel_version``,
    which train-image's run key trusts to name the stored pixels, so an executor with other
    decoding code or another Pillow must not store pixels under it."""
    if pixel_version() != driver_pixel_version:
        import PIL

        raise IngestError(
            f"{where}: this executor's decoding code or Pillow ({PIL.__version__}) differs from the driver's "
            f"(pixel_version {pixel_version()[:12]} != {driver_pixel_version[:12]}); install the same museum-typology and Pillow on both"
        )


def _process_partition(
    partition: int,
    tasks: Iterator[dict[str, Any]],
    index_location: str,
    index_kind: str,
    dataset_url: str,
    decode: DecodeSettings,
    row_group_bytes: int,
    s3: S3Options | None,
    driver_pixel_version: str,
) -> Iterator[dict[str, Any]]:
    """Runs on an executor: read, decode and store one partition's images; yield manifest rows.

    Refuses to decode with other code or another Pillow than the driver's (``check_pixel_version``)."""
    check_pixel_version(f"ingest partition {partition}", driver_pixel_version)
    schema = make_image_schema(decode.codec, decode.jpeg_quality)
    writer = petastorm_io.PartWriter(storage.join(dataset_url, f"part-{partition:05d}.parquet"), schema, row_group_bytes, s3)
    results = []
    with ImageReader(index_location, index_kind, s3, decode.max_bytes) as reader:
        for task in sorted(tasks, key=lambda t: t["guid"]):
            raw, error = reader.read(task["image_member"])
            manifest_row, dataset_row = decode_task(task, raw, error, decode)
            if dataset_row is not None:
                writer.add(petastorm_io.encode_row(schema, dataset_row))
            results.append(manifest_row)
    writer.close()
    return iter(results)


# ---------------------------------------------------------------- the job


def run_key(rows: list[InputRow], index: ImageIndex, settings: Settings, partitions: int, decoder: str) -> str:
    """A hash of what the output is made from: every input row, the image files' fingerprint
    (names, sizes, CRCs or change times; not their bytes, which would cost a read of every
    image), the [images] and [ingest] settings, the partition count and ``decoder`` (``decoder_version()``)."""
    made_from = {
        "rows": [dataclasses.asdict(r) for r in rows],
        "images": [index.kind, index.fingerprint],
        "settings": {"images": settings.section("images"), "ingest": settings.section("ingest")},
        "partitions": partitions,
        "decoder": decoder,
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def reusable_output(output: str, key: str, s3: S3Options | None) -> dict[str, Any] | None:
    """The summary of a finished ingest output made from the same inputs and settings, else None."""
    if not storage.is_committed(output, s3):
        if storage.exists(storage.join(output, "summary.json"), s3):
            log.info("ingest: %s is unfinished (no _SUCCESS); decoding again", output)
        return None
    summary = storage.read_json_object(storage.join(output, "summary.json"), s3)
    if summary is not None and summary.get("run_key") == key:
        return summary
    log.info("ingest: %s was made from other rows, image files, settings or code (%s); decoding again", output, "its run key differs" if summary and summary.get("run_key") else "no run key: older code, or a damaged summary")
    return None


def run(spark, settings: Settings, data_dir: str, output: str, force: bool = False) -> dict[str, Any]:
    """Run the ingest job; returns the summary that is also written to ``OUTPUT/summary.json``.

    An output already made from the same input rows, image files and settings (``run_key``) is
    kept and its summary returned with ``reused`` (``force`` decodes again): re-running the
    pipeline on an unchanged catalogue does not decode every image again."""
    started = time.time()
    s3 = S3Options.from_settings(settings.section("s3"))
    storage.check_replaceable(output, ("manifest.parquet", "summary.json"), "ingest", s3)
    storage.clean_up_after_crashes(output, s3)  # as a run that writes would: a kept output is whole
    decode = DecodeSettings.from_settings(settings)
    rows = read_input_rows(data_dir, settings, s3)
    index = image_index(data_dir, settings, s3, rows)
    tasks, finished = plan(rows, index)

    partitions = int(settings.get("ingest.partitions")) or 4 * spark.sparkContext.defaultParallelism
    partitions = max(1, min(partitions, len(tasks) or 1))
    decoder, pixels = decoder_version(), pixel_version()  # once: the key, the summary and the executors' check agree
    key = run_key(rows, index, settings, partitions, decoder)
    previous = None if force else reusable_output(output, key, s3)
    if previous is not None:
        log.info("ingest: %s was made from these rows, image files and settings; reused (--force decodes again)", output)
        return {**previous, "reused": True}
    groups: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
    for task in tasks:
        groups[partition_of(task["guid"], partitions)].append(task)
    row_group_bytes = int(settings.get("ingest.row_group_size_mb")) * 1024 * 1024
    schema = make_image_schema(decode.codec, decode.jpeg_quality)

    with storage.atomic_directory(output, s3, job="ingest") as tmp:
        dataset_url = dataset_of(tmp)
        log.info("decoding %d images in %d Spark partitions", len(tasks), partitions)
        location, kind = index.location, index.kind
        with executor_errors(IngestError):
            decoded = (
                spark.sparkContext.parallelize(groups, partitions)
                .mapPartitionsWithIndex(
                    lambda i, it: _process_partition(i, (t for group in it for t in group), location, kind, dataset_url, decode, row_group_bytes, s3, pixels)
                )
                .collect()  # manifest rows only: small (no pixels)
            )
        if not any(r["status"] == STATUS_OK for r in decoded):
            # petastorm needs at least one Parquet file to hold its metadata.
            petastorm_io.write_empty_part(storage.join(dataset_url, "part-00000.parquet"), schema, s3)
        petastorm_io.write_metadata(dataset_url, schema, spark.sparkContext, s3)

        manifest = sorted(finished + decoded, key=lambda r: (r["split"], r["source_row"]))
        summary = reconcile(rows, manifest, dataset_url, s3)
        summary.update(
            output=output,
            data=data_dir,
            images=index.location,
            unsafe_archive_members=index.unsafe,
            orphan_images=sorted(set(index.members) - {r.guid for r in rows if r.guid}),
            seconds=round(time.time() - started, 2),
            run_key=key,
            decoder=decoder,
            pixel_decoder=pixels,
        )
        write_output_records(tmp, pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), summary, settings, s3)
    log.info(
        "ingest: %d input rows -> %d manifest rows (%s); %d images in the dataset; counts reconcile",
        summary["input_rows"],
        summary["manifest_rows"],
        ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items())),
        summary["dataset_rows"],
    )
    return summary


def write_output_records(output: str, manifest: pa.Table, summary: dict[str, Any], settings: Settings, s3: S3Options | None) -> None:
    """What an image dataset output holds beside ``dataset/`` (ingest's and crawl's alike): the
    manifest, one row per input row, the summary and the settings of the run."""
    storage.write_parquet(storage.join(output, "manifest.parquet"), manifest, s3)
    storage.write_json(storage.join(output, "summary.json"), summary, s3)
    storage.write_json(storage.join(output, "conf.json"), settings.values, s3)


def reconcile(rows: list[InputRow], manifest: list[dict[str, Any]], dataset_url: str, s3: S3Options | None) -> dict[str, Any]:
    """Check that every input row is in the manifest exactly once and that the dataset holds
    exactly the rows marked ok; raise ``IngestError`` otherwise."""
    status_counts = Counter(r["status"] for r in manifest)
    dataset_guids = petastorm_io.read_columns(dataset_url, ["guid"], s3).column("guid").to_pylist()
    ok_guids = sorted(r["guid"] for r in manifest if r["status"] == STATUS_OK)
    input_keys = Counter((r.source_file, r.source_row) for r in rows)
    manifest_keys = Counter((r["source_file"], r["source_row"]) for r in manifest)
    problems = []
    if input_keys != manifest_keys:
        problems.append(f"manifest rows {sum(manifest_keys.values())} != input rows {len(rows)} or not one-to-one")
    if sorted(dataset_guids) != ok_guids:
        problems.append(f"dataset holds {len(dataset_guids)} rows, manifest marks {len(ok_guids)} ok")
    if problems:
        raise IngestError("counts do not reconcile: " + "; ".join(problems))
    per_file = Counter(r.source_file for r in rows)
    return {
        "input_rows": len(rows),
        "input_rows_per_file": dict(per_file),
        "manifest_rows": len(manifest),
        "dataset_rows": len(dataset_guids),
        "status_counts": dict(status_counts),
        "reconciled": True,
    }


# Hashed now: the code as imported, which is what this process runs (see decoder_version).
decoder_version()
