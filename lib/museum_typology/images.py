"""The one decode path for ingest, crawl and score: sniff, guard, decode, orient, convert,
cap the size, hash.

Pure: bytes in, a ``DecodedImage`` out. Any failure is a result with a reason, never an
exception, so a single bad file can't crash a Spark task or lose its row.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Formats we accept, by content (Pillow's sniffers), whatever the file name says.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"})

# Truncated files must fail, not decode into half-grey images that poison training.
ImageFile.LOAD_TRUNCATED_IMAGES = False

JPEG_FORMATS = frozenset({"JPEG", "MPO"})
JPEG_EOI = b"\xff\xd9"

# A JPEG cut short inside its scan data but ending in an EOI marker (its own, or the one we add
# to a file that lacks only its EOI) decodes without error: libjpeg gives every missing block
# all-zero coefficients, so the missing MCU rows come out exactly 128 in every channel (127 or
# 128 per ink of an Adobe CMYK/YCCK JPEG, which Pillow inverts). Such a file is refused when
# its bottom rows are exactly one fill value across the full width over at least this many MCU
# rows (8 px, 16 px for vertically subsampled chroma), counted at the decoded (draft) scale. With
# vertically subsampled chroma at full scale the first fill row is one row short: libjpeg's fancy
# upsampling blends it with the last real row (measured with libjpeg-turbo 3: a missing 16-px MCU
# row gives 15 exact rows). Exact fill values over a whole MCU row keep real photos with a uniform
# border out: 7 of the 87 JPEGs among the 153 shared images end in exactly uniform black or white
# bands of 8 to 96 rows, none at a fill value. A cut inside the last MCU row is not caught, and
# loses less than that row. A progressive JPEG cut after its first (DC) scan decodes blurred, not
# flat, and is not caught either (hence no EOI retry for progressive JPEGs below).
JPEG_FILL_BAND_MCU_ROWS = 1
# ... and when the row just above the band (real data, where the file was cut) differs from the
# fill somewhere by at least this much. A genuine smooth grey backdrop also compresses to exact 128
# over many rows (a 128 +- 1 backdrop at quality 75 does), but the rows above it are grey too,
# so it is kept; a cut lands in arbitrary content. A whole image of exact fill has no such row
# and is refused (a file cut at its first MCU row, or a blank grey placeholder).
JPEG_FILL_EDGE_MIN_DIFFERENCE = 16
_JPEG_FILL_LEVELS = {"L": (128,), "RGB": (128,), "CMYK": (127, 128)}


@dataclass(frozen=True)
class DecodedImage:
    """The result of decoding one file. ``pixels`` is None exactly when ``reason`` is set."""

    sha256: str
    num_bytes: int
    pixels: np.ndarray | None = None  # H x W x 3, uint8, RGB
    orig_width: int | None = None
    orig_height: int | None = None
    format: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.pixels is not None


def _scale_to_l(array: np.ndarray, full_scale: float | None) -> Image.Image:
    """Deep greyscale -> 8-bit "L". With a known ``full_scale`` (65535 for 16-bit) the value is
    scaled linearly, so a dark scan stays dark and a white one white; only without one (floats,
    out-of-range ints) is the actual range stretched."""
    array = np.nan_to_num(array.astype(np.float32, copy=False))
    if full_scale is None:
        low, high = float(array.min()), float(array.max())
        if high > low:
            array = (array - low) * (255.0 / (high - low))
        # A constant image has no range to stretch: keep its value if it is a plain 0..255 one.
    else:
        array = array * (255.0 / full_scale)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is flattened onto white (catalogue photos of objects
    on transparent backgrounds look like their white-background siblings)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image)
        if image.mode == "I":
            # 32-bit ints: usually 16-bit data widened by a reader (old Pillow PNG, TIFF).
            low, high = int(array.min()), int(array.max())
            full_scale = 255.0 if 0 <= low and high <= 255 else 65535.0 if 0 <= low and high <= 65535 else None
        else:
            full_scale = 65535.0  # 16-bit greyscale: 65535 is white (Pillow's convert clips > 255 to white)
        key = image.info.get("transparency")
        image = _scale_to_l(array, full_scale)
        if isinstance(key, int) and not isinstance(key, bool):
            # A tRNS grey key on a 16-bit PNG: the key is a 16-bit value, so it is matched before
            # scaling (afterwards other greys share its 8-bit value), and those pixels go white.
            flattened = np.asarray(image).copy()
            flattened[array == key] = 255
            image = Image.fromarray(flattened, mode="L")
    elif image.mode == "F":
        image = _scale_to_l(np.asarray(image), None)
    key = image.info.get("transparency")
    if image.mode == "RGB" and isinstance(key, tuple) and any(isinstance(c, int) and c > 255 for c in key):
        # A 16-bit RGB PNG: Pillow gives 8-bit pixels (each value's high byte) but keeps the
        # 16-bit key and compares it by its low byte, so a key of 0x8000 grey turned black pixels
        # white and left the transparent ones grey. The high bytes are what the pixels hold.
        image.info["transparency"] = tuple(int(c) >> 8 for c in key)
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        # A tRNS colour key on a greyscale/RGB PNG: that colour is transparent, so white.
        image = image.convert("RGBA")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode == "CMYK":
        # Adobe-style inverted CMYK JPEGs come out right through Pillow's own conversion.
        return image.convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as stored in the file. Pillow reports a TIFF's size already turned by its
    Orientation tag (5-8 swap the sides); every other reader gives the stored one."""
    if image.format == "TIFF":
        width, height = image.tag_v2.get(256), image.tag_v2.get(257)  # ImageWidth, ImageLength
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return image.size


