"""Decode, check, clean and resize one downloaded image; encode it as deterministic JPEG bytes."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Magic bytes -> our format name, and the Pillow plugin allowed to open it. Opening only the format the bytes
# claim keeps Pillow's many rarely-used decoders away from untrusted files.
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}

# EXIF orientation -> the transpose that makes the image upright (same table as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255, 255)


class ImageRejected(Exception):
    """An input that is not a usable image; `status` is one of not_an_image, decode_error, too_small,
    bad_aspect, decompression_bomb and `reason` is one human-readable line."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def detect_format(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'gif' | 'webp' | 'bmp' | 'tiff' from the magic bytes, else None."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _open(data: bytes, fmt: str) -> Image.Image:
    """Open (header only) with the one Pillow plugin the magic bytes name."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on hostile headers; all mean "bad file"
        raise ImageRejected("decode_error", f"cannot read {fmt} header: {e}") from None


def _check_header(img: Image.Image, min_side: int, max_aspect: float, max_pixels: int) -> None:
    """Refuse on the header's size, before any pixel is decoded.

    A 90-degree EXIF rotation swaps width and height, which changes neither the shorter side nor the
    long/short ratio, so checking the stored size is the same as checking the upright one."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRejected("decompression_bomb", f"{w}x{h} is over {max_pixels} pixels")
    short, long = min(w, h), max(w, h)
    if short < max(min_side, 1):
        raise ImageRejected("too_small", f"{w}x{h}: shorter side under {min_side} px")
    if long / short > max_aspect:
        raise ImageRejected("bad_aspect", f"{w}x{h}: aspect ratio {long / short:.1f} over {max_aspect:g}")


def _decode(img: Image.Image, fmt: str, size: int) -> None:
    """Decode the first frame's pixels; JPEGs at the smallest 1/2, 1/4, 1/8 scale still >= size."""
    try:
        if fmt == "jpeg":
            # draft keeps both sides >= size, so the shorter side never drops below the target.
            img.draft("RGB", (size, size))
        # Image.open leaves animations on frame 0, and load() decodes only the current frame.
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data surfaces as OSError, SyntaxError, ...
        raise ImageRejected("decode_error", f"cannot decode {fmt}: {e}") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a garbled EXIF block is ignored rather than rejecting the pixels."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - broken EXIF is common on web images and harmless here
        log.debug("ignoring unreadable EXIF")
        return img
    method = _ORIENTATION.get(orientation)
    return img.transpose(method) if method is not None else img


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int/float) greyscale to 8-bit; Pillow's convert() clips these to white."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
        arr = arr / 256.0  # treat as 16-bit samples
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white, so transparent areas do not turn black."""
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        background = Image.new("RGBA", img.size, _WHITE)
        background.alpha_composite(img.convert("RGBA"))
        return background.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # also CMYK, YCbCr, L, 1, P


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
    # reducing_gap lets Pillow shrink by an integer factor first: much faster for big PNGs, same look.
    return img.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)


def clean_image(
    src: bytes | Path, *, size: int, min_side: int = 0, max_aspect: float = float("inf"), max_pixels: int = 50_000_000
) -> Image.Image:
    """Fully decode an image, make it upright RGB (first frame only, transparency on white) and resize it
    so its shorter side is `size`. Raise ImageRejected for anything that is not a usable image."""
    data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).read_bytes()
    fmt = detect_format(data)
    if fmt is None:
        raise ImageRejected("not_an_image", f"unknown file type, starts with {data[:16]!r}")
    img = _open(data, fmt)
    try:
        _check_header(img, min_side, max_aspect, max_pixels)
        _decode(img, fmt, size)
        try:
            out = _resize_shorter(_to_rgb(_upright(img)), size)
        except Exception as e:  # noqa: BLE001 - e.g. an exotic mode (LAB) Pillow cannot convert
            raise ImageRejected("decode_error", f"cannot convert {img.mode} {fmt}: {e}") from None
        # Each step above returns its input when it has nothing to do, so an upright RGB image already at
        # `size` is `img` itself: copy only then (img is closed below), not on every call.
        return out.copy() if out is img else out
    finally:
        img.close()


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Deterministic JPEG bytes (no EXIF or ICC, fixed quality and subsampling, optimize=False), so reruns
    produce byte-identical files."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    # Only encoder arguments reach the JPEG writer (not img.info), so no metadata is copied from the source.
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling="4:2:0")
    return buf.getvalue()
