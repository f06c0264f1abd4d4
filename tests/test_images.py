"""A zoo of images, each built here in memory, through the one decode path (images.decode_image).

Every case checks the outcome (pixels of the right shape and content, or a reason with a specific
phrase) and that the sha256 is the hash of the raw bytes, decoded or not.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from museum_typology import petastorm_io, storage
from museum_typology.image_source import ImageReader
from museum_typology.images import DecodedImage, decode_image
from museum_typology.schema import make_image_schema

MAX_SIDE = 512
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# ---------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """Gradients: JPEG keeps them within a few levels, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // (width + height)], axis=-1).astype(np.uint8)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a bomb in a few bytes."""
    raw = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    return bytes(raw)


def decode(raw: bytes, max_side: int = MAX_SIDE, **kwargs: int) -> DecodedImage:
    """Decode and check the invariants every result must hold, whatever the outcome."""
    result = decode_image(raw, max_side, **kwargs)
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert result.num_bytes == len(raw)
    assert (result.pixels is None) == (result.reason is not None)
    if result.ok:
        assert result.pixels.dtype == np.uint8 and result.pixels.ndim == 3 and result.pixels.shape[2] == 3
        assert result.pixels.flags.c_contiguous
    return result


def assert_ok(raw: bytes, shape: tuple[int, int], fmt: str, max_side: int = MAX_SIDE) -> np.ndarray:
    result = decode(raw, max_side)
    assert result.ok, result.reason
    assert result.format == fmt
    assert result.pixels.shape == (*shape, 3)
    return result.pixels


def assert_fails(raw: bytes, phrase: str, **kwargs: int) -> DecodedImage:
    result = decode(raw, MAX_SIDE, **kwargs)
    assert not result.ok
    assert phrase.lower() in result.reason.lower(), result.reason
    return result


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------- valid files in every accepted format


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_lossless_formats_round_trip_exactly(fmt: str, params: dict[str, object]) -> None:
    source = random_rgb(40, 60)
    pixels = assert_ok(encode(Image.fromarray(source), fmt, **params), (40, 60), fmt)
    np.testing.assert_array_equal(pixels, source)


def test_jpeg_matches_source_within_compression_error() -> None:
    source = smooth_rgb(48, 64)
    pixels = assert_ok(encode(Image.fromarray(source), "JPEG", quality=95), (48, 64), "JPEG")
    assert mean_abs_diff(pixels, source) < 3


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (30, 20), colour) for colour in (RED, GREEN, BLUE)]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(raw)).n_frames == 3  # really animated, or the test proves nothing
    pixels = assert_ok(raw, (20, 30), "GIF")
    assert (pixels == RED).all()


def test_grayscale_becomes_three_equal_channels() -> None:
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    pixels = assert_ok(encode(Image.fromarray(grey, "L"), "PNG"), (10, 64), "PNG")
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], grey)


