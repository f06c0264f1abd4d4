"""Where ingest finds images: a zip archive (``images/<guid>[.ext]``) or a directory of
``<guid>[.ext]`` files, local or on S3. File names only map a file to its guid; the content
decides the format (``images.decode_image`` sniffs it).
"""
from __future__ import annotations

import hashlib
import lzma
import re
import unicodedata
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from . import storage
from .log import get_logger
from .storage import S3Options

log = get_logger(__name__)


@dataclass(frozen=True)
class ImageIndex:
    """guid -> member names (zip entries or file names), plus what could not be mapped."""

    location: str
    kind: str  # "zip" or "dir"
    members: dict[str, list[str]] = field(default_factory=dict)
    unsafe: dict[str, str] = field(default_factory=dict)  # member -> why refused
    # A hash of every file's name, size and CRC-32 (zip) or last change time (directory, junk
    # left out): the same fingerprint means the same images, without reading them (ingest's run key).
    fingerprint: str = ""
    # guid -> why its image was refused, for the refused names that map to a guid as an indexed
    # image would (a refused sidecar, ``../u1.xmp``, is no image of u1's and is not here).
    unsafe_by_guid: dict[str, str] = field(default_factory=dict)


# The extension cut off a file name to get its guid: the last suffix when it is 1-5 Latin letters
# (compared without case). Every image extension is one (jpg, jpeg, png, gif, bmp, tif, tiff,
# webp, heic, mpo, jfif, ...), and so is an odd one (``x-1.weird``, ``e.xyz``: the content decides
# the format anyway, ``images.decode_image`` sniffs it). A guid may itself contain dots
# (``inv.1.jpg`` is guid ``inv.1``) and an image may have no extension at all, so cutting at the
# first dot would merge guids, and cutting at any last dot would lose ``inv.1``: a suffix with a
# digit (``inv.1``, ``1999.12.3a``) or a Cyrillic letter is part of the guid. A guid that itself
# ends in a dot and 1-5 Latin letters (``MS.A``) is told from an extension by the input rows: a
# file whose whole name is a guid of theirs (``known_guids``) belongs to that guid, so ``MS.A``
# with no extension is guid ``MS.A``, not guid ``MS`` with extension ``a``.
_EXTENSION = re.compile(r"[a-z]{1,5}")

# Extensions of metadata written beside images (Lightroom/Bridge ``.xmp``, camera ``.thm`` thumbnails,
# Windows ``Thumbs.db``/``desktop.ini``, exported ``.json``/``.txt``/``.xml``/``.csv``, checksum
# files). They are never images: indexed, ``u1.xmp`` beside ``u1.jpg`` would make guid ``u1``
# ambiguous and cost the item its image, so they are skipped like hidden files. Files of any other
# name are indexed: the content is sniffed later.
SIDECAR_EXTENSIONS = frozenset({"xmp", "json", "txt", "xml", "csv", "db", "ini", "md5", "sha1", "sha256", "thm"})


def _split_extension(name: str) -> tuple[str, str]:
    """``inv.1.JPG`` -> (``inv.1``, ``jpg``); ``abc`` -> (``abc``, ``""``): the last dot only."""
    stem, dot, extension = name.rpartition(".")
    return (stem, extension.lower()) if dot and stem else (name, "")


def _path_parts(member: str, zip_member: bool) -> list[str]:
    """A file's path as its parts. In a zip archive a backslash separates them too (archivers on
    Windows wrote ``images\\abc.jpg``); in a directory (local or S3) it is part of a name, so the
    file ``a\\b.jpg`` is guid ``a\\b``, not ``b``."""
    return (member.replace("\\", "/") if zip_member else member).split("/")


class KnownGuids(frozenset):
    """The input rows' guids (``known_guids``), which also finds a guid from a file name written
    in another Unicode form: macOS writes names decomposed (NFD, ``й`` as ``и`` and a combining
    breve), which looks the same as the rows' guid but compared unequal, so the image was an
    orphan and its row had none."""

    def __new__(cls, guids: Iterable[str]) -> KnownGuids:
        known = super().__new__(cls, guids)
        known.by_form = {unicodedata.normalize("NFC", guid): guid for guid in known}
        return known


def _known(name: str, known_guids: Collection[str]) -> str | None:
    """``name`` as the rows spell it when it is one of ``known_guids`` (in any Unicode form when
    they are ``KnownGuids``), else None."""
    if name in known_guids:
        return name
    if isinstance(known_guids, KnownGuids):
        return known_guids.by_form.get(unicodedata.normalize("NFC", name))
    return None


