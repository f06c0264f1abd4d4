"""Local and ``s3://`` paths behind one interface, and atomic writes.

Every job reads and writes through here, so the same code runs on a laptop (local files) and
on a cluster (S3 or any S3-compatible store through pyarrow's S3 filesystem).

Atomicity: a job writes into a hidden temporary sibling and commits at the end. Locally the
commit is a directory rename. S3 has no rename, so the commit copies the objects to their final
keys and writes a ``_SUCCESS`` marker last; readers (``is_committed``) trust only marked outputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from .log import get_logger

log = get_logger(__name__)

SUCCESS_MARKER = "_SUCCESS"


class StorageError(OSError):
    """A path that can't be read or written; the message names the path."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Picklable, so Spark tasks can rebuild the filesystem on executors."""

    endpoint_url: str = ""
    region: str = "us-east-1"

    @classmethod
    def from_settings(cls, section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> S3Options:
        """``s3.region``, or when empty the driver's AWS_REGION / AWS_DEFAULT_REGION (resolved
        here: executors get the options, not the driver's environment), else us-east-1."""
        environ = os.environ if environ is None else environ
        region = str(section.get("region") or "") or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(endpoint_url=str(section.get("endpoint_url") or ""), region=region)


def is_s3_error(exc: BaseException) -> bool:
    """pyarrow's S3 client failing (no such bucket, endpoint unreachable, access denied): an
    ``OSError`` whose message names the AWS error. Caught where a job reports user errors."""
    return isinstance(exc, OSError) and "AWS Error" in str(exc)


def is_url(url: str) -> bool:
    """A URL (s3://, file://, file:/ as Spark writes it), not a local path."""
    return "://" in url or url.startswith("file:")


def is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def join(base: str, *parts: str) -> str:
    """Join path parts; works for local paths and s3:// URLs alike."""
    if is_s3(base):
        return base.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
    return posixpath.join(base, *parts)


def under(base: str, path: str) -> str:
    """``path`` as a setting names a file under a directory (``ingest.images`` under
    ``paths.data``): an s3:// or file: URL or an absolute local path as it is, anything else below
    ``base``. (``join`` would put ``s3://imgs/all`` under an s3:// base as a key.)"""
    return path if is_url(path) or posixpath.isabs(path) else join(base, path)


def filesystem(url: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds ``url``, and the path inside it."""
    if is_s3(url):
        s3 = s3 or S3Options()
        kwargs: dict[str, Any] = {"region": s3.region}
        if s3.endpoint_url:
            kwargs["endpoint_override"], kwargs["scheme"] = s3_endpoint(s3.endpoint_url)
        return pafs.S3FileSystem(**kwargs), filesystem_path(url)
    return pafs.LocalFileSystem(), filesystem_path(url)


def s3_endpoint(endpoint_url: str) -> tuple[str, str]:
    """(host[:port], scheme) of an S3 endpoint, "http://minio:9000" or just "minio:9000" (https);
    urlparse alone reads the latter as scheme "minio" and path "9000"."""
    endpoint = urlparse(endpoint_url if "://" in endpoint_url else "https://" + endpoint_url)
    return endpoint.netloc or endpoint.path, endpoint.scheme or "https"


def absolute(url: str) -> str:
    """A local path made absolute here, on the driver; a URL (s3://, file://) as it is. Executors
    resolve a relative path against their own working directory, which on a cluster is Spark's
    work folder, not the directory the job was started from."""
    if is_url(url) or not url:
        return url
    return os.path.abspath(url)


def _where(url: str) -> tuple[bool, str]:
    """(on S3?, the path), local paths resolved (links, "."), for comparing two locations."""
    path = filesystem_path(url)
    return is_s3(url), path if is_s3(url) else os.path.realpath(path)


def same_location(a: str, b: str) -> bool:
    return _where(a) == _where(b)


def is_inside(path_url: str, directory_url: str) -> bool:
    """``path_url`` lies under ``directory_url`` (by path alone: neither need exist)."""
    return path_below(path_url, directory_url) is not None


def path_below(path_url: str, directory_url: str) -> str | None:
    """The part of ``path_url`` below ``directory_url`` ("a/b"), None when it is not under it."""
    (s3_path, path), (s3_directory, directory) = _where(path_url), _where(directory_url)
    prefix = directory.rstrip("/") + "/"
    return path[len(prefix):].rstrip("/") if s3_path == s3_directory and path.startswith(prefix) else None


def filesystem_path(url: str) -> str:
    """The path of ``url`` inside its ``filesystem`` (without making a client)."""
    if is_s3(url):
        # Not urlparse: it cut "s3://b/run#1/x" at "#" (and "?"), and the job read or wrote the
        # object "run" instead, silently. An S3 key is any text after the bucket.
        return url.split("://", 1)[1].rstrip("/")
    if url.startswith("file:"):
        url = local_file_path(url)
    return posixpath.abspath(url)


def local_file_path(url: str) -> str:
    """The path of a ``file:`` URL. ``file:///x%20y`` is a URI (percent-escaped: unquoted);
    ``file:/x`` is how Spark (Hadoop's Path) writes a path, binaryFile's ``path`` column included,
    as it is: a name with "#", "?" or "%41" in it is not a URI's fragment, query or escape."""
    if url.startswith("file://"):
        return unquote(urlparse(url).path)
    return url[len("file:"):]


def to_uri(url: str) -> str:
    """An absolute URI for tools that want one (petastorm, Spark): file:///... or s3://..."""
    path = filesystem_path(url)
    if "#" in path or "?" in path:
        # petastorm parses this URI with urlparse, which would cut the path at "#" or "?".
        raise StorageError(f"{url}: a dataset path may not contain '#' or '?' (petastorm reads it as a URL); move or rename it")
    return "s3://" + path if is_s3(url) else "file://" + path


def exists(url: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(url, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(url: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(url, s3)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(url: str, s3: S3Options | None = None) -> bytes:
    fs, path = filesystem(url, s3)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, FileNotFoundError) as exc:
        raise StorageError(f"{url}: cannot read ({exc})") from None


def read_json_object(url: str, s3: S3Options | None = None) -> dict[str, Any] | None:
    """The JSON object in a file a job wrote for itself (a summary, metrics), or None when the
    file is missing, damaged or not an object: whoever asks then does the work again rather
    than trust it."""
    if not exists(url, s3):
        return None
    try:
        value = json.loads(read_bytes(url, s3))
    except (ValueError, RecursionError):  # RecursionError: brackets nested deeper than Python recurses
        return None
    return value if isinstance(value, dict) else None


def read_bytes_within(url: str, max_bytes: int, s3: S3Options | None = None) -> tuple[bytes | None, int]:
    """(the file's bytes, its size), or (None, its size) when it is over ``max_bytes``: a huge
    file is refused from its size, without being read. The size comes from opening the file (on
    S3, Arrow's one HEAD before its ranged GETs), so this costs no request more than
    ``read_bytes``; asking for the size first (``get_file_info``) would add a HEAD per file."""
    fs, path = filesystem(url, s3)
    try:
        with fs.open_input_file(path) as handle:
            size = handle.size()
            return (None, size) if size > max_bytes else (handle.read(), size)
    except OSError as exc:  # FileNotFoundError included
        raise StorageError(f"{url}: cannot read ({exc})") from None


def open_input_file(url: str, s3: S3Options | None = None):  # -> pyarrow.NativeFile (seekable)
    fs, path = filesystem(url, s3)
    try:
        return fs.open_input_file(path)
    except (OSError, FileNotFoundError) as exc:
        raise StorageError(f"{url}: cannot open ({exc})") from None


def list_entries(url: str, s3: S3Options | None = None) -> list[tuple[str, bool]]:
    """(name, whether it is a directory) of each entry directly under a directory: one listing."""
    fs, path = filesystem(url, s3)
    return [(posixpath.basename(info.path.rstrip("/")), info.type == pafs.FileType.Directory) for info in fs.get_file_info(pafs.FileSelector(path, recursive=False))]


def list_files(url: str, s3: S3Options | None = None, recursive: bool = False) -> list[str]:
    """Base names (or paths relative to ``url`` when recursive) of the files under a directory."""
    return [name for name, _, _ in list_file_stats(url, s3, recursive)]


def list_file_stats(url: str, s3: S3Options | None = None, recursive: bool = False) -> list[tuple[str, int, int]]:
    """(name as ``list_files`` gives it, size in bytes, last change in ns) of the files under a
    directory, sorted by name. The last change: on S3 the object's LastModified (a PUT sets it);
    locally the later of the modification and status-change times, since tools that restore
    dates (``cp -p``, ``unzip``, ``exiftool -P``) set the first back but not the second. 0 where
    the store gives none."""
    fs, path = filesystem(url, s3)
    if not is_s3(url):
        return _local_file_stats(path, recursive, url)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=False)
    try:
        infos = fs.get_file_info(selector)
    except (OSError, FileNotFoundError) as exc:
        raise StorageError(f"{url}: cannot list ({exc})") from None
    prefix = path.rstrip("/") + "/"
    return sorted((info.path[len(prefix):], int(info.size or 0), int(info.mtime_ns or 0)) for info in infos if info.type == pafs.FileType.File)


def _local_file_stats(root: str, recursive: bool, url: str) -> list[tuple[str, int, int]]:
    """``list_file_stats`` of a local directory, listed by Python rather than pyarrow: pyarrow
    failed the whole job with a UnicodeDecodeError on one file name that is not UTF-8 (a
    cp1251 name from an old archive), which is skipped here with a warning. A symbolic link
    that leads nowhere (dangling, or a loop) is listed, size 0, so that reading it says why;
    FIFOs, sockets and devices are not (reading one could block). Symlinked folders are not
    descended into, as pyarrow did not."""
    if not os.path.isdir(root):
        raise StorageError(f"{url}: cannot list ({'no such directory' if not os.path.exists(root) else 'not a directory'})")
    stats: list[tuple[str, int, int]] = []
    not_utf8: list[str] = []
    folders = [""]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(os.path.join(root, folder) if folder else root))
        except OSError as exc:
            raise StorageError(f"{url}: cannot list {folder or 'it'} ({exc})") from None
        for entry in entries:
            name = f"{folder}/{entry.name}" if folder else entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates
                not_utf8.append(name)
                continue
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    folders.append(name)
                continue
            if entry.is_file():  # a file, or a link to one
                try:
                    info = entry.stat()
                except OSError:  # gone since the listing: its name still counts
                    stats.append((name, 0, 0))
                    continue
                # The later of the modification and status-change times: tools that restore dates
                # (cp -p, unzip, exiftool -P) set the first back but not the second.
                stats.append((name, int(info.st_size), max(info.st_mtime_ns, info.st_ctime_ns)))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                stats.append((name, 0, 0))
    if not_utf8:
        log.warning("%s: %d file name(s) that are not UTF-8 text left out, e.g. %r (rename them)", url, len(not_utf8), not_utf8[0].encode("utf-8", "surrogateescape"))
    return sorted(stats)


def write_bytes(url: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write one file atomically: a temporary sibling, then a rename (local) or a single PUT (S3).

    The sibling is hidden (``.NAME.tmp-1234abcd``): a run killed before its rename left a
    ``NAME.tmp-…`` that Spark, pyarrow and evaluate read as one more data file of the folder (a
    folder of score outputs counted one output's rows twice). Such leftovers of ``NAME`` older
    than a day are deleted at its next write (a younger one may be another writer's)."""
    fs, path = filesystem(url, s3)
    if is_s3(url):
        # A single PUT is atomic on S3: readers see the old object or the new one, never half.
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
        _remove_abandoned_file_temporaries(fs, parent, name, ABANDONED_STAGING_AGE_S)
    except OSError as exc:
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        what = "is a directory" if fs.get_file_info(path).type == pafs.FileType.Directory else " ".join(str(exc).split())
        raise StorageError(f"{url}: cannot write the file ({what})") from None


def write_json(url: str, value: Any, s3: S3Options | None = None) -> None:
    """A job's record (summary, settings) as readable UTF-8 JSON, atomically (``write_bytes``)."""
    write_bytes(url, json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8"), s3)


def write_parquet(url: str, table: pa.Table, s3: S3Options | None = None) -> None:
    """A Parquet file, its directory made first (a crawl whose every URL failed has no dataset/
    yet); written in place, as inside an ``atomic_directory``'s temporary directory."""
    import pyarrow.parquet as pq

    fs, path = filesystem(url, s3)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        pq.write_table(table, out)


def delete_file(url: str, s3: S3Options | None = None) -> None:
    """Delete one file if it is there."""
    fs, path = filesystem(url, s3)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete_dir(url: str, s3: S3Options | None = None) -> None:
    fs, path = filesystem(url, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        _delete_tree(fs, path)


# S3's DeleteObjects takes at most this many keys per request.
S3_DELETE_BATCH = 1000


def _delete_tree(fs: pafs.FileSystem, path: str) -> None:
    """Delete a directory and everything under it. On S3, pyarrow 10's ``delete_dir`` sends the
    DeleteObjects requests after the first 1,000 keys without a body, so they fail: a dataset
    or a crawl's work area of more files went file by file (a few requests at a time) instead,
    then its directory markers."""
    if isinstance(fs, pafs.S3FileSystem):
        files = [info.path for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if info.type == pafs.FileType.File]
        if len(files) >= S3_DELETE_BATCH:
            _each_at_once(fs.delete_file, files)
    fs.delete_dir(path)


# S3 requests in flight at once when a commit copies or deletes object by object.
S3_REQUESTS_AT_ONCE = 16


def _each_at_once(request: Callable[[str], Any], paths: Sequence[str]) -> None:
    """``request(path)`` for every path, ``S3_REQUESTS_AT_ONCE`` at a time (one S3 request each,
    mostly waiting on the network; Arrow releases the GIL): one after another, a crawl's
    thousands of part files took minutes to commit. The first failure is raised."""
    if len(paths) < 2:
        for path in paths:
            request(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=S3_REQUESTS_AT_ONCE) as pool:
        for _ in pool.map(request, paths):
            pass


def is_committed(url: str, s3: S3Options | None = None) -> bool:
    """True when ``url`` is an output directory that a job finished writing."""
    return exists(join(url, SUCCESS_MARKER), s3)


def check_can_write(url: str, what: str, folder: bool, s3: S3Options | None = None) -> None:
    """``url`` can be written as a folder (``folder``) or a file: it is not the other kind already,
    and locally no file stands where one of its parent folders must go. Cheap (nothing is
    written): a job asks before hours of work, not when it writes the results. ``what`` names
    the option in the message ("--model-dir")."""
    if folder and exists(url, s3) and not is_dir(url, s3):
        raise StorageError(f"{url}: {what} is a file, not a folder")
    if not folder and is_dir(url, s3):
        raise StorageError(f"{url}: {what} is a folder; name a file")
    if not is_s3(url):
        parent = os.path.dirname(filesystem_path(url).rstrip("/"))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise StorageError(f"{url}: {what} cannot be written: {parent} is a file, not a folder")


def check_replaceable(url: str, signature: Sequence[str], job: str, s3: S3Options | None = None, only: Sequence[str] = ()) -> None:
    """Refuse an output directory that a commit would replace whole when it holds something else
    (``--output var`` must not wipe a work directory, nor ``clean --output var/ingest`` the
    ingest output). It may be absent or empty, or be this job's committed output (its
    ``_SUCCESS`` names the job: ``atomic_directory(..., job=)``); an output committed before
    markers named their job, or an unfinished one, must hold one of the ``signature`` files this
    job writes, and, when ``only`` lists every file the job writes, nothing else (a signature as
    common as metrics.json is in a model bundle too). Call it before the job's long work."""
    refuse_bucket_root(url, job)
    fs, path = filesystem(url, s3)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise StorageError(f"{url}: exists and is not a directory; {job} writes a directory there")
    names = {posixpath.basename(info.path) for info in fs.get_file_info(pafs.FileSelector(path, recursive=False))}
    if not names:
        return
    refuse = f"{job} replaces its output directory whole, so give a new or empty one"
    if SUCCESS_MARKER in names:
        with fs.open_input_stream(posixpath.join(path, SUCCESS_MARKER)) as stream:
            owner = stream.read(200).decode("utf-8", errors="replace").strip()
        if owner == job:
            return
        if owner:
            raise StorageError(f"{url}: the committed output of {owner}, not of {job}; {refuse}")
    others = names - set(only) - {SUCCESS_MARKER} if only else set()
    if not names & set(signature) or others:
        shown = ", ".join(sorted(others or names)[:5]) + (", ..." if len(others or names) > 5 else "")
        raise StorageError(
            f"{url}: not empty and not an output of {job} (it holds {shown}; {job} writes {' or '.join(signature)}); {refuse}"
            + ("" if SUCCESS_MARKER in names else f" (if it is what a crashed first run of {job} left, with no {SUCCESS_MARKER}, delete it)")
        )


def refuse_bucket_root(url: str, job: str = "") -> None:
    """An output directory must be a prefix inside a bucket: a commit writes a temporary sibling
    first, and the sibling of a whole bucket would be another bucket (a crawl found out only after
    fetching everything)."""
    if is_s3(url) and "/" not in filesystem_path(url).strip("/"):
        raise StorageError(f"{url}: a whole bucket; {job or 'a job'} writes its output directory under a prefix: give s3://BUCKET/NAME")


@contextlib.contextmanager
def atomic_directory(final_url: str, s3: S3Options | None = None, job: str = "", sweep_abandoned_after_s: float | None = None) -> Iterator[str]:
    """Yield a temporary directory URL; on a clean exit it replaces ``final_url`` whole.

    Locally, a crash leaves ``final_url`` as it was (the old output, or nothing) plus a hidden
    temporary directory that a later run of the same job cleans up once it has been quiet for
    ``STALE_TEMPORARY_QUIET_S`` (a younger one may be a concurrent run's); a crash between the two
    renames of the commit is undone by the next run. On S3 there is no rename: the commit removes
    the old ``_SUCCESS`` marker, copies the new objects over the old ones, deletes the old objects
    the new output lacks and writes the marker last, so a crash during the copy leaves an output
    without its marker, which readers refuse and the next run replaces.

    ``sweep_abandoned_after_s``: also delete other outputs' temporaries in the same folder
    (``.OTHER.tmp-*``) none of whose files is newer than this. A model bundle's name changes with
    every run, so a killed run's half-copied bundle was never its successor's to clean up; the
    age spares a commit another job is making there now.
    """
    refuse_bucket_root(final_url, job)
    fs, final_path = filesystem(final_url, s3)
    if fs.get_file_info(final_path).type == pafs.FileType.File:  # else the commit moved it aside and failed deleting it
        raise StorageError(f"{final_url}: a file is there; {job or 'the job'} writes a folder at this path: move the file or choose another path")
    parent, name = posixpath.split(final_path.rstrip("/"))
    fs.create_dir(parent, recursive=True)
    _remove_stale_temporaries(fs, parent, name, final_path)
    if sweep_abandoned_after_s is not None:
        _remove_abandoned_temporaries(fs, parent, name, sweep_abandoned_after_s)
    tmp_name = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_path = posixpath.join(parent, tmp_name)
    tmp_url = join(final_url.rstrip("/").rsplit("/", 1)[0], tmp_name) if is_s3(final_url) else tmp_path
    fs.create_dir(tmp_path, recursive=True)
    try:
        yield tmp_url
    except BaseException:
        with contextlib.suppress(Exception):
            _delete_tree(fs, tmp_path)
        raise
    _commit(fs, tmp_path, final_path, s3_layout=is_s3(final_url), job=job)


def clean_up_after_crashes(final_url: str, s3: S3Options | None = None) -> None:
    """What ``atomic_directory`` does first, for a job that may end up not writing: delete the
    temporaries of crashed runs beside ``final_url`` and put back an output a crash set aside."""
    fs, final_path = filesystem(final_url, s3)
    parent, name = posixpath.split(final_path.rstrip("/"))
    _remove_stale_temporaries(fs, parent, name, final_path)


def _remove_stale_temporaries(fs: pafs.FileSystem, parent: str, name: str, final_path: str) -> None:
    """Delete what crashed runs left: their temporary directories, and the previous output set
    aside by a local commit (``.NAME.old-*``), which is first put back if a crash between the
    commit's two renames left no output."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent, recursive=False))
    except (OSError, FileNotFoundError):
        return
    # ".NAME.old-1234abcd"; older versions of this code named it "NAME.old-1234abcd", visibly.
    old_name = re.compile(rf"\.?{re.escape(name)}\.old-[0-9a-f]{{8}}")
    olds = sorted((info.path for info in infos if old_name.fullmatch(posixpath.basename(info.path)) and info.type == pafs.FileType.Directory), key=lambda path: -fs.get_file_info(path).mtime_ns)
    if olds and fs.get_file_info(final_path).type == pafs.FileType.NotFound:
        fs.move(olds.pop(0), final_path)
    for info in infos:
        base = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and (base.startswith(f".{name}.tmp-") or info.path in olds):
            try:
                # Another run writing the same output now (an overlapping nightly run) has its
                # temporary here too: deleting it failed that run halfway ("dataset holds 40
                # rows, manifest marks 153 ok"). Only a quiet one is a crashed run's.
                if info.path not in olds and _newest_mtime_ns(fs, info) > (time.time() - STALE_TEMPORARY_QUIET_S) * 1e9:
                    log.info("%s: another run's temporary, written to in the last %.0f min; left alone", info.path, STALE_TEMPORARY_QUIET_S / 60)
                    continue
                _delete_tree(fs, info.path)
            except OSError as exc:
                log.warning("%s: a crashed run's leftover could not be deleted (%s); delete it by hand", info.path, " ".join(str(exc).split()))


# A temporary of the same output written to within this long may be another run's, still going
# (its tasks write part files every few minutes); older, it is a crashed run's.
STALE_TEMPORARY_QUIET_S = 3600


def _newest_mtime_ns(fs: pafs.FileSystem, folder: pafs.FileInfo) -> int:
    """The newest modification time of the files in ``folder`` (the folder's own when it holds
    none; 0 where the store keeps none): when a temporary was last written to."""
    inside = fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return max((i.mtime_ns or 0 for i in inside if i.type == pafs.FileType.File), default=folder.mtime_ns or 0)


_TEMPORARY = re.compile(r"\.(.+)\.tmp-[0-9a-f]+")  # atomic_directory's and write_bytes' ".NAME.tmp-1234abcd"


def temporary_owner(name: str) -> str | None:
    """The output whose commit a temporary named ``name`` was (``atomic_directory``'s folders and
    ``write_bytes``' files: ".NAME.tmp-1234abcd" -> "NAME"), or None when it is no such name."""
    found = _TEMPORARY.fullmatch(name)
    return found.group(1) if found else None


# How old another output's temporary must be before a bundle commit deletes it (see
# atomic_directory): longer than any training takes to copy its bundle.
ABANDONED_STAGING_AGE_S = 24 * 3600


def _remove_abandoned_temporaries(fs: pafs.FileSystem, parent: str, name: str, age_s: float) -> None:
    """Delete the ``.OTHER.tmp-*`` folders in ``parent`` whose files are all older than ``age_s``
    (``.NAME.tmp-*`` are ``_remove_stale_temporaries``'); failures only warn."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent, recursive=False))
    except (OSError, FileNotFoundError):
        return
    cutoff_ns = int((time.time() - age_s) * 1e9)
    for info in infos:
        owner = temporary_owner(posixpath.basename(info.path))
        if info.type != pafs.FileType.Directory or owner is None or owner == name:
            continue
        try:
            if _newest_mtime_ns(fs, info) < cutoff_ns:
                log.info("%s: an abandoned commit's temporary (nothing newer than %.0f h); deleted", info.path, age_s / 3600)
                _delete_tree(fs, info.path)
        except OSError as exc:
            log.warning("%s: an abandoned commit's temporary could not be deleted (%s); delete it by hand", info.path, " ".join(str(exc).split()))


def _remove_abandoned_file_temporaries(fs: pafs.FileSystem, parent: str, name: str, age_s: float) -> None:
    """Delete ``write_bytes``' temporaries of ``name`` in ``parent`` older than ``age_s``: files
    of runs killed between writing and renaming. Failures only warn."""
    cutoff_ns = int((time.time() - age_s) * 1e9)
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent, recursive=False))
        for info in infos:
            if info.type == pafs.FileType.File and temporary_owner(posixpath.basename(info.path)) == name and (info.mtime_ns or 0) < cutoff_ns:
                log.info("%s: the temporary of a write killed before its rename (older than %.0f h); deleted", info.path, age_s / 3600)
                fs.delete_file(info.path)
    except OSError as exc:
        log.warning("%s: old temporaries of %s could not be deleted (%s)", parent, name, " ".join(str(exc).split()))


def _commit(fs: pafs.FileSystem, tmp_path: str, final_path: str, s3_layout: bool, job: str = "") -> None:
    """``job``, when given, is written into ``_SUCCESS``: whose output this is (``check_replaceable``)."""
    if not s3_layout:
        with fs.open_output_stream(posixpath.join(tmp_path, SUCCESS_MARKER)) as out:
            out.write(job.encode())
        if fs.get_file_info(final_path).type != pafs.FileType.NotFound:
            parent, name = posixpath.split(final_path.rstrip("/"))
            old = posixpath.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")  # hidden, found by the next run
            fs.move(final_path, old)
            try:
                fs.move(tmp_path, final_path)
            except BaseException:
                fs.move(old, final_path)
                raise
            fs.delete_dir(old)
        else:
            fs.move(tmp_path, final_path)
        return
    # S3: drop the old marker first so readers never trust a half-replaced output; then copy the
    # new objects over the old ones (the old output is not deleted before the new one is in
    # place) and delete the old objects the new output lacks.
    marker = posixpath.join(final_path, SUCCESS_MARKER)
    final_exists = fs.get_file_info(final_path).type != pafs.FileType.NotFound
    if final_exists and fs.get_file_info(marker).type != pafs.FileType.NotFound:
        fs.delete_file(marker)
    new_files = {info.path[len(tmp_path):] for info in fs.get_file_info(pafs.FileSelector(tmp_path, recursive=True)) if info.type == pafs.FileType.File}
    _each_at_once(lambda relative: fs.copy_file(tmp_path + relative, final_path + relative), sorted(new_files))
    if final_exists:
        new_dirs = {posixpath.dirname(relative) for relative in new_files}
        new_dirs |= {"/".join(d.split("/")[:i]) for d in new_dirs for i in range(1, d.count("/") + 1)}
        # Whole directories the new output lacks go with their directory marker objects (a job's
        # work area inside its output, e.g. crawl's _work/); then the stray files.
        # One listing serves both passes (on S3 each listing is a series of requests).
        listing = fs.get_file_info(pafs.FileSelector(final_path, recursive=True))
        deleted: list[str] = []
        for path in sorted((info.path for info in listing if info.type == pafs.FileType.Directory and info.path[len(final_path):] not in new_dirs), key=len):
            if not any(path.startswith(gone + "/") for gone in deleted):  # not gone with a stale parent
                _delete_tree(fs, path)
                deleted.append(path)
        for info in listing:
            inside_deleted = any(info.path.startswith(gone + "/") for gone in deleted)
            if info.type == pafs.FileType.File and not inside_deleted and info.path[len(final_path):] not in new_files and info.path != marker:
                fs.delete_file(info.path)
    with fs.open_output_stream(marker) as out:
        out.write(job.encode())
    try:  # the output is committed: what is left is tidying, which the next run redoes
        _delete_tree(fs, tmp_path)
    except OSError as exc:
        log.warning("%s committed; its temporary copy %s could not be deleted (%s): the next run of the job deletes it", final_path, tmp_path, " ".join(str(exc).split()))


def upload_directory(local_dir: str, url: str, s3: S3Options | None = None) -> None:
    """Copy a local directory tree to ``url`` (local or S3); used for bundles built locally.

    One file after another (``use_threads=False``): with threads, pyarrow 10 copied each file on
    one of its I/O threads, and closing an S3 output stream waits for part uploads that need
    those same threads, so a bundle of 8 files or more (an image bundle has 16) hung for ever,
    deaf to SIGTERM. Each file's own upload still runs in the background."""
    fs, path = filesystem(url, s3)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(posixpath.abspath(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs, use_threads=False)


def download_directory(url: str, local_dir: str, s3: S3Options | None = None) -> None:
    """Copy ``url`` (local or S3) into a local directory."""
    fs, path = filesystem(url, s3)
    pafs.LocalFileSystem().create_dir(posixpath.abspath(local_dir), recursive=True)
    pafs.copy_files(path, posixpath.abspath(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