def test_cmyk_jpeg_keeps_its_colours() -> None:
    # Pure magenta+yellow ink is red; a wrong (non-inverted) Adobe CMYK read comes out cyan-ish.
    raw = encode(Image.new("CMYK", (32, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    pixels = assert_ok(raw, (16, 32), "JPEG")
    assert mean_abs_diff(pixels, np.full_like(pixels, RED)) < 8


# ---------------------------------------------------------------- transparency -> white


def test_palette_transparency_becomes_white() -> None:
    indices = np.zeros((10, 20), dtype=np.uint8)
    indices[:, 10:] = 1  # right half: opaque blue; left half: index 0, transparent black
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    pixels = assert_ok(encode(image, "PNG", transparency=0), (10, 20), "PNG")
    assert (pixels[:, :10] == 255).all()
    assert (pixels[:, 10:] == BLUE).all()


def test_la_transparent_pixels_become_white() -> None:
    luminance = np.full((8, 16), 40, dtype=np.uint8)
    alpha = np.zeros((8, 16), dtype=np.uint8)
    alpha[:, 8:] = 255
    image = Image.merge("LA", [Image.fromarray(luminance), Image.fromarray(alpha)])
    pixels = assert_ok(encode(image, "PNG"), (8, 16), "PNG")
    assert (pixels[:, :8] == 255).all()
    assert (pixels[:, 8:] == 40).all()


def test_rgba_transparent_pixels_become_white_and_partial_alpha_blends() -> None:
    rgba = np.zeros((8, 24, 4), dtype=np.uint8)  # black everywhere
    rgba[:, 8:16, 3] = 128  # half-transparent black over white: mid-grey
    rgba[:, 16:, 3] = 255  # opaque black stays black
    pixels = assert_ok(encode(Image.fromarray(rgba, "RGBA"), "PNG"), (8, 24), "PNG")
    assert (pixels[:, :8] == 255).all()
    assert (np.abs(pixels[:, 8:16].astype(int) - 127) <= 2).all()
    assert (pixels[:, 16:] == 0).all()


def test_rgb_png_with_colour_key_transparency_becomes_white() -> None:
    source = np.zeros((6, 12, 3), dtype=np.uint8)
    source[:, 6:] = GREEN  # left: black, declared transparent by the tRNS colour key
    pixels = assert_ok(encode(Image.fromarray(source), "PNG", transparency=(0, 0, 0)), (6, 12), "PNG")
    assert (pixels[:, :6] == 255).all()
    assert (pixels[:, 6:] == GREEN).all()


# ---------------------------------------------------------------- 16-bit greyscale


def test_16bit_greyscale_is_scaled_not_clipped_or_stretched() -> None:
    # A mid-range ramp: clipping would make it all white, a min-max stretch would make it 0..255.
    values = np.linspace(1000, 40000, 64).astype(np.uint16)
    image = Image.fromarray(np.tile(values, (4, 1)))
    raw = encode(image, "PNG")
    assert Image.open(io.BytesIO(raw)).mode == "I;16"  # the case under test, as Pillow reads it
    pixels = assert_ok(raw, (4, 64), "PNG")
    expected = np.round(values / 257.0)
    assert (np.abs(pixels[0, :, 0].astype(int) - expected) <= 1).all()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_16bit_constant_image_keeps_its_level() -> None:
    # No range to stretch: a flat 16-bit scan at 40000 is ~155 grey, not black.
    pixels = assert_ok(encode(Image.fromarray(np.full((5, 7), 40000, dtype=np.uint16)), "PNG"), (5, 7), "PNG")
    assert (np.abs(pixels.astype(int) - 156) <= 1).all()


def test_16bit_greyscale_with_a_trns_key_flattens_exactly_that_value_to_white() -> None:
    # Key 1000; 1100 scales to the same 8-bit grey (4) but is not transparent.
    values = np.full((4, 6), 40000, dtype=np.uint16)
    values[:, 0], values[:, 1] = 1000, 1100
    raw = encode(Image.fromarray(values), "PNG", transparency=1000)
    assert Image.open(io.BytesIO(raw)).info.get("transparency") == 1000  # the case under test
    pixels = assert_ok(raw, (4, 6), "PNG")
    assert (pixels[:, 0] == 255).all()  # transparent: white, as other transparency is
    assert (np.abs(pixels[:, 1].astype(int) - 4) <= 1).all() and (np.abs(pixels[:, 2:].astype(int) - 156) <= 1).all()


def test_16bit_rgb_with_a_trns_key_whitens_the_key_colour_not_black() -> None:
    import struct
    import zlib

    # Pillow cannot write one: a 1x4 16-bit RGB PNG by hand, tRNS = 0x8000 grey.
    pixels16 = [(0, 0, 0), (0, 0, 0x80), (0x8000, 0x8000, 0x8000), (65535, 0, 0)]
    raw = b"\x00" + b"".join(struct.pack(">HHH", *p) for p in pixels16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 16, 2, 0, 0, 0))
           + chunk(b"tRNS", struct.pack(">HHH", 0x8000, 0x8000, 0x8000)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert Image.open(io.BytesIO(png)).info["transparency"] == (0x8000, 0x8000, 0x8000)  # the case under test
    got = assert_ok(png, (1, 4), "PNG")[0].tolist()
    assert got == [[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 0, 0]]  # black stays black, the key goes white


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_exif_orientation_6_is_applied(fmt: str) -> None:
    # Stored 64 wide x 32 high, red block in the stored top-left. Orientation 6 = "rotate 90 degrees
    # clockwise to display": the display is 32 wide x 64 high and the red block is top-right.
    # Background 100, not 128: exact 128 across the bottom rows is libjpeg's fill for a cut file.
    # A TIFF carries the orientation as a tag of its own, and Pillow reports its size turned.
    stored = np.full((32, 64, 3), 100, dtype=np.uint8)
    stored[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    if fmt == "JPEG":
        raw = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    else:
        raw = encode(Image.fromarray(stored), "TIFF", tiffinfo={0x0112: 6})
    result = decode(raw)
    assert result.ok, result.reason
    assert result.pixels.shape == (64, 32, 3)
    assert (result.orig_width, result.orig_height) == (64, 32)  # as stored in the file
    top_right = result.pixels[1:7, 25:31].astype(int)
    top_left = result.pixels[1:7, 1:7].astype(int)
    assert (np.abs(top_right - RED) < 40).all()
    assert (np.abs(top_left - 100) < 40).all()


def test_broken_exif_does_not_lose_the_image() -> None:
    raw = encode(Image.fromarray(smooth_rgb(16, 16)), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    result = decode(raw)
    assert result.ok, result.reason
    assert result.pixels.shape == (16, 16, 3)


# ---------------------------------------------------------------- size cap and draft mode


def test_big_jpeg_is_capped_keeping_aspect_via_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = encode(Image.fromarray(smooth_rgb(1500, 3000)), "JPEG", quality=90)
    drafts: list[tuple[int, int]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original_draft(self, mode, size)
        drafts.append(self.size)  # the size libjpeg will actually decode at
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    result = decode(raw, 512)
    assert result.ok, result.reason
    assert result.pixels.shape == (256, 512, 3)
    assert (result.orig_width, result.orig_height) == (3000, 1500)
    # Draft must have cut the decode by at least 4x per side (750x375), not just 2x (a square draft
    # box lets the short side block the reduction of a wide image).
    assert drafts and max(drafts[0]) <= 750 and max(drafts[0]) >= 512
    # Still the same picture: compare with a plain resize of the source.
    reference = np.asarray(Image.fromarray(smooth_rgb(1500, 3000)).resize((512, 256), Image.Resampling.BILINEAR))
    assert mean_abs_diff(result.pixels, reference) < 4


def test_cap_applies_to_the_longer_side_of_tall_images() -> None:
    pixels = assert_ok(encode(Image.fromarray(random_rgb(300, 100)), "PNG"), (150, 50), "PNG", max_side=150)
    assert pixels.shape == (150, 50, 3)


def test_small_image_is_not_upscaled_and_zero_max_side_means_no_cap() -> None:
    raw = encode(Image.fromarray(random_rgb(30, 700)), "PNG")
    assert_ok(raw, (30, 700), "PNG", max_side=0)
    assert_ok(raw, (30, 700), "PNG", max_side=1000)


# ---------------------------------------------------------------- failures, each with its reason


def test_truncated_jpeg_fails_as_corrupt() -> None:
    raw = encode(Image.fromarray(random_rgb(200, 200)), "JPEG")
    result = assert_fails(raw[: len(raw) // 2], "corrupt image")
    assert "truncated" in result.reason.lower()


def test_truncated_png_fails_as_corrupt() -> None:
    raw = encode(Image.fromarray(random_rgb(100, 100)), "PNG")
    assert_fails(raw[: len(raw) // 2], "truncated")


def noisy_jpeg(mode: str = "RGB", height: int = 200, width: int = 300, **params: object) -> bytes:
    """A JPEG with detail in every row (a gradient plus noise), so no row decodes flat."""
    pixels = np.clip(smooth_rgb(height, width).astype(np.int16) + random_rgb(height, width) // 8 - 16, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels).convert(mode), "JPEG", quality=90, **params)


# (mode, encoder params, max_side): 4:2:0 (16-px MCUs), 4:4:4 and greyscale (8 px), Adobe CMYK,
# and a 1/4-scale draft decode (300x200 drafted to 75x50).
JPEG_KINDS = [
    pytest.param("RGB", {}, MAX_SIDE, id="rgb-420"),
    pytest.param("RGB", {"subsampling": 0}, MAX_SIDE, id="rgb-444"),
    pytest.param("L", {}, MAX_SIDE, id="grey"),
    pytest.param("CMYK", {}, MAX_SIDE, id="cmyk"),
    pytest.param("RGB", {}, 40, id="rgb-420-draft"),
]


@pytest.mark.parametrize(("mode", "params", "max_side"), JPEG_KINDS)
def test_jpeg_without_its_eoi_marker_decodes_to_the_same_pixels(mode: str, params: dict[str, object], max_side: int) -> None:
    raw = noisy_jpeg(mode, **params)
    assert raw.endswith(b"\xff\xd9")
    reference = decode(raw, max_side)
    assert reference.ok, reference.reason
    result = decode(raw[:-2], max_side)  # every pixel there, only the end marker gone
    assert result.ok, result.reason
    np.testing.assert_array_equal(result.pixels, reference.pixels)
    assert (result.format, result.orig_width, result.orig_height) == ("JPEG", 300, 200)


@pytest.mark.parametrize("end_marker", [b"\xff\xd9", b""], ids=["cut-then-eoi", "cut-no-eoi"])
@pytest.mark.parametrize(("mode", "params", "max_side"), JPEG_KINDS)
def test_jpeg_cut_in_its_scan_data_is_refused_for_its_flat_grey_bottom(
    mode: str, params: dict[str, object], max_side: int, end_marker: bytes
) -> None:
    # libjpeg decodes a cut file that ends in EOI (its own by chance, or the one decode_image adds
    # to a file without one) with no error: the missing rows come out flat grey (128).
    raw = noisy_jpeg(mode, **params)
    result = assert_fails(raw[: len(raw) * 6 // 10] + end_marker, "corrupt image: JPEG data ends early: the bottom")
    assert "rows are flat grey (truncated file)" in result.reason
    rows = int(result.reason.split("the bottom ")[1].split(" of 200 rows")[0])
    assert 40 <= rows <= 120  # about 40% of the 200 rows, counted in the file's rows even when drafted
    assert (result.format, result.orig_width, result.orig_height) == ("JPEG", 300, 200)


@pytest.mark.parametrize("max_side", [MAX_SIDE, 200])
def test_a_cut_jpeg_of_muted_colours_is_refused_too(max_side: int) -> None:
    """4:2:0 at full scale: the row above the exact fill is blended by fancy upsampling (the
    fill's luma, a chroma halfway to neutral), within a level or two of 128 in a photo of muted
    colours, so the cut passed for a grey backdrop (73 of 261 cuts of the shared JPEGs did)."""
    rng = np.random.default_rng(0)
    grey = np.clip(np.linspace(40, 220, 300)[None, :] + rng.normal(0, 20, (200, 300)), 0, 255).astype(np.uint8)
    raw = encode(Image.fromarray(np.stack([grey, np.clip(grey.astype(np.int16) + 6, 0, 255).astype(np.uint8), grey], axis=2)), "JPEG", quality=90)
    for tenths in (3, 5, 7):
        result = decode(raw[: len(raw) * tenths // 10], max_side)
        assert not result.ok and "JPEG data ends early" in result.reason, (tenths, result.reason)


@pytest.mark.parametrize("step", [8, 12])
def test_an_honest_grey_ramp_into_a_grey_band_is_accepted(step: int) -> None:
    """The row above the band is the ramp's own (its luma is not the fill's), not a blended one:
    compared one row higher, the ramp's step looked like a cut."""
    rows = np.arange(256)[:, None]
    grey = np.where(rows < 208, np.clip(128 + step * (208 - rows), 0, 255), 128).astype(np.uint8) * np.ones((1, 256), np.uint8)
    raw = encode(Image.fromarray(np.stack([grey] * 3, axis=2)), "JPEG", quality=90)
    decoded = assert_ok(raw, (256, 256), "JPEG", max_side=1000)
    assert (decoded[-32:] == 128).all()  # really the fill value over two MCU rows


def test_a_stored_image_is_not_checked_for_a_cut() -> None:
    """Bytes ingest or crawl stored (the original passed the check) keep a grey-128 band: a
    PNG with one, stored as JPEG, was refused at scoring though training used it."""
    pixels = np.zeros((128, 96, 3), dtype=np.uint8)
    pixels[:96] = (230, 0, 0)
    pixels[96:] = 128
    raw = encode(Image.fromarray(pixels), "JPEG", quality=95)
    assert_fails(raw, "JPEG data ends early")
    stored = decode_image(raw, MAX_SIDE, stored=True)
    assert stored.ok and (stored.pixels[-16:] == 128).all()


def test_progressive_jpeg_without_its_eoi_stays_refused_as_truncated() -> None:
    # Cut after its first scan a progressive JPEG decodes blurred rather than flat, which no cheap
    # check sees, so it gets no retry with an EOI added.
    raw = noisy_jpeg(progressive=True)
    result = assert_fails(raw[: len(raw) * 6 // 10], "corrupt image: OSError: image file is truncated")
    assert "ends early" not in result.reason


@pytest.mark.parametrize(
    "bottom",
    [
        pytest.param((255, 255, 255), id="white-band"),
        pytest.param((0, 0, 0), id="black-band"),
        pytest.param((127, 127, 127), id="grey-127-band"),
        pytest.param("half-128", id="grey-128-left-half"),
        pytest.param("short-128", id="grey-128-under-one-mcu-row"),
    ],
)
def test_honest_jpeg_with_a_flat_bottom_is_accepted(bottom: object) -> None:
    pixels = np.clip(smooth_rgb(200, 304).astype(np.int16) + random_rgb(200, 304) // 8 - 16, 0, 255).astype(np.uint8)
    if bottom == "half-128":
        pixels[-48:, :152] = 128  # exact fill grey, but not across the full width
    elif bottom == "short-128":
        pixels[-8:] = 128  # exact fill grey across the width, but under one 16-px MCU row
    else:
        pixels[-48:] = bottom
    raw = encode(Image.fromarray(pixels), "JPEG", quality=95)
    decoded = assert_ok(raw, (200, 304), "JPEG")
    if bottom == "half-128":
        assert (decoded[-16:, :128] == 128).all()  # really exact grey where the test says
    elif bottom == "short-128":
        assert (decoded[-7:] == 128).all()
    else:
        assert len(np.unique(decoded[-16:].reshape(-1, 3), axis=0)) == 1  # really one flat colour


@pytest.mark.parametrize("quality", [50, 75])
def test_honest_jpeg_on_a_smooth_grey_backdrop_is_accepted(quality: int) -> None:
    # A near-128 backdrop compresses to exact 128 over many rows (as libjpeg's fill for missing
    # data does), but the rows above it are grey too: no cut into content, so the image is kept.
    rng = np.random.default_rng(0)
    pixels = np.clip(smooth_rgb(200, 304).astype(np.int16) + random_rgb(200, 304) // 8 - 16, 0, 255).astype(np.uint8)
    pixels[-60:] = np.clip(128 + rng.normal(0, 0.5, (60, 304, 3)), 0, 255).round().astype(np.uint8)
    raw = encode(Image.fromarray(pixels), "JPEG", quality=quality)
    decoded = assert_ok(raw, (200, 304), "JPEG")
    assert (decoded[-16:] == 128).all()  # really the fill value across the full width at the bottom


def test_zero_byte_file() -> None:
    assert_fails(b"", "empty file")


@pytest.mark.parametrize(
    "raw",
    [b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "Просто текст, не картинка.\n".encode(), b"\x00" * 10],
)
def test_text_and_html_are_not_images(raw: bytes) -> None:
    assert_fails(raw, "not an image")


def test_unsupported_format_is_named() -> None:
    raw = encode(Image.fromarray(random_rgb(16, 16)), "ICO")
    assert_fails(raw, "unsupported image format ICO")


def test_bomb_over_pillows_hard_limit_is_refused_before_decoding() -> None:
    raw = png_with_declared_size(100_000, 100_000)
    assert len(raw) < 100
    assert_fails(raw, "decompression bomb")


def test_bomb_over_our_cap_reports_the_declared_size() -> None:
    result = assert_fails(png_with_declared_size(9_000, 9_000), "decompression bomb", max_pixels=80_000_000)
    assert "images.max_pixels" in result.reason
    assert (result.orig_width, result.orig_height, result.format) == (9_000, 9_000, "PNG")


def test_real_all_black_bomb_is_tiny_but_refused() -> None:
    raw = encode(Image.new("1", (12_000, 8_000)), "PNG", optimize=True)  # 96 Mpx in a few kB
    assert len(raw) < 100_000
    assert_fails(raw, "decompression bomb")


def test_max_pixels_is_configurable_both_ways() -> None:
    raw = png_with_declared_size(100, 100)
    assert_fails(raw, "images.max_pixels=5000", max_pixels=5_000)
    # Over Pillow's own ~89 Mpx warning level but under a configured 120 Mpx cap: our cap decides,
    # so the (fake, 1-pixel) data is decoded and fails as corrupt, not as a bomb.
    result = decode(png_with_declared_size(10_000, 10_000), max_pixels=120_000_000)
    assert not result.ok and "bomb" not in result.reason


def test_max_pixels_above_pillows_own_hard_limit_still_decides(monkeypatch) -> None:
    """Pillow refuses on opening an image of more than ~179 Mpx (twice its process-wide limit):
    a larger images.max_pixels had no effect, and the refusal lost the size and named no setting."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    raw = png_with_declared_size(14_000, 14_000)  # 196 Mpx
    refused = assert_fails(raw, "decompression bomb guard: more than images.max_pixels=80000000 pixels", max_pixels=80_000_000)
    assert "exceeds limit" in refused.reason
    result = decode(raw, max_pixels=300_000_000)  # the (fake, 1-pixel) data gets decoded: corrupt, not a bomb
    assert not result.ok and result.reason.startswith("corrupt image")
    assert_fails(png_with_declared_size(20_000, 20_000), "images.max_pixels=300000000", max_pixels=300_000_000)  # 400 Mpx: our own check, with its size
    assert Image.MAX_IMAGE_PIXELS == 150_000_000


def test_file_over_max_bytes_is_refused_unread() -> None:
    raw = encode(Image.fromarray(random_rgb(64, 64)), "PNG")
    result = assert_fails(raw, "file too large", max_bytes=len(raw) - 1)
    assert str(len(raw)) in result.reason
    assert decode(raw, max_bytes=len(raw)).ok  # the limit itself is allowed


def test_random_garbage_never_raises() -> None:
    rng = np.random.default_rng(1234)
    headers = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"]
    for i in range(50):
        # Real magic numbers in front of the noise, so the format readers are exercised, not just sniffing.
        body = rng.integers(0, 256, int(rng.integers(0, 2_000)), dtype=np.uint8).tobytes()
        raw = headers[i % len(headers)] + body
        result = decode(raw)
        assert result.ok or result.reason


# ---------------------------------------------------------------- reading image files (ImageReader)


def zip_with_a_broken_member(path: Path, method: int, keep: int = 0, method_id: int | None = None) -> bytes:
    """A zip holding ``images/good.png`` and ``images/bad.jpg`` (compressed with ``method``) whose
    compressed bytes after the first ``keep`` are overwritten; or, with ``method_id``, whose
    compression method id is rewritten to one zipfile can't read. Returns the good member's bytes."""
    good = encode(Image.fromarray(random_rgb(16, 16)), "PNG")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/good.png", good, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("images/bad.jpg", bytes(range(256)) * 40, compress_type=method)
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("images/bad.jpg")
    local = info.header_offset
    assert raw[local : local + 4] == b"PK\x03\x04"
    if method_id is not None:
        central = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # the second entry: bad.jpg
        assert raw[central + 46 : central + 46 + len(info.filename)] == info.filename.encode()
        raw[local + 8 : local + 10] = raw[central + 10 : central + 12] = struct.pack("<H", method_id)
    else:
        name_len, extra_len = struct.unpack("<HH", raw[local + 26 : local + 30])
        start = local + 30 + name_len + extra_len + keep
        raw[start : local + 30 + name_len + extra_len + info.compress_size] = b"\xff" * (info.compress_size - keep)
    path.write_bytes(bytes(raw))
    return good


@pytest.mark.parametrize(
    ("method", "keep", "error"),
    [
        (zipfile.ZIP_DEFLATED, 0, "error: Error -3 while decompressing data"),  # zlib.error
        (zipfile.ZIP_LZMA, 9, "LZMAError: Corrupt input data"),  # keep the 4-byte header and the 5 bytes of properties
        (zipfile.ZIP_BZIP2, 0, "OSError: Invalid data stream"),
    ],
)
def test_corrupt_compressed_zip_member_is_a_reason_not_a_crash(tmp_path: Path, method: int, keep: int, error: str) -> None:
    archive = tmp_path / "images.zip"
    good = zip_with_a_broken_member(archive, method, keep)
    with ImageReader(str(archive), "zip", None, 1_000_000) as reader:
        data, reason = reader.read("images/bad.jpg")
        assert data is None and reason is not None
        assert "'images/bad.jpg'" in reason and error in reason, reason
        assert reader.read("images/good.png") == (good, None)  # the archive is still readable after it


def test_unsupported_zip_compression_method_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    # zipfile's NotImplementedError is a RuntimeError, so this guards the catch, not a past crash.
    archive = tmp_path / "images.zip"
    good = zip_with_a_broken_member(archive, zipfile.ZIP_STORED, method_id=99)  # 99: AES-encrypted entries
    with ImageReader(str(archive), "zip", None, 1_000_000) as reader:
        data, reason = reader.read("images/bad.jpg")
        assert data is None and "'images/bad.jpg'" in reason and "NotImplementedError" in reason, reason
        assert reader.read("images/good.png") == (good, None)


def test_directory_file_over_max_bytes_is_refused_from_its_size_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.tif").write_bytes(b"\0" * 5_000)
    (tmp_path / "small.png").write_bytes(b"x" * 1_000)

    def read_whole_file(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a file was read whole before its size was checked against the cap")

    monkeypatch.setattr(storage, "read_bytes", read_whole_file)
    with ImageReader(str(tmp_path), "dir", None, 1_000) as reader:
        assert reader.read("big.tif") == (None, "file too large: 5000 bytes > images.max_bytes=1000")
        assert reader.read("small.png") == (b"x" * 1_000, None)  # at the cap: read
        data, reason = reader.read("missing.jpg")
        assert data is None and "'missing.jpg'" in reason


# ---------------------------------------------------------------- stored image encoding


def test_jpeg_encoding_reads_back_through_the_codec() -> None:
    """``encode_image`` writes JPEG with Pillow, not the codec's cv2: petastorm readers decode
    it with the codec's own ``decode`` to the same pixels (within JPEG loss) and the same
    orientation of channels as the codec's encoder gives."""
    field = make_image_schema().fields["image"]
    pixels = smooth_rgb(96, 128)
    pixels[20:40, 30:70] = (200, 30, 10)  # a saturated red block: a swapped R/B would show at once
    ours = field.codec.decode(field, petastorm_io.encode_image(field, pixels))
    theirs = field.codec.decode(field, bytes(field.codec.encode(field, pixels)))
    assert ours.shape == pixels.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - pixels).mean() < 2.0
    assert np.abs(ours.astype(int) - theirs).max() <= 8
    assert tuple(ours[30, 50]) == pytest.approx((200, 30, 10), abs=12)


def test_an_image_scored_from_its_file_gets_the_pixels_training_got_from_the_dataset(shared_data: Path) -> None:
    """Training reads images that ingest stored as JPEG; score read a DIR/<guid> file without that
    compression (a median pixel change of 1.7, class probabilities up to 0.15 apart)."""
    from museum_typology.images import as_stored

    field = make_image_schema("jpeg", 92).fields["image"]
    with zipfile.ZipFile(shared_data / "images.zip") as archive:
        members = sorted(n for n in archive.namelist() if not n.endswith("/"))[:12]
        for name in members:
            decoded = decode_image(archive.read(name), 512)
            assert decoded.ok, name
            trained_on = field.codec.decode(field, petastorm_io.encode_image(field, decoded.pixels))  # ingest, then petastorm
            assert np.array_equal(as_stored(decoded.pixels, "jpeg", 92), trained_on), name
            assert not np.array_equal(decoded.pixels, trained_on), name  # the compression is there to match
    pixels = smooth_rgb(32, 48)
    assert as_stored(pixels, "png", 92) is pixels


def test_a_heic_photo_is_named_not_called_no_image() -> None:
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0mif1heic" + b"\0" * 64
    assert decode_image(heic, 512).reason == "unsupported image format HEIC (convert it to JPEG)"
    assert decode_image(b"\0\0\0\x18ftypisom" + b"\0" * 64, 512).reason == "not an image: content matches no known image format"


def test_a_petastorm_read_never_ends_before_the_ventilator_has_finished() -> None:
    """petastorm 0.13.1's thread pool checked "every worker returned all its items" (0 == 0 before
    anything is ventilated) before "the ventilator has finished"; a tiny dataset could finish
    ventilating between the two checks and be read back empty. petastorm_io asks the
    ventilator first: while it has items left, the pool is never done."""
    import queue

    from petastorm.workers_pool.thread_pool import ThreadPool
    from petastorm.workers_pool.ventilator import ConcurrentVentilator

    from museum_typology import petastorm_io  # noqa: F401 - importing it applies the fix

    pool = ThreadPool(1)
    pool._results_queues = [queue.Queue()]  # what start() sets up, without threads
    pool._ventilator = ConcurrentVentilator(lambda **item: None, [{"piece": 0}, {"piece": 1}], iterations=1)
    assert pool._ventilated_items_by_worker == [0] == pool._ventilated_items_processed_by_worker
    assert not pool.all_workers_done()  # nothing ventilated yet: not done (petastorm alone says done)
    pool._ventilator._iterations_remaining = 0  # the ventilator has sent everything ...
    assert pool.all_workers_done()  # ... and the workers returned all of it (0 of 0 here): done
    pool._ventilated_items_by_worker = [2]
    assert not pool.all_workers_done()  # items out, not yet returned