def guid_of(member: str, known_guids: Collection[str] = (), zip_member: bool = False) -> str:
    """The guid of an image file: its base name when that is one of ``known_guids`` (the input
    rows' guids), else its base name less one trailing extension (see ``_EXTENSION``), spelled
    as the rows spell it when that is theirs in another Unicode form (``KnownGuids``).
    ``zip_member``: the name is a zip archive's, where a backslash separates folders too.

    ``images/abc-123.jpg`` -> ``abc-123``; ``abc-123`` (no extension) -> ``abc-123``;
    ``images/inv.1.JPG`` -> ``inv.1``; ``inv.1`` -> ``inv.1``; ``x-1.weird`` -> ``x-1``;
    ``MS.A`` -> ``MS``, or ``MS.A`` when ``MS.A`` is a known guid.
    """
    name = _path_parts(member, zip_member)[-1]
    whole = _known(name, known_guids)
    if whole is not None:
        return whole
    stem, extension = _split_extension(name)
    guid = stem if _EXTENSION.fullmatch(extension) else name
    return _known(guid, known_guids) or guid


# An archive's flag that its names are UTF-8; without it the zip format says cp437.
_ZIP_UTF8_FLAG = 0x800


def meant_name(info: zipfile.ZipInfo, known_guids: Collection[str] = ()) -> str:
    """A zip member's name as its archiver meant it. Without the archive's UTF-8 flag, zipfile
    reads a name as cp437, as the format says; but Info-ZIP on Linux writes UTF-8 bytes without
    the flag, and Windows' own and 7-Zip's archivers the OEM code page, cp866 for Russian: a
    Cyrillic name came out as ``╨║╨╜╨╕╨│╨░1`` and never matched its row. The name's bytes are
    read as UTF-8, cp866, cp1251 or cp437 (the format's own, as a Western archiver writes it),
    the first that names a row's image; else UTF-8 where the bytes are valid UTF-8, else cp866
    (which reads any bytes)."""
    if info.flag_bits & _ZIP_UTF8_FLAG or info.filename.isascii():
        return info.filename
    raw = info.filename.encode("cp437")  # the bytes back: zipfile read them as cp437
    readings = []
    for encoding in ("utf-8", "cp866", "cp1251"):
        try:
            readings.append(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
    for name in (*readings, info.filename):
        if guid_of(name, known_guids, zip_member=True) in known_guids:  # spelled as its row
            return name
    return readings[0]


def unsafe_member_reason(member: str) -> str | None:
    """Archive members that would escape an extraction target are refused, never read."""
    normalized = member.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[0].isalpha() and normalized[1] == ":"):
        return f"archive member {member!r} has an absolute path"
    if ".." in normalized.split("/"):
        return f"archive member {member!r} escapes the archive root with '..'"
    return None


def is_junk(member: str, zip_member: bool = False) -> bool:
    """Files that are never images and so are left out of every image index: hidden files and
    macOS resource forks (``__MACOSX/images/._abc.jpg``; they would be indexed under a bogus
    guid) and metadata sidecars (``u1.xmp``, ``Thumbs.db``: see ``SIDECAR_EXTENSIONS``; beside
    ``u1.jpg`` they would make ``u1`` ambiguous)."""
    parts = _path_parts(member, zip_member)
    return parts[-1].startswith(".") or _in_hidden_folder(parts) or "__MACOSX" in parts or _split_extension(parts[-1])[1] in SIDECAR_EXTENSIONS


def _in_hidden_folder(parts: list[str]) -> bool:
    """Under a hidden folder: a NAS's ``.AppleDouble/u1`` resource fork, ``.Trash-1000/files/u1.jpg``
    or ``.thumbnails/u1.jpg`` (each named like the real image, which it made ambiguous)."""
    return any(part.startswith(".") and part not in (".", "..") for part in parts[:-1])


def is_indexed(member: str, known_guids: Collection[str] = (), zip_member: bool = False) -> bool:
    """Whether a file is an image candidate: not junk (``is_junk``), or named exactly as one of
    the rows' guids (``KP.THM`` is row ``KP.THM``'s image, not a camera thumbnail) outside a hidden folder."""
    parts = _path_parts(member, zip_member)
    return not is_junk(member, zip_member) or (_known(parts[-1], known_guids) is not None and not _in_hidden_folder(parts))


def known_guids(rows: Iterable) -> KnownGuids:
    """The guids of input rows (``InputRow``s; rows without one left out), for ``guid_of``."""
    return KnownGuids(row.guid for row in rows if row.guid)


