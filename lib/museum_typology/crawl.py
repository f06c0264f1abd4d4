"""Crawl job: a URL CSV (``guid,description,typology,url``) into the same petastorm dataset and
manifest layout as ingest, fast, polite and resumable.

read + plan (driver, pure: check rows and URLs, one task per distinct URL, stable partitions by
a hash of the URL so that one host's URLs spread over every task) -> crawl (Spark
``mapPartitions``: per task a thread pool shares one ``fetcher.Fetcher`` and one robots.txt
cache; each thread fetches, then decodes with ``images.decode_image`` - the ingest code - and
encodes, a few threads at a time; the task's main thread streams rows into part files) -> assemble (driver: petastorm metadata, manifest, summary,
committed atomically with ``storage.atomic_directory``).

Resume. Work in progress lives in ``OUTPUT/_work/``: ``plan.json`` (input fingerprint and the
partition count), ``dataset/<chunk>.parquet`` and ``manifest/<chunk>.parquet``. A task commits a
chunk (``crawl.commit_rows`` URLs, or a row group's worth of bytes) by writing its part file and
then its manifest fragment; the fragment's appearance is the commit (an atomic rename locally, a
single PUT on S3). A part file without a fragment is debris. ``--resume`` skips every row that
is in a committed fragment, so after a kill at any point (kill -9 of the driver included) the
re-run fetches only what was not stored. Tasks also skip their own committed rows, so Spark's
task retries never duplicate. The final commit replaces ``OUTPUT`` whole (``_work`` with it);
a crash before that leaves the old output readable (``_SUCCESS``) and ``_work`` to resume from.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import posixpath
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import fetcher, images, petastorm_io, storage
from .catalogue import InputRow, decode_csv_bytes, parse_catalogue_csv, reject_duplicates
from .config import Settings, checked_numbers
from .fetcher import FetchResult, FetchSettings, Fetcher
from . import ingest
from .ingest import DecodeSettings, IngestError, partition_of, write_output_records
from .log import get_logger
from .robots import RobotsCache
from .session import executor_errors
from .schema import (
    CRAWL_MANIFEST_SCHEMA,
    SPLIT_CRAWL,
    STATUS_BAD_URL,
    STATUS_NOT_IMAGE,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_REJECTED,
    STATUS_ROBOTS_DISALLOWED,
    STATUS_TOO_LARGE,
    make_image_schema,
)
from .storage import S3Options

log = get_logger(__name__)

REQUIRED_COLUMNS = ("guid", "description", "typology", "url")
WORK_DIR = "_work"
PLAN_FILE = "plan.json"


class CrawlUsageError(storage.StorageError):
    """A crawl that the given options cannot run as asked (a user error: one line, exit code 2)."""


class CrawlError(IngestError):
    """The crawl cannot run or its counts do not reconcile. (An ``IngestError``, so the CLI
    reports it as a job failure, exit code 1.)"""


@dataclass(frozen=True)
class TaskSettings:
    """What a Spark task needs besides its URLs; picklable."""

    work_url: str
    fetch: FetchSettings
    decode: DecodeSettings
    commit_rows: int
    row_group_bytes: int
    decode_threads: int
    robots_txt: bool
    s3: S3Options | None
    pixel_decoder: str  # the driver's ingest.pixel_version: executors with other decoding code refuse
    max_crawl_delay_s: float = 60.0


def crawl_settings(settings: Settings) -> dict[str, Any]:
    """``[crawl]`` with its counts whole and in range and its times and rates non-negative (a
    timeout > 0), or a ConfigError naming the setting: a connect timeout of -1 failed in urllib3
    with a Spark trace, a total timeout of 0 made every row robots_disallowed, and 0 connections
    or a negative rate were quietly taken as 1 or "no limit"."""
    return checked_numbers(
        "crawl",
        settings.section("crawl"),
        ("retries", "max_redirects", "max_bytes", "host_connections", "threads_per_task", "decode_threads_per_task", "partitions", "urls_per_partition", "commit_rows"),
        {"retries": 0, "max_redirects": 0, "partitions": 0},
        {
            **{name: (0.0, math.inf, False, False) for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s", "plan_images_per_core_s")},
            **{name: (0.0, math.inf, True, False) for name in ("backoff_base_s", "backoff_max_s", "retry_after_max_s", "max_crawl_delay_s", "host_rate", "plan_latency_ms", "progress_interval_s")},
        },
    )


# ---------------------------------------------------------------- read and plan (pure)


def read_url_rows(input_url: str, settings: Settings, s3: S3Options | None = None) -> tuple[list[InputRow], str]:
    """Read and check the URL CSV; returns the rows and the sha256 of the file's bytes."""
    raw = storage.read_bytes(input_url, s3)
    name = posixpath.basename(input_url.rstrip("/"))
    text = decode_csv_bytes(raw, name)
    rows = parse_catalogue_csv(text, name, SPLIT_CRAWL, required=REQUIRED_COLUMNS, labelled=bool(settings.get("crawl.labelled")))
    return reject_duplicates(rows), hashlib.sha256(raw).hexdigest()


