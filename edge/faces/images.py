"""Loading and checking images: every bad input becomes a typed, clear error, never a crash.

Decoding uses Pillow, which reads the header before any pixel (so a huge image is refused
cheaply) and raises on truncated files instead of returning half a picture. The result is
always an HxWx3 ``uint8`` RGB array (or HxW for mode ``"L"``):

* grayscale and palette images are expanded to RGB;
* RGBA drops its alpha channel (as face_recognition does);
* 16-bit images are scaled to 8 bits (value * 255 / 65535), not clipped.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000

# Pillow's LOAD_TRUNCATED_IMAGES is process-wide and some libraries (face_recognition among them)
# switch it on; we switch it off around our own decoding so a truncated file is always an error.
_TRUNCATION_LOCK = threading.Lock()


class ImageError(ValueError):
    """Base class for an image that cannot be used."""


class EmptyImageError(ImageError):
    """The file or array holds no pixels."""


class CorruptImageError(ImageError):
    """The bytes are not a complete image in a format we read."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the configured limit."""


class UnsupportedImageError(ImageError):
    """A numpy array whose shape or dtype is not an image."""


def _read_bytes(file: str | os.PathLike | BinaryIO) -> tuple[bytes, str]:
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        try:
            return path.read_bytes(), str(path)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an image") from None
    return file.read(), getattr(file, "name", "<stream>")


def _to_uint8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / (65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img


def load_image_file(
    file: str | os.PathLike | BinaryIO, mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Load an image file (path or binary file object) into a numpy array.

    :param mode: ``"RGB"`` (HxWx3) or ``"L"`` (HxW, grayscale).
    :param max_pixels: images with more pixels are refused with :class:`ImageTooLargeError`.
    :return: ``uint8`` array.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    data, name = _read_bytes(file)
    if not data:
        raise EmptyImageError(f"{name}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width == 0 or height == 0:
                raise EmptyImageError(f"{name}: image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{name}: {width}x{height} is more pixels than the limit of {max_pixels}")
            with _TRUNCATION_LOCK:
                saved = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    img.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = saved
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise CorruptImageError(f"{name}: not an image in a known format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: more pixels than the limit of {max_pixels} ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{name}: corrupt or truncated image ({exc})") from None
    img = _to_uint8(img)
    return np.ascontiguousarray(np.asarray(img.convert(mode), dtype=np.uint8))


def as_rgb(image: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check a frame from a camera or caller and return it as contiguous HxWx3 ``uint8`` RGB.

    Grayscale (HxW or HxWx1) is expanded, RGBA drops alpha, 16-bit and float (0..1 or 0..255)
    inputs are scaled. Anything else raises :class:`UnsupportedImageError`; more than
    ``max_pixels`` pixels raises :class:`ImageTooLargeError`.
    """
    if not isinstance(image, np.ndarray):
        raise UnsupportedImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise EmptyImageError(f"image array has no pixels (shape {image.shape})")
    if image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLargeError(f"{image.shape[1]}x{image.shape[0]} is more pixels than the limit of {max_pixels}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise UnsupportedImageError(f"expected HxW, HxWx3 or HxWx4, got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise UnsupportedImageError("image array holds NaN or infinity")
        peak = float(image.max())
        image = np.clip(image * (255.0 if peak <= 1.0 else 1.0) + 0.5, 0, 255)
    elif image.dtype != np.uint8:
        raise UnsupportedImageError(f"unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(image, dtype=np.uint8)


def resize_for_detection(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``rgb`` scaled (down or up) so its longer side is ``side`` px, and the scale factor.

    Detecting at one fixed resolution keeps the detector's cost constant whatever the camera,
    and lets a low-resolution camera's faces reach the detector's 80 px window.
    """
    h, w = rgb.shape[:2]
    factor = side / max(h, w)
    if factor == 1.0:
        return np.ascontiguousarray(rgb), 1.0
    interp = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=interp), factor