def images_by_guid(names: Iterable[str], known_guids: Collection[str] = (), zip_member: bool = False, meant: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """guid (``guid_of`` with ``known_guids``) -> its file names, sorted; hidden files and
    sidecars (``is_junk``) left out, unless the whole name is a known guid (row ``KP.THM``'s file
    ``KP.THM`` is its image). More than one name for a guid means the guid's image is ambiguous.
    ``meant``: a name -> the name its guid is read from (``meant_name``), where they differ."""
    meant = meant or {}
    exactly = frozenset(known_guids)  # spelled as the rows spell them, no other Unicode form
    members: dict[str, list[str]] = defaultdict(list)
    other_form: list[tuple[str, str, str]] = []  # (row's guid, the file's own guid, name)
    for name in names:
        shown = meant.get(name, name)
        if is_indexed(shown, known_guids, zip_member):
            guid = guid_of(shown, known_guids, zip_member)
            own = guid_of(shown, exactly, zip_member)
            if guid == own:
                members[guid].append(name)
            else:
                other_form.append((guid, own, name))
    # A name in another Unicode form is its row's image unless a file spelled exactly as the row
    # is there too (a folder re-copied from macOS): then it stays apart, not "ambiguous" beside it.
    spelled_exactly = set(members)
    for guid, own, name in other_form:
        members[own if guid in spelled_exactly else guid].append(name)
    return {guid: sorted(found) for guid, found in members.items()}


def build_index(location: str, s3: S3Options | None = None, known_guids: Collection[str] = ()) -> ImageIndex:
    """List the images at ``location`` (a .zip or a directory) without reading them; file names
    map to guids through ``guid_of`` with ``known_guids`` (the input rows' guids)."""
    unsafe: dict[str, str] = {}
    meant: dict[str, str] = {}  # a zip member's name -> the name its archiver meant, where they differ
    digest = hashlib.sha256()
    if storage.is_dir(location, s3):
        stats = storage.list_file_stats(location, s3, recursive=True)
        names = [name for name, _, _ in stats]
        for name, size, changed_ns in stats:
            if is_indexed(name, known_guids):  # Finder rewrites .DS_Store on a look: no reason to decode again
                digest.update(f"{name}\t{size}\t{changed_ns}\n".encode())
        kind = "dir"
    else:
        names = []
        with storage.open_input_file(location, s3) as handle:
            try:
                archive = zipfile.ZipFile(handle)
            except zipfile.BadZipFile as exc:
                raise storage.StorageError(f"{location}: not a zip archive nor a directory ({exc})") from None
            for info in archive.infolist():
                if info.is_dir():
                    continue
                digest.update(f"{info.filename}\t{info.file_size}\t{info.CRC}\n".encode())
                reason = unsafe_member_reason(info.filename)
                if reason:
                    unsafe[info.filename] = reason
                else:
                    names.append(info.filename)  # the name the archive is read by
                meant[info.filename] = meant_name(info, known_guids)
        meant = {name: as_meant for name, as_meant in meant.items() if as_meant != name}
        if meant:
            log.info("%s: %d names without the archive's UTF-8 flag read in their archiver's encoding (e.g. %s)", location, len(meant), next(iter(meant.values())))
        kind = "zip"
    zip_members = kind == "zip"
    unsafe_by_guid = {guid_of(meant.get(m, m), known_guids, zip_members): reason for m, reason in unsafe.items() if is_indexed(meant.get(m, m), known_guids, zip_members)}
    return ImageIndex(location, kind, images_by_guid(names, known_guids, zip_members, meant), unsafe, f"{kind}:{digest.hexdigest()}", unsafe_by_guid)


class ImageReader:
    """Reads image files on an executor; opens the archive once per task, not per image."""

    def __init__(self, location: str, kind: str, s3: S3Options | None, max_bytes: int):
        self.location, self.kind, self.s3, self.max_bytes = location, kind, s3, max_bytes
        self._handle = None
        self._archive: zipfile.ZipFile | None = None

    def __enter__(self) -> ImageReader:
        if self.kind == "zip":
            self._handle = storage.open_input_file(self.location, self.s3)
            self._archive = zipfile.ZipFile(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._archive is not None:
            self._archive.close()
        if self._handle is not None:
            self._handle.close()

    def read(self, member: str) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, reason) when the file is too large or unreadable."""
        try:
            if self._archive is not None:
                info = self._archive.getinfo(member)
                if info.file_size > self.max_bytes:
                    return None, f"file too large: {info.file_size} bytes > images.max_bytes={self.max_bytes}"
                with self._archive.open(info) as stream:
                    # Read at most one byte over the cap: a lying header can't make us read a zip bomb.
                    data = stream.read(self.max_bytes + 1)
            else:
                # Check the size before reading: read-then-compare would hold a huge file in memory
                # (twice, through Arrow's buffer) only to refuse it.
                within, size = storage.read_bytes_within(storage.join(self.location, member), self.max_bytes, self.s3)
                if within is None:
                    return None, f"file too large: {size} bytes > images.max_bytes={self.max_bytes}"
                data = within
        except (zlib.error, lzma.LZMAError, NotImplementedError) as exc:
            # A corrupt compressed stream (deflate: zlib.error, lzma: LZMAError; bzip2 raises
            # OSError, caught below) or a compression method zipfile can't read is one bad member,
            # not a reason to fail the Spark task and with it the whole ingest.
            return None, f"unreadable archive member {member!r}: corrupt or unsupported compressed data ({type(exc).__name__}: {exc})"
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
            return None, f"unreadable file {member!r}: {type(exc).__name__}: {exc}"
        if len(data) > self.max_bytes:
            return None, f"file too large: over images.max_bytes={self.max_bytes}"
        return data, None
