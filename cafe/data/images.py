"""Image rules: a path never leaves its image root; size limits and decompression bombs are checked on
the header before any pixel is decoded; truncated and corrupt files are refused; EXIF orientation is
applied and every mode becomes RGB. Each refusal is an :class:`ImageRejected` with a reason code."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cafe.config import ImageRulesConfig

_ORIENTATION = 0x0112
_KEEP_AS_IS = ("JPEG", "PNG")


class ImageRejected(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CleanImage:
    data: bytes  # JPEG or PNG, RGB, upright
    sha256: str
    width: int
    height: int
    image: Image.Image  # the decoded RGB image (for the perceptual hash)


def safe_path(root: str | Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` after resolving ``..`` and symlinks; checked before
    the file is opened (``image_path_escape``, ``image_missing``)."""
    if not isinstance(relative, str) or "\x00" in relative or len(relative.encode("utf-8", "surrogatepass")) > 4096:
        raise ImageRejected("image_path_escape", f"image path {str(relative)[:80]!r}: NUL bytes or longer than a "
                                                 "path may be")
    if not relative or os.path.isabs(relative) or relative.startswith("~"):
        raise ImageRejected("image_path_escape", f"image path {relative!r} is absolute or empty; "
                                                 "records must name images relative to the image root")
    if ".." in Path(relative).parts:
        raise ImageRejected("image_path_escape", f"image path {relative!r} contains '..'")
    try:
        real_root = Path(os.path.realpath(root))
        candidate = Path(os.path.realpath(real_root / relative))
        if not candidate.is_relative_to(real_root):
            raise ImageRejected("image_path_escape", f"image path {relative!r} resolves outside the image root "
                                                     f"(a symlink to {candidate})")
        if not candidate.is_file():
            raise ImageRejected("image_missing", f"image {relative!r} does not exist under {root}")
    except (OSError, ValueError, UnicodeError) as err:  # a name the file system refuses (too long, bad bytes)
        if isinstance(err, ImageRejected):
            raise
        raise ImageRejected("image_missing", f"image {relative[:80]!r}: the file system refuses this name ({err})") from None
    return candidate


def _complete(data: bytes, fmt: str | None) -> None:
    """Refuse a file that ends before its format's end marker: decoders of some formats (PNG without IEND, GIF
    without its trailer) return the pixels they have and pad the rest."""
    if fmt == "PNG" and not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
        raise ImageRejected("image_truncated", "PNG file ends before its IEND chunk")
    if fmt == "GIF" and not data.rstrip(b"\x00").endswith(b"\x3b"):
        raise ImageRejected("image_truncated", "GIF file ends before its trailer")
    if fmt == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        raise ImageRejected("image_truncated", "JPEG file ends before its end-of-image marker")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB for any mode: alpha composited on white, 16/32-bit and float greys scaled to 8 bits, CMYK etc.
    through Pillow's conversions."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode != "F" and arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _open(data: bytes, rules: ImageRulesConfig) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRejected("image_bomb", f"decompression bomb refused: {err}") from None
        except UnidentifiedImageError:
            raise ImageRejected("image_corrupt", "not an image file Pillow can identify") from None
        except Exception as err:  # noqa: BLE001 - a malformed header raises many types
            raise ImageRejected("image_corrupt", f"unreadable image header: {err}") from None
    if width * height > rules.max_pixels:
        raise ImageRejected("image_bomb", f"{width}x{height} = {width * height} pixels in the header exceeds "
                                          f"images.max_pixels = {rules.max_pixels}; not decoded")
    if max(width, height) > rules.max_side:
        raise ImageRejected("image_too_large", f"{width}x{height} exceeds images.max_side = {rules.max_side}")
    if min(width, height) < rules.min_side:
        raise ImageRejected("image_too_small", f"{width}x{height} is below images.min_side = {rules.min_side}")
    _complete(data, img.format)
    try:
        img.load()
    except OSError as err:
        reason = "image_truncated" if "truncat" in str(err).lower() else "image_corrupt"
        raise ImageRejected(reason, f"cannot decode: {err}") from None
    except Exception as err:  # noqa: BLE001 - SyntaxError, ValueError, EOFError from decoders
        raise ImageRejected("image_corrupt", f"cannot decode: {err}") from None
    return img


def clean_image(rules: ImageRulesConfig, *, data: bytes | None = None, root: str | Path | None = None,
                relative: str | None = None) -> CleanImage:
    """Check and normalise one image given as bytes or as a path under ``root``. An RGB JPEG/PNG without
    an orientation tag keeps its bytes; anything else is re-encoded as PNG (lossless, deterministic)."""
    if data is None:
        path = safe_path(root or ".", relative or "")
        try:
            size = path.stat().st_size
            if size > rules.max_file_bytes:
                raise ImageRejected("image_too_large",
                                    f"{size} bytes exceeds images.max_file_bytes = {rules.max_file_bytes}")
            data = path.read_bytes()
        except OSError as err:  # unreadable (permissions, a FIFO, an I/O error)
            raise ImageRejected("image_missing", f"image {relative!r} cannot be read: {err.strerror or err}") from None
    elif len(data) > rules.max_file_bytes:
        raise ImageRejected("image_too_large", f"{len(data)} bytes exceeds images.max_file_bytes = {rules.max_file_bytes}")
    img = _open(data, rules)
    orientation = img.getexif().get(_ORIENTATION, 1)
    fmt, mode = img.format, img.mode
    try:
        rgb = to_rgb(ImageOps.exif_transpose(img) if orientation != 1 else img)
    except Exception as err:  # noqa: BLE001 - an exotic mode or a broken EXIF block
        raise ImageRejected("image_corrupt", f"cannot convert mode {mode} to RGB: {err}") from None
    if not (fmt in _KEEP_AS_IS and mode == "RGB" and orientation == 1):
        buf = io.BytesIO()
        rgb.save(buf, "PNG")
        data = buf.getvalue()
    return CleanImage(data, hashlib.sha256(data).hexdigest(), rgb.width, rgb.height, rgb)