def _draft_and_load(image: Image.Image, max_side: int) -> None:
    """Decode ``image``'s pixels; a big JPEG at the smallest libjpeg scale that keeps the longer
    side >= ``max_side``."""
    width, height = image.size
    if image.format in JPEG_FORMATS and max_side > 0 and max(width, height) > max_side:
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale: big scans decode ~10x
        # faster. Pillow picks the largest scale that keeps *both* sides >= the requested
        # box, so ask for the capped size with the same aspect (a square box would let the
        # short side block any reduction of a wide image). The longer side stays >= max_side.
        longer = max(width, height)
        image.draft("RGB", (max(1, -(-width * max_side // longer)), max(1, -(-height * max_side // longer))))
    image.load()


def _is_truncation(exc: BaseException) -> bool:
    """Pillow's error for a file whose data ends before the decoder is done."""
    return isinstance(exc, OSError) and str(exc).startswith("image file is truncated")


def _jpeg_fill_rows(image: Image.Image, orig_width: int, orig_height: int) -> int:
    """How many bottom rows of a decoded (not yet transposed) JPEG are libjpeg's fill for missing
    data, in the file's own rows; 0 unless there are at least JPEG_FILL_BAND_MCU_ROWS MCU rows of
    it. Costs one pixel read for almost every image, a slice of the bottom rows for the rest."""
    levels = _JPEG_FILL_LEVELS.get(image.mode)
    if levels is None:
        return 0
    width, height = image.size
    corner = image.getpixel((0, height - 1))
    fill = corner if isinstance(corner, tuple) else (corner,)
    if any(value not in levels for value in fill):
        return 0
    # The draft scale (1, 2, 4 or 8): Pillow rounds the scaled sides up.
    scale = next((s for s in (1, 2, 4, 8) if (-(-orig_width // s), -(-orig_height // s)) == (width, height)), 1)
    layers = getattr(image, "layer", None) or []
    v_sampling = max((layer[2] for layer in layers), default=1) if len(layers) > 1 else 1
    mcu_rows = -(-8 * v_sampling // scale)
    fancy_upsampling_loss = 1 if v_sampling > 1 and scale == 1 else 0
    required = min(height, max(1, JPEG_FILL_BAND_MCU_ROWS * mcu_rows - fancy_upsampling_loss))
    target = np.asarray(fill, dtype=np.uint8)
    rows, step = 0, required
    while rows < height:  # the first slice decides; the rest only measures a refused file's band
        top = max(0, height - rows - step)
        band = np.asarray(image.crop((0, top, width, height - rows)))
        flat = (band == target).reshape(band.shape[0], -1).all(axis=1)
        if not flat.all():
            rows += band.shape[0] - 1 - int(np.flatnonzero(~flat)[-1])
            break
        rows, step = rows + band.shape[0], step * 2
    if rows < required:
        return 0
    if rows < height:
        # The last row of real data. With fancy upsampling the row above the exact fill may be
        # the blended one: the fill's luma with a chroma halfway to neutral, so in a photo of
        # muted colours within a level or two of the fill, and the cut passed for a backdrop.
        # It is taken for the blended row only if its luma is the fill's: an honest grey ramp
        # into a grey band has its own luma there.
        edge = height - rows - 1
        if fancy_upsampling_loss and edge >= 1 and _has_fill_luma(image.crop((0, edge, width, edge + 1)), int(target[0])):
            edge -= 1
        above = np.asarray(image.crop((0, edge, width, edge + 1)), dtype=np.int16)
        if int(np.abs(above - target.astype(np.int16)).max()) < JPEG_FILL_EDGE_MIN_DIFFERENCE:
            return 0  # grey fading into grey: a backdrop, not a cut
    return min(orig_height, rows * scale)


def _has_fill_luma(row: Image.Image, fill: int) -> bool:
    """Whether a decoded RGB row's luma is the fill value across it (within the colour
    conversion's rounding): libjpeg's fill for missing data in luma, whatever its chroma."""
    if row.mode != "RGB":
        return True  # (CMYK) no luma to tell by: take it for the blended row, as a cut is likelier
    luma = np.asarray(row.convert("L"), dtype=np.int16)
    return int(np.abs(luma - fill).max()) <= 1


# ISO base media "ftyp" brands of HEIF/HEIC images, which Pillow cannot read without a plugin.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def _let_pillow_open_up_to(max_pixels: int) -> None:
    """Pillow refuses, as it opens a file, an image of more than twice its process-wide
    ``Image.MAX_IMAGE_PIXELS`` (~179 Mpx): a larger ``images.max_pixels`` had no effect. Raise
    that limit to half of ``max_pixels`` when it is lower; never lower it (it is process-wide)."""
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


def decode_image(raw: bytes, max_side: int, max_pixels: int = 80_000_000, max_bytes: int = 50_000_000, stored: bool = False) -> DecodedImage:
    """Decode ``raw`` into an RGB uint8 array whose longer side is at most ``max_side``.

    ``stored``: bytes ingest or crawl stored after decoding the original (a dataset row). Their
    bottom is not checked for a truncated JPEG's grey fill: the original passed that check, and
    an image with a grey-128 band at its bottom (a PNG, say, stored as JPEG) would be refused at
    scoring though training (petastorm's codec) used it."""
    digest = hashlib.sha256(raw).hexdigest()
    size = len(raw)

    def fail(reason: str, **extra: object) -> DecodedImage:
        return DecodedImage(sha256=digest, num_bytes=size, reason=reason, **extra)  # type: ignore[arg-type]

    if size == 0:
        return fail("empty file (0 bytes)")
    if size > max_bytes:
        return fail(f"file too large: {size} bytes > images.max_bytes={max_bytes}")
    _let_pillow_open_up_to(max_pixels)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below is the authority (Pillow's warning at its fixed
            # ~89 Mpx would silently cap a larger configured limit); Pillow still *raises*
            # DecompressionBombError past 2x its limit, before anything is allocated, a limit
            # raised to max_pixels at least (above).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            fmt = image.format
            if fmt not in ACCEPTED_FORMATS:
                return fail(f"unsupported image format {fmt}")
            width, height = _stored_size(image)
            if width <= 0 or height <= 0:
                return fail(f"invalid dimensions {width}x{height}", format=fmt)
            if width * height > max_pixels:
                return fail(
                    f"decompression bomb guard: {width}x{height} = {width * height} pixels > images.max_pixels={max_pixels}",
                    format=fmt,
                    orig_width=width,
                    orig_height=height,
                )
            try:
                _draft_and_load(image, max_side)
            except OSError as exc:
                # Some scanners and servers drop a baseline JPEG's final EOI marker although every
                # pixel is there: try once more with it added. The fill check below refuses the
                # result when the data really ended early. Not for progressive JPEGs: cut after
                # their first scan they decode blurred, not flat, which no cheap check can see.
                progressive = bool(image.info.get("progressive"))
                if not (fmt in JPEG_FORMATS and not progressive and _is_truncation(exc) and not raw.endswith(JPEG_EOI)):
                    raise
                try:
                    image = Image.open(io.BytesIO(raw + JPEG_EOI))
                    _draft_and_load(image, max_side)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    raise exc from None
            if fmt in JPEG_FORMATS and not stored:
                fill_rows = _jpeg_fill_rows(image, width, height)
                if fill_rows:
                    return fail(
                        f"corrupt image: JPEG data ends early: the bottom {fill_rows} of {height} rows are flat grey (truncated file)",
                        format=fmt,
                        orig_width=width,
                        orig_height=height,
                    )
            try:
                ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose good pixels
                pass
            image = _to_rgb(image)
            if max_side > 0 and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            pixels = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        if raw[4:8] == b"ftyp" and raw[8:12] in HEIF_BRANDS:  # phones' photos: say what it is
            return fail("unsupported image format HEIC (convert it to JPEG)")
        return fail("not an image: content matches no known image format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # past max_pixels too, see above
        return fail(f"decompression bomb guard: more than images.max_pixels={max_pixels} pixels ({exc})")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated data, broken chunks, bad EXIF: Pillow's readers raise these.
        return fail(f"corrupt image: {type(exc).__name__}: {exc}")
    except MemoryError:
        return fail("corrupt image: MemoryError while decoding")
    except Exception as exc:  # noqa: BLE001 - Pillow's readers leak struct.error, IndexError, ...
        return fail(f"corrupt image: {type(exc).__name__}: {exc}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        return fail(f"unexpected decoded shape {pixels.shape}")
    # exif_transpose may swap sides; report the original as stored in the file's orientation.
    return DecodedImage(
        sha256=digest,
        num_bytes=size,
        pixels=np.ascontiguousarray(pixels),
        orig_width=width,
        orig_height=height,
        format=fmt,
    )


def as_stored(pixels: np.ndarray, codec: str, jpeg_quality: int) -> np.ndarray:
    """The pixels as the dataset gives them back after storing them with ``codec``: the models
    are trained on images that ingest and crawl stored as JPEG (``images.codec``), so an image
    scored from its file goes through the same compression, or its probabilities shift (a median
    pixel change of 1.7 and up to 0.15 in a class probability on the shared images). PNG is
    lossless. Pillow encodes as ``petastorm_io.encode_image`` does; Pillow and petastorm's cv2
    decode such a JPEG to the same pixels."""
    if codec != "jpeg":
        return pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=jpeg_quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        return np.asarray(image.convert("RGB"))
