"""Bad input never crashes or hangs: each case gives a typed error or a defined result."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.faces.images import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    as_rgb,
    load_image_file,
)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(EmptyImageError, match="empty"):
        load_image_file(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path: Path, faces_dir: Path) -> None:
    data = (faces_dir / "obama-240p.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="truncated"):
        load_image_file(tmp_path / "cut.jpg")


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    with pytest.raises(CorruptImageError, match="not an image"):
        load_image_file(tmp_path / "notes.jpg")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image_file(tmp_path / "nope.jpg")


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = load_image_file(tmp_path / "deep.png")
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert np.array_equal(img[:, :, 0].reshape(-1), np.arange(256))


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 9), 77, np.uint8)).save(tmp_path / "grey.png")
    img = load_image_file(tmp_path / "grey.png")
    assert img.shape == (8, 9, 3) and (img == 77).all()
    assert load_image_file(tmp_path / "grey.png", mode="L").shape == (8, 9)


def test_rgba_drops_alpha(faces_dir: Path) -> None:
    img = load_image_file(faces_dir / "rgba_32bit.png")
    ref = np.asarray(Image.open(faces_dir / "rgba_32bit.png").convert("RGB"))
    assert img.shape == ref.shape and img.dtype == np.uint8
    assert np.array_equal(img, ref)


def test_huge_image_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "huge.png").write_bytes(_png_header_only(12000, 12000))
    with pytest.raises(ImageTooLargeError, match="more pixels than the limit"):
        load_image_file(tmp_path / "huge.png")


def test_huge_array_refused() -> None:
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(12000, 12000, 3), strides=(0, 0, 0))
    with pytest.raises(ImageTooLargeError):
        as_rgb(big)


def test_zero_size_array() -> None:
    with pytest.raises(EmptyImageError):
        as_rgb(np.zeros((0, 10, 3), np.uint8))


@pytest.mark.parametrize(
    "arr",
    [np.zeros((4, 4, 2), np.uint8), np.zeros((4,), np.uint8), np.zeros((4, 4, 3), np.int64), "not an array"],
)
def test_unsupported_arrays(arr) -> None:
    with pytest.raises(UnsupportedImageError):
        as_rgb(arr)


def test_array_conversions() -> None:
    assert as_rgb(np.full((2, 2), 5, np.uint8)).shape == (2, 2, 3)
    assert as_rgb(np.full((2, 2, 4), 9, np.uint8)).shape == (2, 2, 3)
    assert as_rgb(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    assert as_rgb(np.full((2, 2, 3), 1.0, np.float32)).max() == 255
    with pytest.raises(UnsupportedImageError):
        as_rgb(np.full((2, 2, 3), np.nan, np.float32))


def test_file_object() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    assert load_image_file(buf).shape == (3, 3, 3)


def test_face_api_on_bad_input(engine) -> None:
    from edge import faces

    with pytest.raises(EmptyImageError):
        faces.face_locations(np.zeros((0, 0, 3), np.uint8))
    assert faces.face_locations(np.zeros((50, 60, 3), np.uint8)) == []
    assert faces.face_encodings(np.zeros((50, 60), np.uint8)) == []
