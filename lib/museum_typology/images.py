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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is flattened onto white (catalogue photos of objects
    on transparent backgrounds look like their white-background siblings)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the real range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).astype(np.uint8), mode="L")
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


def decode_image(raw: bytes, max_side: int, max_pixels: int = 80_000_000, max_bytes: int = 50_000_000) -> DecodedImage:
    """Decode ``raw`` into an RGB uint8 array whose longer side is at most ``max_side``."""
    digest = hashlib.sha256(raw).hexdigest()
    size = len(raw)

    def fail(reason: str, **extra: object) -> DecodedImage:
        return DecodedImage(sha256=digest, num_bytes=size, reason=reason, **extra)  # type: ignore[arg-type]

    if size == 0:
        return fail("empty file (0 bytes)")
    if size > max_bytes:
        return fail(f"file too large: {size} bytes > images.max_bytes={max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and 2x; we refuse at our own cap.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            fmt = image.format
            if fmt not in ACCEPTED_FORMATS:
                return fail(f"unsupported image format {fmt}")
            width, height = image.size
            if width <= 0 or height <= 0:
                return fail(f"invalid dimensions {width}x{height}", format=fmt)
            if width * height > max_pixels:
                return fail(
                    f"decompression bomb guard: {width}x{height} = {width * height} pixels > images.max_pixels={max_pixels}",
                    format=fmt,
                    orig_width=width,
                    orig_height=height,
                )
            if fmt == "JPEG" and max_side > 0:
                # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale: big scans decode ~10x faster.
                image.draft("RGB", (max_side, max_side))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            if max_side > 0 and max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            pixels = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        return fail("not an image: content matches no known image format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return fail(f"decompression bomb guard: {exc}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated data, broken chunks, bad EXIF: Pillow's readers raise these.
        return fail(f"corrupt image: {type(exc).__name__}: {exc}")
    except MemoryError:
        return fail("corrupt image: MemoryError while decoding")
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
