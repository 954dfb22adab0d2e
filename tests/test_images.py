"""stages.images on tiny generated images: formats, modes, EXIF rotation, rejections, deterministic JPEG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from imgclf.sources.images import ImageRejected, clean_image, detect_format, encode_jpeg

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _close(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def _rejected(data: bytes, status: str, **kwargs) -> ImageRejected:
    kwargs.setdefault("size", 32)
    with pytest.raises(ImageRejected) as info:
        clean_image(data, **kwargs)
    assert info.value.status == status, info.value.reason
    assert info.value.reason
    return info.value


@pytest.mark.parametrize(
    "w,h,size,expected",
    [
        (200, 100, 32, (64, 32)),  # down
        (40, 60, 64, (64, 96)),  # up
        (1024, 640, 64, (102, 64)),  # big enough for a 1/8 draft decode
        (50, 50, 50, (50, 50)),  # already right
    ],
)
def test_jpeg_shorter_side_becomes_size(w, h, size, expected):
    out = clean_image(_encode(_noise(w, h), "JPEG"), size=size)
    assert (out.mode, out.size) == ("RGB", expected)


def test_checks_use_the_original_size_not_the_draft():
    # A 1/8 draft decodes 1024x640 as 128x80; min_side must still compare against 640.
    out = clean_image(_encode(_noise(1024, 640), "JPEG"), size=64, min_side=600, max_aspect=1.7)
    assert out.size == (102, 64)


def test_big_jpegs_use_a_draft_decode(monkeypatch):
    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    clean_image(_encode(_noise(1024, 640), "JPEG"), size=64)
    assert calls == [("RGB", (64, 64), (128, 80))]  # decoded at 1/8 scale


def test_path_input(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_encode(_noise(80, 60), "JPEG"))
    assert clean_image(path, size=30).size == (40, 30)


def test_png_rgb():
    img = Image.new("RGB", (60, 90), GREEN)
    out = clean_image(_encode(img, "PNG"), size=20)
    assert (out.mode, out.size, out.getpixel((10, 15))) == ("RGB", (20, 30), GREEN)


def test_cmyk_jpeg():
    img = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red in CMYK
    out = clean_image(_encode(img, "JPEG"), size=24)
    assert (out.mode, out.size) == ("RGB", (32, 24))
    assert _close(out.getpixel((16, 12)), RED)


def test_palette_png_transparency_becomes_white():
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    img.paste(1, (20, 0, 40, 40))
    out = clean_image(_encode(img, "PNG", transparency=0), size=40)
    assert out.mode == "RGB"
    assert out.getpixel((5, 20)) == WHITE  # transparent black -> white, not black
    assert out.getpixel((35, 20)) == RED


def test_rgba_and_la_alpha_composited_on_white():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (10, 0, 20, 20))
    out = clean_image(_encode(rgba, "PNG"), size=20)
    assert (out.getpixel((2, 10)), out.getpixel((17, 10))) == (WHITE, BLUE)
    la = Image.new("LA", (20, 20), (0, 128))  # half-transparent black over white -> mid grey
    assert _close(clean_image(_encode(la, "PNG"), size=20).getpixel((5, 5)), (127, 127, 127), tol=2)


def test_16_bit_greyscale_is_scaled_not_clipped():
    img = Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16))
    assert img.mode.startswith("I;16")
    out = clean_image(_encode(img, "PNG"), size=30)
    assert _close(out.getpixel((15, 15)), (156, 156, 156), tol=1)  # 40000 / 256, not white


def test_exif_orientation_6_turns_landscape_into_portrait():
    img = Image.new("RGB", (80, 40), RED)
    img.paste(BLUE, (40, 0, 80, 40))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    out = clean_image(_encode(img, "JPEG", exif=exif.tobytes()), size=20)
    assert out.size == (20, 40)
    # Clockwise rotation puts the stored left (red) on top and the right (blue) at the bottom.
    assert _close(out.getpixel((10, 5)), RED)
    assert _close(out.getpixel((10, 35)), BLUE)


def test_animated_gif_keeps_the_first_frame():
    frames = [Image.new("RGB", (30, 30), c) for c in (RED, GREEN, BLUE)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = clean_image(data, size=15)
    assert (out.mode, out.size) == ("RGB", (15, 15))
    assert _close(out.getpixel((7, 7)), RED, tol=5)


@pytest.mark.parametrize("data", [b"<!DOCTYPE html><html><body>Not Found</body></html>", b"", b"\x00" * 64])
def test_non_images(data):
    _rejected(data, "not_an_image")


@pytest.mark.parametrize("size", [32, 200])  # with and without a draft (reduced-scale) decode
def test_truncated_jpeg(size):
    data = _encode(_noise(400, 400), "JPEG", quality=95)
    error = _rejected(data[: len(data) // 2], "decode_error", size=size)
    assert error.reason.startswith("cannot decode jpeg"), error.reason


def test_garbage_after_valid_magic():
    _rejected(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "decode_error")
    _rejected(b"\xff\xd8\xff" + b"\x13" * 200, "decode_error")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is rewritten to claim width x height (fixing the CRC)."""
    data = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = data[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("w,h", [(20000, 20000), (8000, 8000)])  # over Pillow's own limit; over ours only
def test_png_decompression_bomb(w, h):
    data = _png_claiming(w, h)
    assert len(data) < 200
    _rejected(data, "decompression_bomb")


def test_max_pixels_is_configurable():
    _rejected(_encode(Image.new("RGB", (100, 100)), "PNG"), "decompression_bomb", max_pixels=5000)


def test_too_small():
    data = _encode(Image.new("RGB", (100, 30)), "PNG")
    _rejected(data, "too_small", min_side=32)
    assert clean_image(data, size=32, min_side=30).size == (107, 32)


def test_bad_aspect():
    data = _encode(Image.new("RGB", (500, 50)), "PNG")
    _rejected(data, "bad_aspect", max_aspect=4.0)
    assert clean_image(data, size=10, max_aspect=10.0).size == (100, 10)


@pytest.mark.parametrize(
    "pil_format,name",
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ],
)
def test_detect_format_and_clean_every_format(pil_format, name):
    data = _encode(Image.new("RGB", (24, 16), GREEN), pil_format)
    assert detect_format(data) == name
    out = clean_image(data, size=8)
    assert (out.mode, out.size) == ("RGB", (12, 8))
    assert _close(out.getpixel((6, 4)), GREEN)


def test_detect_format_big_endian_tiff_and_unknowns():
    assert detect_format(b"MM\x00*" + b"\x00" * 8) == "tiff"
    assert detect_format(b"<html>") is None
    assert detect_format(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert detect_format(b"") is None


def test_encode_jpeg_is_deterministic_and_strips_metadata():
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    src = _encode(_noise(90, 60), "JPEG", exif=exif.tobytes())
    first = encode_jpeg(clean_image(src, size=32))
    second = encode_jpeg(clean_image(src, size=32))
    assert first == second
    assert detect_format(first) == "jpeg"
    assert b"Exif" not in first and b"CameraMaker" not in first
    assert Image.open(io.BytesIO(first)).size == (48, 32)
    assert encode_jpeg(clean_image(src, size=32), quality=50) != first