def manifest_record(row: InputRow) -> dict[str, Any]:
    """The ingest manifest record plus the crawl's own columns."""
    return {**ingest.manifest_record(row), "url": row.url, "http_status": None, "attempts": 0, "bytes": None}


def plan(rows: list[InputRow]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rows into (fetch tasks, finished manifest rows). Pure.

    One task per distinct resource (in first-seen order) carrying every row that names it, so a
    URL shared by several guids is fetched once, however it is spelled (``fetcher.canonical_url``:
    ``HTTP://Host:80/a.jpg#x`` is ``http://host/a.jpg``; the task fetches that spelling, and each
    row's manifest keeps its own). Rejected CSV rows and unusable URLs are finished here.
    """
    tasks: dict[str, dict[str, Any]] = {}
    finished: list[dict[str, Any]] = []
    for row in rows:
        record = manifest_record(row)
        if row.rejected_reason:
            finished.append({**record, "status": STATUS_REJECTED, "reason": row.rejected_reason})
            continue
        problem = fetcher.url_problem(row.url)
        if problem:
            finished.append({**record, "status": STATUS_BAD_URL, "reason": problem})
            continue
        url = fetcher.canonical_url(row.url)
        task = tasks.setdefault(url, {"url": url, "rows": []})
        task["rows"].append({**record, "description": row.description})
    return list(tasks.values()), finished


def auto_partitions(unique_urls: int, urls_per_partition: int, parallelism: int) -> int:
    """Enough partitions that each holds about ``urls_per_partition`` URLs (a failed task
    redoes little, progress is fine-grained), and at least one per core. Not more for a small
    crawl (a nightly delta of a few hundred URLs): every task pays a start (worker imports, the
    first requests' latency with no decoding to overlap, the drain at its end), so one wave of
    tasks finishes sooner than two."""
    wanted = -(-unique_urls // max(1, urls_per_partition))
    return max(1, min(max(wanted, parallelism), unique_urls or 1))


def group_tasks(tasks: Iterable[dict[str, Any]], partitions: int) -> dict[int, list[dict[str, Any]]]:
    """Stable: a URL's partition is a crc32 of the URL, so a resumed run finds the same split."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks:
        groups[partition_of(task["url"], partitions)].append(task)
    return dict(groups)


def decode_failure_status(reason: str) -> str:
    """The manifest status of a body that ``images.decode_image`` refused. Pure."""
    if reason.startswith(("empty file", "not an image", "unsupported image format")):
        return STATUS_NOT_IMAGE
    if reason.startswith("file too large"):
        return STATUS_TOO_LARGE
    return STATUS_QUARANTINED  # corrupt / truncated, decompression bomb, odd dimensions


def manifest_row(row: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A task row (which also carries its description) as a manifest row: only the manifest's
    columns, with ``fields`` set. Pure."""
    return {**{k: v for k, v in row.items() if k in CRAWL_MANIFEST_SCHEMA.names}, **fields}


def outcome(task: dict[str, Any], fetched: FetchResult, decode: DecodeSettings, schema) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One URL's fetch result -> (manifest rows, encoded dataset rows), one each per guid that
    names the URL. Decodes with the ingest code. Pure apart from CPU."""
    fetch_fields = {
        "http_status": fetched.http_status,
        "attempts": fetched.attempts,
        "bytes": fetched.received_bytes if fetched.attempts else None,
        "image_member": fetched.final_url,
    }
    manifest_rows = [manifest_row(row, **fetch_fields) for row in task["rows"]]
    if not fetched.ok:
        return [{**r, "status": fetched.status, "reason": fetched.reason} for r in manifest_rows], []
    result = images.decode_image(fetched.body, decode.max_side, decode.max_pixels, decode.max_bytes)
    image_fields = {"sha256": result.sha256, "image_bytes": result.num_bytes, "orig_width": result.orig_width, "orig_height": result.orig_height}
    if not result.ok:
        status = decode_failure_status(result.reason)
        return [{**r, **image_fields, "status": status, "reason": result.reason} for r in manifest_rows], []
    dataset_rows: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for row in task["rows"]:
        scalars = {"guid": row["guid"], "split": row["split"], "typology": row["typology"], "description": row["description"]}
        if first is None:  # encode the image once, however many guids share the URL
            first = petastorm_io.encode_row(
                schema,
                {**scalars, "image": result.pixels, "orig_width": result.orig_width, "orig_height": result.orig_height, "sha256": result.sha256},
            )
            dataset_rows.append(first)
        else:
            dataset_rows.append({**first, **scalars})
    return [{**r, **image_fields, "status": STATUS_OK, "reason": None} for r in manifest_rows], dataset_rows


# ---------------------------------------------------------------- work directory


def _work_paths(work_url: str) -> tuple[str, str]:
    return storage.join(work_url, "dataset"), storage.join(work_url, "manifest")


def _is_fragment(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet") and ".tmp-" not in name


def list_fragments(work_url: str, s3: S3Options | None, prefix: str = "part-") -> list[str]:
    """Names of the committed manifest fragments (each one a committed chunk)."""
    manifest_url = _work_paths(work_url)[1]
    if not storage.exists(manifest_url, s3):
        return []
    return [n for n in storage.list_files(manifest_url, s3) if _is_fragment(n) and n.startswith(prefix)]


def read_fragment(work_url: str, name: str, s3: S3Options | None, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(storage.join(_work_paths(work_url)[1], name), s3)
    return pq.read_table(path, filesystem=fs, columns=columns)


def _clean_debris(work_url: str, s3: S3Options | None) -> int:
    """Delete part files whose chunk never committed and half-written fragments. Driver only,
    before any task runs."""
    dataset_url, manifest_url = _work_paths(work_url)
    committed = set(list_fragments(work_url, s3))
    removed = 0
    for directory, keep in ((dataset_url, committed), (manifest_url, committed)):
        if not storage.exists(directory, s3):
            continue
        fs, path = storage.filesystem(directory, s3)
        for name in storage.list_files(directory, s3):
            if name not in keep:
                fs.delete_file(posixpath.join(path, name))
                removed += 1
    return removed


# ---------------------------------------------------------------- the Spark task


class _Chunks:
    """Streams one task's results into committed chunks: a part file, then its fragment."""

    def __init__(self, partition: int, task: TaskSettings, schema):
        self.partition, self.task, self.schema = partition, task, schema
        self.dataset_url, self.manifest_url = _work_paths(task.work_url)
        self.sequence = 0
        self.committed_rows = 0
        self._open()

    def _open(self) -> None:
        self.stem = f"part-{self.partition:05d}-{self.sequence:05d}-{uuid.uuid4().hex[:8]}"
        self.writer = petastorm_io.PartWriter(storage.join(self.dataset_url, f"{self.stem}.parquet"), self.schema, self.task.row_group_bytes, self.task.s3)
        self.manifest: list[dict[str, Any]] = []
        self.urls = 0
        self.bytes = 0

    def add(self, manifest_rows: list[dict[str, Any]], dataset_rows: list[dict[str, Any]]) -> None:
        for row in dataset_rows:
            self.writer.add(row)
            self.bytes += len(row["image"])
        self.manifest.extend(manifest_rows)
        self.urls += 1
        if self.urls >= self.task.commit_rows or self.bytes >= self.task.row_group_bytes:
            self.commit()

    def commit(self) -> None:
        if not self.manifest:
            return
        self.writer.close()  # the part file (absent when no row of the chunk is ok)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.manifest, schema=CRAWL_MANIFEST_SCHEMA), buffer)
        # The commit point: an atomic rename locally, a single PUT on S3.
        storage.write_bytes(storage.join(self.manifest_url, f"{self.stem}.parquet"), buffer.getvalue(), self.task.s3)
        self.committed_rows += len(self.manifest)
        self.sequence += 1
        self._open()


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], limit: int) -> Iterator[Any]:
    """``pool.map`` with at most ``limit`` items in flight, yielding in completion order (so
    nothing piles up behind one slow URL)."""
    pending: set[Future] = set()
    for item in items:
        pending.add(pool.submit(fn, item))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()


def crawl_partition(partition: int, tasks: list[dict[str, Any]], task: TaskSettings) -> dict[str, Any]:
    """Runs on an executor: fetch, decode, encode and store one partition's URLs in chunks."""
    ingest.check_pixel_version(f"crawl partition {partition}", task.pixel_decoder)
    started = time.time()
    done: set[int] = set()
    for name in list_fragments(task.work_url, task.s3, prefix=f"part-{partition:05d}-"):
        done.update(read_fragment(task.work_url, name, task.s3, ["source_row"]).column("source_row").to_pylist())
    todo = [t for t in tasks if not all(r["source_row"] in done for r in t["rows"])]
    schema = make_image_schema(task.decode.codec, task.decode.jpeg_quality)
    chunks = _Chunks(partition, task, schema)
    # Every thread fetches, but only a few decode at once: the task has a core or two, and
    # dozens of threads decoding side by side only add switching and cache misses (about 8% more
    # CPU per image measured with 32).
    decode_slots = threading.BoundedSemaphore(task.decode_threads)

    def work(url_task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        refusal = robots_rules.check(url_task["url"]) if robots_rules is not None else None
        if refusal:
            return [manifest_row(r, status=STATUS_ROBOTS_DISALLOWED, reason=refusal) for r in url_task["rows"]], [], 0
        fetched = None
        try:
            fetched = crawler.fetch(url_task["url"], check_redirect=robots_rules.check if robots_rules is not None else None)
            with decode_slots:
                manifest_rows, dataset_rows = outcome(url_task, fetched, task.decode, schema)
        except Exception as exc:  # noqa: BLE001 - a bug on one URL (a server's odd header) must not lose the partition's rows
            reason = f"crawler error: {type(exc).__name__}: {exc}"
            attempts = fetched.attempts if fetched is not None else 0
            manifest_rows = [manifest_row(r, status=STATUS_QUARANTINED, reason=reason, attempts=attempts) for r in url_task["rows"]]
            dataset_rows = []
        return manifest_rows, dataset_rows, fetched.received_bytes if fetched is not None else 0

    received = 0
    with Fetcher(task.fetch) as crawler, ThreadPoolExecutor(task.fetch.threads, thread_name_prefix=f"crawl-{partition}") as pool:
        robots_rules = RobotsCache(crawler.fetch, task.fetch.user_agent, on_crawl_delay=crawler.slow_host, max_crawl_delay_s=task.max_crawl_delay_s) if task.robots_txt else None
        for manifest_rows, dataset_rows, nbytes in _bounded_map(pool, work, todo, 2 * task.fetch.threads):
            chunks.add(manifest_rows, dataset_rows)
            received += nbytes
        chunks.commit()
        requests = crawler.requests
    return {
        "partition": partition,
        "urls": len(todo),
        "skipped_urls": len(tasks) - len(todo),
        "rows": chunks.committed_rows,
        "requests": requests,
        "bytes": received,
        "chunks": chunks.sequence,
        "seconds": round(time.time() - started, 2),
    }


# ---------------------------------------------------------------- progress (driver)


class Progress:
    """Polls the committed fragments and logs done / failed / rate / ETA every few seconds."""

    def __init__(self, work_url: str, s3: S3Options | None, total: int, already: int, interval_s: float):
        self.work_url, self.s3, self.total, self.already, self.interval_s = work_url, s3, total, already, interval_s
        self.seen: set[str] = set()
        self.done = 0
        self.failed = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crawl-progress", daemon=True)

    def __enter__(self) -> Progress:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> None:
        for name in list_fragments(self.work_url, self.s3):
            if name in self.seen:
                continue
            with contextlib.suppress(Exception):
                statuses = read_fragment(self.work_url, name, self.s3, ["status"]).column("status").to_pylist()
                self.seen.add(name)
                self.done += len(statuses)
                self.failed += sum(s != STATUS_OK for s in statuses)

    def line(self) -> str:
        elapsed = max(1e-6, time.time() - self.started)
        new = max(0, self.done - self.already)
        rate = new / elapsed
        left = self.total - self.done
        eta = f"{left / rate / 60:.1f} min" if rate > 0 else "?"
        return f"crawl: {self.done}/{self.total} rows done ({self.failed} failed), {rate:.1f} rows/s this run, ETA {eta}"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()
            log.info(self.line())


# ---------------------------------------------------------------- the job


def _fingerprint(csv_sha256: str, settings: Settings) -> str:
    relevant = {"csv": csv_sha256, "images": settings.section("images"), "labelled": settings.get("crawl.labelled")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _read_json(url: str, s3: S3Options | None) -> dict[str, Any] | None:
    if not storage.exists(url, s3):
        return None
    return json.loads(storage.read_bytes(url, s3))


def prepare_work(output: str, fingerprint: str, partitions: Callable[[], int], resume: bool, s3: S3Options | None, restart: bool = False) -> tuple[str, int, bool]:
    """Set up ``OUTPUT/_work``; returns (work url, partitions, resumed?). An unfinished crawl
    there with stored chunks is resumed (``resume``), discarded (``restart``), or left alone
    with an error: a forgotten --resume must not throw away hours of fetching."""
    work_url = storage.join(output, WORK_DIR)
    state = _read_json(storage.join(work_url, PLAN_FILE), s3)
    if state is not None and not resume and not restart:
        stored = len(list_fragments(work_url, s3))
        if stored and state.get("fingerprint") != fingerprint:
            raise CrawlUsageError(
                f"{work_url}: an unfinished crawl of another input CSV or images settings has {stored} chunk(s) stored; "
                "pass --restart to discard them and crawl this input"
            )
        if stored:
            raise CrawlUsageError(
                f"{work_url}: an unfinished crawl has {stored} chunk(s) stored; pass --resume to finish it "
                "(fetching only what is not stored), or --restart to discard them and start over"
            )
    if resume and state is not None:
        if state.get("fingerprint") != fingerprint:
            raise CrawlUsageError(
                f"--resume: {work_url} was started from a different input CSV or images settings; "
                "pass --restart instead to discard it and start over"
            )
        removed = _clean_debris(work_url, s3)
        if removed:
            log.info("resume: removed %d uncommitted files of the killed run", removed)
        return work_url, int(state["partitions"]), True
    if resume:
        log.warning("--resume: no unfinished crawl in %s; starting from the beginning", output)
    elif state is not None:
        log.warning("%s: discarding an unfinished crawl%s", work_url, " (--restart)" if restart else " that had stored nothing")
    storage.delete_dir(work_url, s3)
    count = partitions()
    storage.write_bytes(storage.join(work_url, PLAN_FILE), json.dumps({"fingerprint": fingerprint, "partitions": count}).encode(), s3)
    return work_url, count, False


def record_pixel_decoder(work_url: str, version: str, decoding: bool, stored_before: bool, s3: S3Options | None) -> list[str]:
    """The ``ingest.pixel_version``s that decoded the work directory's chunks, in the order they
    started, kept in its plan file; ``version`` is added before a run that will decode
    (``decoding``), so a run killed after storing chunks has recorded it. A crawl resumed after an
    upgrade of Pillow or of the decoding code holds pixels of both: the summary then names the
    mix, and train-image, whose run key includes it, trains again rather than take the pixels for
    the old ones. Chunks stored (``stored_before``) under a plan file written before versions
    were recorded count as ``"unrecorded"``."""
    plan_url = storage.join(work_url, PLAN_FILE)
    state = _read_json(plan_url, s3) or {}
    decoders = list(state.get("pixel_decoders", ["unrecorded"] if stored_before else []))
    if decoding and version not in decoders:
        if decoders:
            log.warning("crawl: the chunks stored so far were decoded by other code (%s); this run decodes with %s, so the dataset will hold pixels of both", ", ".join(d[:12] for d in decoders), version[:12])
        decoders.append(version)
        storage.write_bytes(plan_url, json.dumps({**state, "pixel_decoders": decoders}).encode(), s3)
    return decoders


def summary_pixel_decoder(decoders: list[str], current: str) -> str:
    """What the summary's ``pixel_decoder`` names: the one version that decoded every chunk (the
    current one when nothing was decoded), else a hash of the mix. Pure."""
    if len(decoders) == 1:
        return decoders[0]
    if not decoders:
        return current
    return "mixed-" + hashlib.sha256("\n".join(decoders).encode()).hexdigest()


def estimate_duration(urls_per_host: Mapping[str, int], host_connections: int, host_rate: float, latency_s: float, cores: int, images_per_core_s: float) -> dict[str, Any]:
    """How long a crawl should take, from first principles. Pure.

    Three limits, the slowest one binds: each host serves at most ``host_connections / latency``
    requests a second (fewer under ``host_rate``), and hosts are crawled side by side; the
    executors decode at most ``cores * images_per_core_s`` images a second. The per-core rate is
    what ``benchmarks/crawl.py`` measures for the whole crawler (fetch, decode, encode, store)."""
    per_host_rate = host_connections / max(latency_s, 1e-3)
    if host_rate > 0:
        per_host_rate = min(per_host_rate, host_rate)
    total = sum(urls_per_host.values())
    host_seconds = max(urls_per_host.values(), default=0) / per_host_rate
    cpu_rate = max(1, cores) * images_per_core_s
    cpu_seconds = total / cpu_rate
    seconds = max(host_seconds, cpu_seconds)
    return {
        "seconds": round(seconds),
        "hours": round(seconds / 3600, 2),
        "images_per_s": round(total / seconds, 1) if seconds else None,
        "bound_by": "the image server (connections / latency per host)" if host_seconds >= cpu_seconds else "CPU (decode and encode on the executors)",
        "assumed": {"latency_ms": round(latency_s * 1000), "images_per_core_s": images_per_core_s, "cores": cores},
    }


def describe_plan(settings: Settings, input_url: str, parallelism: int) -> dict[str, Any]:
    """What a crawl of ``input_url`` would do (no request is made): rows, distinct URLs, hosts,
    partitions, chunks, the per-task limits and an estimate of the duration (``estimate_duration``
    with the ``crawl.plan_*`` assumptions). For ``museum-typology crawl --plan-only``."""
    s3 = S3Options.from_settings(settings.section("s3"))
    crawl_conf = crawl_settings(settings)
    rows, _ = read_url_rows(input_url, settings, s3)
    tasks, finished = plan(rows)
    partitions = int(crawl_conf["partitions"]) or auto_partitions(len(tasks), int(crawl_conf["urls_per_partition"]), parallelism)
    sizes = sorted(len(g) for g in group_tasks(tasks, partitions).values()) or [0]
    commit_rows = max(1, int(crawl_conf["commit_rows"]))
    fetch = FetchSettings.from_settings(crawl_conf, int(crawl_conf["max_bytes"]), parallel_tasks=min(parallelism, partitions))
    urls_per_host = Counter(fetcher.host_key(t["url"]) for t in tasks)
    estimate = estimate_duration(
        urls_per_host, int(crawl_conf["host_connections"]), float(crawl_conf["host_rate"]), float(crawl_conf["plan_latency_ms"]) / 1000,
        min(parallelism, partitions), float(crawl_conf["plan_images_per_core_s"]),
    )
    return {
        "input_rows": len(rows),
        "distinct_urls": len(tasks),
        "rows_sharing_a_url": sum(len(t["rows"]) for t in tasks) - len(tasks),
        "finished_at_planning": dict(Counter(r["status"] for r in finished)),
        "hosts": len(urls_per_host),
        "partitions": partitions,
        "urls_per_partition_min_median_max": [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
        "chunks_about": sum(-(-n // commit_rows) for n in sizes),
        "tasks_at_once": min(parallelism, partitions),
        "robots_txt": bool(settings.get("crawl.robots_txt")),
        "per_task": {"threads": fetch.threads, "decoding_at_once": int(settings.get("crawl.decode_threads_per_task")), "connections_per_host": fetch.host_connections, "requests_per_s_per_host": fetch.host_rate or None},
        "estimate": estimate,
    }


def run(spark, settings: Settings, input_url: str, output: str, resume: bool = False, restart: bool = False) -> dict[str, Any]:
    """Run the crawl; returns the summary also written to ``OUTPUT/summary.json``. ``resume``
    finishes an unfinished crawl in ``output``, ``restart`` discards it (without either, one with
    stored chunks is an error)."""
    if resume and restart:
        raise CrawlUsageError("--resume and --restart: choose one")
    started = time.time()
    s3 = S3Options.from_settings(settings.section("s3"))
    storage.check_replaceable(output, ("manifest.parquet", "summary.json", WORK_DIR), "crawl", s3)  # _work/: an interrupted crawl
    # Before the unfinished crawl is looked for: a kill between a local commit's two renames left
    # the output, its _work/ and stored chunks inside, set aside; it is put back here.
    storage.clean_up_after_crashes(output, s3)
    crawl_conf = crawl_settings(settings)
    decode = DecodeSettings.from_settings(settings)
    rows, csv_sha256 = read_url_rows(input_url, settings, s3)
    tasks, finished = plan(rows)
    fingerprint = _fingerprint(csv_sha256, settings)

    if resume and storage.is_committed(output, s3) and not storage.exists(storage.join(output, WORK_DIR, PLAN_FILE), s3):
        previous = _read_json(storage.join(output, "summary.json"), s3) or {}
        if previous.get("fingerprint") == fingerprint:
            log.info("--resume: %s is already complete for this input; nothing to do", output)
            # this run fetched nothing: the summary's "this run" figures are the finishing run's
            nothing = {"resumed": False, "rows_stored_before_this_run": previous.get("dataset_rows", 0), "urls_fetched_this_run": 0,
                       "requests_this_run": 0, "bytes_this_run": 0, "seconds_fetching": 0.0, "urls_per_second": 0.0}
            return {**previous, "already_complete": True, **nothing}

    parallelism = spark.sparkContext.defaultParallelism
    configured = int(crawl_conf["partitions"])
    work_url, partitions, resumed = prepare_work(
        output,
        fingerprint,
        lambda: configured or auto_partitions(len(tasks), int(crawl_conf["urls_per_partition"]), parallelism),
        resume,
        s3,
        restart,
    )
    done_before: set[int] = set()
    if resumed:
        stored = {name: read_fragment(work_url, name, s3, ["source_row", "status"]).to_pylist() for name in list_fragments(work_url, s3)}
        orphans = _delete_orphans(work_url, stored, s3)  # their rows are fetched again by this run
        done_before = {r["source_row"] for name, rows in stored.items() if name not in orphans for r in rows}
    groups = group_tasks(tasks, partitions)
    todo_groups = [
        (pid, todo)
        for pid, group in sorted(groups.items())
        if (todo := [t for t in group if not all(r["source_row"] in done_before for r in t["rows"])])
    ]
    urls_todo = sum(len(g) for _, g in todo_groups)
    rows_to_fetch = sum(len(t["rows"]) for t in tasks)
    task_settings = TaskSettings(
        work_url=work_url,
        fetch=FetchSettings.from_settings(crawl_conf, int(crawl_conf["max_bytes"]), parallel_tasks=min(parallelism, max(1, len(todo_groups)))),
        decode=decode,
        commit_rows=max(1, int(crawl_conf["commit_rows"])),
        decode_threads=max(1, int(crawl_conf["decode_threads_per_task"])),
        robots_txt=bool(crawl_conf["robots_txt"]),
        max_crawl_delay_s=float(crawl_conf["max_crawl_delay_s"]),
        row_group_bytes=int(settings.get("ingest.row_group_size_mb")) * 1024 * 1024,
        s3=s3,
        pixel_decoder=ingest.pixel_version(),
    )
    decoders = record_pixel_decoder(work_url, task_settings.pixel_decoder, bool(todo_groups), bool(done_before), s3)
    log.info(
        "crawl: %d input rows, %d distinct URLs to fetch (%d rows share a URL), %d finished at planning; "
        "%d partitions, %d URLs left in %d of them%s; per task %d threads, %d connections per host",
        len(rows), len(tasks), rows_to_fetch - len(tasks), len(finished), partitions, urls_todo, len(todo_groups),
        f" (resuming: {len(done_before)} rows already stored)" if resumed else "",
        task_settings.fetch.threads, task_settings.fetch.host_connections,
    )
    if task_settings.fetch.parallel_tasks > int(crawl_conf["host_connections"]):
        log.warning(
            "crawl: %d tasks run at once but crawl.host_connections = %s: each task needs one connection, so up to %d may be open to one host; use fewer partitions or executors to keep the limit",
            task_settings.fetch.parallel_tasks, crawl_conf["host_connections"], task_settings.fetch.parallel_tasks,
        )

    stats: list[dict[str, Any]] = []
    if todo_groups:
        with Progress(work_url, s3, rows_to_fetch, len(done_before), float(crawl_conf["progress_interval_s"])) as progress:
            progress.poll()
            progress.started = time.time()
            with executor_errors(IngestError):  # an executor decoding otherwise than the driver
                stats = (
                    spark.sparkContext.parallelize(todo_groups, len(todo_groups))
                    .mapPartitions(lambda it: [crawl_partition(pid, group, task_settings) for pid, group in it])
                    .collect()  # per-partition counters only: no pixels reach the driver
                )
            progress.poll()
            log.info(progress.line())

    fetched_urls = sum(st["urls"] for st in stats)
    seconds = time.time() - started
    run_info = {
        "input": input_url,
        "fingerprint": fingerprint,
        "distinct_urls": len(tasks),
        "rows_sharing_a_url": rows_to_fetch - len(tasks),
        "partitions": partitions,
        "resumed": resumed,
        "rows_stored_before_this_run": len(done_before),
        "urls_fetched_this_run": fetched_urls,
        "requests_this_run": sum(st["requests"] for st in stats),
        "bytes_this_run": sum(st["bytes"] for st in stats),
        "seconds_fetching": round(seconds, 2),
        "urls_per_second": round(fetched_urls / max(1e-6, seconds), 2),
        # train-image's run key reads it (as from ingest's summary): other pixels, another model.
        "pixel_decoder": summary_pixel_decoder(decoders, task_settings.pixel_decoder),
        "pixel_decoders": decoders,
    }
    summary = assemble(spark, settings, rows, finished, work_url, output, s3, run_info)
    log.info(
        "crawl: %d input rows -> %d manifest rows (%s); %d images in the dataset; %d URLs fetched this run in %.1f s (%.1f/s); counts reconcile",
        summary["input_rows"], summary["manifest_rows"],
        ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items())),
        summary["dataset_rows"], summary["urls_fetched_this_run"], summary["seconds_fetching"], summary["urls_per_second"],
    )
    return summary


def assemble(
    spark, settings: Settings, rows: list[InputRow], finished: list[dict[str, Any]], work_url: str, output: str, s3: S3Options | None, run_info: dict[str, Any]
) -> dict[str, Any]:
    """Build the final output from the committed chunks and commit it atomically."""
    decode = DecodeSettings.from_settings(settings)
    schema = make_image_schema(decode.codec, decode.jpeg_quality)
    dataset_src, _ = _work_paths(work_url)
    committed = {name: read_fragment(work_url, name, s3).to_pylist() for name in list_fragments(work_url, s3)}
    # Listed once, for the orphan check and the copy below, and after the fragments: a chunk writes
    # its part file before it commits its fragment, so every fragment read has its part listed.
    stored = _part_files(work_url, s3)
    loaded = _without_orphans(work_url, committed, finished, s3, stored)
    fragments = list(loaded)
    crawled, drop = _deduplicate(list(loaded.items()))
    manifest = sorted(finished + crawled, key=lambda r: r["source_row"])
    with storage.atomic_directory(output, s3, job="crawl") as tmp:
        dataset_url = storage.join(tmp, "dataset")
        parts = 0
        for name in fragments:
            if name not in stored:
                continue  # a chunk with no ok row has no part file
            source = storage.join(dataset_src, name)
            if name in drop:
                parts += _copy_without(source, storage.join(dataset_url, name), drop[name], s3)
            else:
                _link_or_copy(source, storage.join(dataset_url, name), s3)
                parts += 1
        if parts == 0:
            petastorm_io.write_empty_part(storage.join(dataset_url, "part-00000.parquet"), schema, s3)
        petastorm_io.write_metadata(dataset_url, schema, spark.sparkContext, s3)
        summary = reconcile(rows, manifest, dataset_url, s3)
        summary.update(output=output, chunks=len(fragments), **run_info)
        write_output_records(tmp, pa.Table.from_pylist(manifest, schema=CRAWL_MANIFEST_SCHEMA), summary, settings, s3)
    return summary


def _delete_orphans(work_url: str, fragments: dict[str, list[dict[str, Any]]], s3: S3Options | None, parts: set[str] | None = None) -> list[str]:
    """Delete the orphans among ``fragments`` (name -> rows) and return their names: fragments
    marking rows ok whose part file is not there. Only an executor of a killed run, still working
    beside the resumed one, leaves one (the resumed driver's clean-up deleted the part file it was
    writing, then it committed the fragment); its rows, taken for stored, would be in no dataset."""
    _, manifest_src = _work_paths(work_url)
    parts = _part_files(work_url, s3) if parts is None else parts
    orphans = [name for name, rows in fragments.items() if name not in parts and any(r["status"] == STATUS_OK for r in rows)]
    if orphans:
        fs, path = storage.filesystem(manifest_src, s3)
        for name in orphans:
            fs.delete_file(posixpath.join(path, name))
        log.warning("%d chunk(s) committed by a killed run's executors had lost their part files; deleted, their rows are fetched again", len(orphans))
    return orphans


def _part_files(work_url: str, s3: S3Options | None) -> set[str]:
    """Names of the part files the chunks wrote so far (one listing: on S3 an existence check per
    chunk would be a request each)."""
    dataset_src, _ = _work_paths(work_url)
    return set(storage.list_files(dataset_src, s3)) if storage.exists(dataset_src, s3) else set()


def _without_orphans(work_url: str, loaded: dict[str, list[dict[str, Any]]], finished: list[dict[str, Any]], s3: S3Options | None, parts: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The committed chunks less the orphans (``_delete_orphans``). A resumed run deletes those
    it finds before fetching and fetches their rows; one committed while it ran holds rows this
    run fetched too. Rows in an orphan and in no other chunk would mean a bug: the job stops, and
    a --resume fetches them."""
    orphans = _delete_orphans(work_url, loaded, s3, parts)
    if not orphans:
        return loaded
    kept = {name: rows for name, rows in loaded.items() if name not in orphans}
    elsewhere = {r["source_row"] for rows in kept.values() for r in rows} | {r["source_row"] for r in finished}
    lost = {r["source_row"] for name in orphans for r in loaded[name]} - elsewhere
    if lost:
        raise CrawlError(f"{len(lost)} rows were in chunks a killed run's executors committed without their part files (deleted now); run the crawl with --resume again to fetch them")
    return kept


def _deduplicate(fragments: list[tuple[str, list[dict[str, Any]]]]) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """Keep each input row once. Normally every row is in one chunk; a row can be committed
    twice only when executors of a killed run kept working beside the resumed one. The first
    chunk (by name) wins; returns the kept manifest rows and, per chunk, the guids whose
    dataset rows must be left out."""
    seen: set[int] = set()
    kept: list[dict[str, Any]] = []
    drop: dict[str, set[str]] = {}
    for name, rows in sorted(fragments):
        for row in rows:
            if row["source_row"] in seen:
                if row["status"] == STATUS_OK:
                    drop.setdefault(name, set()).add(row["guid"])
                else:
                    drop.setdefault(name, set())
                continue
            seen.add(row["source_row"])
            kept.append(row)
    if drop:
        log.warning("%d chunks hold rows committed twice (a killed run's executors kept running); kept the first copy", len(drop))
    return kept, drop


def _copy_without(source: str, target: str, guids: set[str], s3: S3Options | None) -> int:
    """Rewrite a part file without the dataset rows of ``guids`` (encoded bytes, no decoding)."""
    fs, source_path = storage.filesystem(source, s3)
    table = pq.read_table(source_path, filesystem=fs)
    keep = [g not in guids for g in table.column("guid").to_pylist()]
    table = table.filter(pa.array(keep))
    if table.num_rows == 0:
        return 0
    storage.write_parquet(target, table, s3)
    return 1


def _link_or_copy(source: str, target: str, s3: S3Options | None) -> None:
    """A hard link locally (free, and the work copy stays intact until the commit replaces it);
    a server-side copy on S3."""
    fs, target_path = storage.filesystem(target, s3)
    fs.create_dir(posixpath.dirname(target_path), recursive=True)
    _, source_path = storage.filesystem(source, s3)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            os.link(source_path, target_path)
            return
        except OSError:
            pass
    fs.copy_file(source_path, target_path)


def reconcile(rows: list[InputRow], manifest: list[dict[str, Any]], dataset_url: str, s3: S3Options | None) -> dict[str, Any]:
    """Every input row exactly once in the manifest; the dataset holds exactly the ok rows."""
    status_counts = Counter(r["status"] for r in manifest)
    dataset_guids = petastorm_io.read_columns(dataset_url, ["guid"], s3).column("guid").to_pylist()
    ok_guids = sorted(r["guid"] for r in manifest if r["status"] == STATUS_OK)
    input_keys = Counter(r.source_row for r in rows)
    manifest_keys = Counter(r["source_row"] for r in manifest)
    problems = []
    if input_keys != manifest_keys:
        extra = sum((manifest_keys - input_keys).values())
        missing = sum((input_keys - manifest_keys).values())
        problems.append(f"manifest rows {len(manifest)} != input rows {len(rows)} ({missing} missing, {extra} extra)")
    if sorted(dataset_guids) != ok_guids:
        problems.append(f"dataset holds {len(dataset_guids)} rows, manifest marks {len(ok_guids)} ok")
    if problems:
        raise CrawlError("counts do not reconcile: " + "; ".join(problems))
    return {
        "input_rows": len(rows),
        "manifest_rows": len(manifest),
        "dataset_rows": len(dataset_guids),
        "status_counts": dict(sorted(status_counts.items())),
        "reconciled": True,
    }
