"""Model bundles: versioned directories ``models/<kind>/<version>/`` and the ``latest`` pointer.

``<version>`` is the UTC time plus a short content hash, so versions sort by age and two runs on
the same data and settings are recognisable. A training job records its full run key (a hash
of its data and settings) in the bundle's ``metrics.json``; a re-run with the same key reuses
the bundle instead of training again (``reusable_bundle``).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .log import get_logger
from .storage import S3Options

log = get_logger(__name__)

LATEST = "latest"


# Parquet metadata key of an out-of-fold file: which kind of model made it ("text" or "image"),
# so that clean and tune-cascade need not guess from the file's name.
OOF_SOURCE_KEY = b"museum_typology.source"
OOF_SOURCES = ("text", "image")


# A fold bundle's own copy of its out-of-fold file, committed with it: a run stopped after the
# bundle's commit and before the out-of-fold file was written is finished by the next run from it
# (``reusable_bundle``) instead of training again.
BUNDLE_OOF = "oof.parquet"
# A fold bundle's version (``make_version``); ``-final`` ones and other folders (``_checkpoints``)
# do not match.
FOLD_VERSION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")


def oof_parquet(guids: Sequence[str], y: Sequence[int], fold: Sequence[int], proba: np.ndarray, version: str, source: str) -> bytes:
    """An out-of-fold file's bytes (oof/text.parquet, oof/image.parquet, a bundle's
    ``BUNDLE_OOF``): guid, label (given), fold, proba (15 floats, CLASSES order), model_version;
    ``source`` in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .schema import CLASSES

    if source not in OOF_SOURCES:
        raise ValueError(f"out-of-fold source {source!r}: expected one of {OOF_SOURCES}")
    table = pa.table(
        {
            "guid": pa.array(list(guids), pa.string()),
            "label": pa.array([CLASSES[i] for i in y], pa.string()),
            "fold": pa.array(np.asarray(fold).astype(np.int32), pa.int32()),
            "proba": pa.array(np.asarray(proba, dtype=np.float32).tolist(), pa.list_(pa.float32())),
            "model_version": pa.array([version] * len(guids), pa.string()),
        }
    ).replace_schema_metadata({OOF_SOURCE_KEY: source.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_oof(url: str, guids: Sequence[str], y: Sequence[int], fold: Sequence[int], proba: np.ndarray, version: str, source: str, s3: S3Options | None = None) -> None:
    """Write an out-of-fold file (``oof_parquet``) to ``url``."""
    storage.write_bytes(url, oof_parquet(guids, y, fold, proba, version, source), s3)


def models_dir(work_dir: str, kind: str = "") -> str:
    """WORK_DIR/models (where every job writes and looks for bundles by default), or one kind's
    directory below it (``text``, ``image``, ``cascade``)."""
    return storage.join(work_dir, "models", *([kind] if kind else []))


def oof_file(work_dir: str, kind: str) -> str:
    """WORK_DIR/oof/<kind>.parquet: the out-of-fold file of the bundles in ``models_dir(work_dir,
    kind)``, which clean and tune-cascade read by default."""
    return storage.join(work_dir, "oof", f"{kind}.parquet")


def make_version(digest: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest[:8]}"


def publish_latest(model_dir: str, version: str, s3: S3Options | None = None) -> None:
    """Point ``model_dir/latest`` at a committed bundle (one atomic write)."""
    storage.write_bytes(storage.join(model_dir, LATEST), version.encode(), s3)


def bundle_version(bundle_url: str) -> str:
    """A bundle's version: the name of its directory."""
    return bundle_url.rstrip("/").rsplit("/", 1)[-1]


def is_bundle_name(version: Any) -> bool:
    """A bundle folder's name beside ``latest``: text, not a path (it must not lead out of the
    models folder), not hidden, no control characters."""
    return isinstance(version, str) and bool(version) and "/" not in version and "\\" not in version and not version.startswith(".") and not any(ord(c) < 32 for c in version)


def latest_version(model_dir: str, s3: S3Options | None = None) -> str | None:
    """The version ``model_dir/latest`` names (stripped), or None when there is no ``latest``.
    A damaged one (not UTF-8 text, empty, or a path rather than a folder name beside it) is a
    ``StorageError`` saying so: read as it was, it raised a bare UnicodeDecodeError, or named
    ``model_dir`` itself, or a folder outside it."""
    latest = storage.join(model_dir, LATEST)
    if not storage.exists(latest, s3):
        return None
    try:
        version = storage.read_bytes(latest, s3).decode("utf-8").strip()
    except UnicodeDecodeError:
        version = None
    if not is_bundle_name(version):
        raise storage.StorageError(f"{latest}: damaged (it should hold the name of a bundle folder beside it); train again, or write a bundle's folder name into it")
    return version


def reusable_bundle(model_dir: str, run_key: str, oof_url: str | None = None, s3: S3Options | None = None) -> tuple[str, dict[str, Any]] | None:
    """(URL, metrics) of a bundle under ``model_dir`` that came from this very run: the same data
    and settings (``run_key`` in its ``metrics.json``). Else None. Which bundle: where the job
    writes an out-of-fold file (``oof_url``), the one bundle that file names, newest or not;
    else (``--final``) the newest.

    Training is seeded, so such a bundle is what training again would give (up to float noise),
    at the cost of minutes to hours: a re-run of the pipeline after a late failure, or a nightly
    run on unchanged data, goes on from there. Looking the fold bundle up by its out-of-fold file
    lets a pipeline run after ``train-image --final`` go on from the folds that the clean and
    cascade jobs read, where the newest bundle is the final one. An out-of-fold file written by
    another bundle (another ``--model-dir``, a later run), or none, means training again, unless
    the newest bundle holding its own out-of-fold file (``BUNDLE_OOF``) is this run's: a run
    stopped between its bundle's commit and writing ``oof_url``, or a new ``--oof`` path. That
    file is then copied to ``oof_url``.

    A reused bundle becomes ``latest`` (the run goes on with the model it reused, as it would
    have with one it trained; and a run killed between writing its out-of-fold file and
    publishing is finished), except under a newer ``--final`` bundle, which supersedes the folds
    it was trained after."""
    try:
        latest = latest_version(model_dir, s3)
    except storage.StorageError as exc:  # train again; publishing the new bundle mends it
        log.info("%s; nothing is reused", exc)
        latest = None
    if oof_url is None:
        version = latest
    else:
        named = oof_versions(oof_url, s3)
        version = next(iter(named)) if len(named) == 1 else None
        if len(named) > 1:
            log.info("%s names %d bundles, not one; none is reused", oof_url, len(named))
    # Without an out-of-fold file (--final) the newest bundle is only a candidate when it is a
    # final one: not reusing the fold bundle --final trains after is no news worth a log line.
    explain = oof_url is not None or (isinstance(version, str) and version.endswith("-final"))
    found = bundle_of_run(model_dir, version, run_key, "metrics.json", s3, explain)
    if found is None and oof_url is not None:
        version, found = _restore_oof_of_newest(model_dir, run_key, oof_url, s3)
    if found is None:
        return None
    # Versions start with their UTC time, so they sort by age; final image bundles end in -final.
    superseded = bool(latest) and latest.endswith("-final") and latest > version
    if version != latest and not superseded:
        publish_latest(model_dir, version, s3)
    return found


def _restore_oof_of_newest(model_dir: str, run_key: str, oof_url: str, s3: S3Options | None) -> tuple[str | None, tuple[str, dict[str, Any]] | None]:
    """(version, ``bundle_of_run``'s answer) of the newest fold bundle under ``model_dir`` (its
    versions start with their time; ``--final`` image bundles have no out-of-fold file) when it
    is this run's and holds its own out-of-fold file naming it: a run stopped between its
    bundle's commit and writing ``oof_url``, or a new ``--oof`` path. That file is copied to
    ``oof_url``. Else (None, None): the caller trains again."""
    if not storage.exists(model_dir, s3):
        return None, None
    versions = sorted(name for name, is_dir in storage.list_entries(model_dir, s3) if is_dir and FOLD_VERSION.fullmatch(name))
    newest = versions[-1] if versions else None
    found = bundle_of_run(model_dir, newest, run_key, "metrics.json", s3, explain=False)
    if found is None:
        return None, None
    own = storage.join(found[0], BUNDLE_OOF)
    named = oof_versions(own, s3)  # empty (and logged) when missing or unreadable: train again
    if named != {newest}:
        if named:
            log.info("%s names %s, not its bundle; the bundle is not reused", own, sorted(named)[:3])
        return None, None
    storage.write_bytes(oof_url, storage.read_bytes(own, s3), s3)
    log.info("%s is this run's bundle and %s did not name it (a run stopped before writing it, or a new path): copied from the bundle's %s", found[0], oof_url, BUNDLE_OOF)
    return newest, found


def bundle_of_run(model_dir: str, version: Any, run_key: str, record: str, s3: S3Options | None = None, explain: bool = True) -> tuple[str, dict[str, Any]] | None:
    """(URL, the JSON object in its ``record`` file) of the bundle ``version`` under ``model_dir``
    when that object's ``run_key`` is ``run_key``; else None: no version, one that is a path
    rather than a name (it must not lead out of ``model_dir``), a bundle whose commit did not
    finish (on S3 a crash mid-copy leaves objects without ``_SUCCESS``), a damaged record, or
    another run's bundle. Whoever asks then does the work again; with ``explain`` the log says why
    (a run that trains again for hours after an upgrade or a changed setting must not be silent)."""
    if not is_bundle_name(version):
        return None
    url = storage.join(model_dir, version)
    say = log.info if explain else log.debug
    try:
        if not storage.exists(url, s3):
            say("%s is not there (named by an out-of-fold file or latest); not reused", url)
            return None
        if not storage.is_committed(url, s3):
            say("%s: its commit did not finish (no _SUCCESS); not reused", url)
            return None
        stored = storage.read_json_object(storage.join(url, record), s3)
    except OSError as exc:  # unreadable (a directory where the file should be): do the work again
        if storage.is_s3_error(exc):
            raise  # the store itself failing is the user's to see, not a reason to train for hours
        stored = None
    if stored is None:
        say("%s: its %s is missing or damaged; not reused", url, record)
        return None
    if stored.get("run_key") != run_key:
        say("%s was made from other data, settings or code than this run (%s); not reused", url, "its run key differs" if stored.get("run_key") else "it has no run key: older code")
        return None
    return url, stored


def read_parquet_bytes(raw: bytes, columns: list[str] | None = None):
    """A Parquet file held in memory, as a pyarrow Table. Through ``ParquetFile`` without threads:
    pyarrow 10's ``read_table`` (its dataset reader and I/O thread pool) aborted the process at
    exit ("terminate called without an active exception", exit 134) in most runs from a Python
    file object, and in 2 of 10 from an Arrow buffer; this way none of 10."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(raw)).read(columns=columns, use_threads=False)


def oof_versions(url: str, s3: S3Options | None = None) -> set[str]:
    """The ``model_version`` values of an out-of-fold Parquet file (empty when it is missing or
    unreadable, or has no such column: the bundle it named is then trained again, and the log
    says why). The store failing (S3) is raised: not a reason to train for hours."""
    if not storage.exists(url, s3):
        return set()
    try:
        table = read_parquet_bytes(storage.read_bytes(url, s3), columns=["model_version"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not this run's"
        if storage.is_s3_error(exc):
            raise
        log.info("%s: unreadable as an out-of-fold file (%s); the bundle it named is not reused", url, " ".join(str(exc).split())[:200])
        return set()
    return set(table.column("model_version").to_pylist())


def resolve_bundle(model_dir: str, marker: str, kind: str, s3: S3Options | None = None, cache_dir: str | None = None) -> Path:
    """The ``kind`` bundle that ``latest`` names under ``model_dir`` (or ``model_dir`` itself when it holds
    ``marker``), as a local directory: S3 bundles are downloaded once into a cache keyed by version."""
    if storage.exists(storage.join(model_dir, marker), s3):
        bundle_url = model_dir
    else:
        version = latest_version(model_dir, s3)
        if version is None:
            raise storage.StorageError(f"{model_dir}: no {kind} model bundle (run train-{kind} first)")
        bundle_url = storage.join(model_dir, version)
        if not storage.is_committed(bundle_url, s3):  # gone, or a commit that did not finish
            what = "whose commit did not finish (no _SUCCESS)" if storage.exists(bundle_url, s3) else "which is not there"
            raise storage.StorageError(f"{storage.join(model_dir, LATEST)} names {version}, {what}; train again, or write a committed bundle's name into it")
    if not storage.is_s3(bundle_url):
        return Path(storage.filesystem(bundle_url)[1])
    # Keyed by the version and the whole URL: two buckets' bundles of one name are two bundles.
    # A bundle is never changed in place (a new version is a new directory), so a cached copy
    # stays right; a bundle replaced under the same URL is not noticed.
    version = bundle_version(bundle_url)
    url_key = hashlib.sha256(bundle_url.rstrip("/").encode()).hexdigest()[:12]
    local = Path(cache_dir or tempfile.gettempdir()) / "museum-typology-bundles" / kind / url_key / version  # named by its version, as loaders read it
    if not (local / DOWNLOADED).is_file():
        _download(bundle_url, local, s3)
    return local


# Written into a cached bundle after its last file: a download cut short (or one from before this
# marker existed) is never taken for a bundle.
DOWNLOADED = ".downloaded"


def _download(bundle_url: str, local: Path, s3: S3Options | None) -> None:
    """Download into a temporary sibling and rename it into place, so that neither a download
    cut short nor two Python workers of one host downloading at once leave a half bundle at
    ``local``; the first rename wins, a later one drops its copy."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / f".{local.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        storage.download_directory(bundle_url, str(tmp), s3)
        (tmp / DOWNLOADED).touch()
        if local.exists() and not (local / DOWNLOADED).is_file():
            shutil.rmtree(local, ignore_errors=True)  # an incomplete copy from an older version of this code
        try:
            os.rename(tmp, local)
        except OSError:
            if not (local / DOWNLOADED).is_file():  # not another worker's complete copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
