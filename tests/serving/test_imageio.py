"""serving.core.imageio: formats, channel/depth conversion, parity with training's read_image, and refusals."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.api.errors import status_for
from serving.core.imageio import (
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    decode_image_file,
    inspect_image,
    sniff_format,
)

H, W = 48, 24  # model input size used throughout (not the stored size, so every test also resizes)


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


@pytest.fixture(scope="module")
def bgr() -> np.ndarray:
    """A smooth-ish 64x32 BGR image (JPEG keeps it close, so lossy checks stay meaningful)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (32, 64), interpolation=cv2.INTER_LINEAR)


def _expected(bgr_stored: np.ndarray) -> np.ndarray:
    """What decode should give for a losslessly stored BGR image: RGB, resized like read_image."""
    return cv2.resize(cv2.cvtColor(bgr_stored, cv2.COLOR_BGR2RGB), (W, H), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_lossless_formats_decode_to_resized_rgb(bgr: np.ndarray, ext: str) -> None:
    out = decode_image(_encode(ext, bgr), H, W)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _expected(bgr))


def test_jpeg_decodes_close_to_source(bgr: np.ndarray) -> None:
    out = decode_image(_encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]), H, W)
    assert out.shape == (H, W, 3)
    # JPEG is lossy; on this smooth image quality 95 stays within a few grey levels on average.
    assert np.abs(out.astype(int) - _expected(bgr).astype(int)).mean() < 4
    # RGB order, not BGR: the red channel of the output follows channel 2 of the BGR source.
    ref = _expected(bgr).astype(float)
    assert np.corrcoef(out[..., 0].ravel(), ref[..., 0].ravel())[0, 1] > 0.95


def test_progressive_jpeg_with_restart_markers(bgr: np.ndarray) -> None:
    data = _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1])
    assert inspect_image(data).width == 32
    assert decode_image(data, H, W).shape == (H, W, 3)


def test_grey_becomes_three_equal_channels(bgr: np.ndarray) -> None:
    grey = bgr[..., 1]
    out = decode_image(_encode(".png", grey), H, W)
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(out[..., 0], cv2.resize(grey, (W, H), interpolation=cv2.INTER_LINEAR))


def test_bgra_alpha_is_dropped(bgr: np.ndarray) -> None:
    alpha = np.zeros(bgr.shape[:2], np.uint8)  # fully transparent: still the colour underneath
    out = decode_image(_encode(".png", np.dstack([bgr, alpha])), H, W)
    np.testing.assert_array_equal(out, _expected(bgr))


def test_sixteen_bit_keeps_the_high_byte() -> None:
    rng = np.random.default_rng(1)
    deep = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)  # stored at model size: no resize
    out = decode_image(_encode(".png", deep), H, W)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, (deep >> 8).astype(np.uint8)[..., ::-1])


def test_sixteen_bit_grey() -> None:
    deep = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 50
    out = decode_image(_encode(".png", deep), H, W)
    np.testing.assert_array_equal(out[..., 2], (deep >> 8).astype(np.uint8))


@pytest.mark.parametrize("ext,params", [(".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]), (".png", []), (".bmp", [])])
@pytest.mark.parametrize("grey", [False, True])
def test_identical_to_training_read_image(bgr: np.ndarray, tmp_path: Path, ext: str, params: list[int],
                                          grey: bool) -> None:
    """Offline evaluation and /search must see the very same pixels (docs/contracts.md, "Images")."""
    from training.data.images import read_image

    path = tmp_path / f"crop{ext}"
    path.write_bytes(_encode(ext, bgr[..., 0] if grey else bgr, params))
    for size in [(H, W), (64, 32), (160, 72)]:  # shrunk, already at size, enlarged
        np.testing.assert_array_equal(decode_image(path.read_bytes(), *size), read_image(path, *size))
        np.testing.assert_array_equal(decode_image_file(path, *size), read_image(path, *size))


@pytest.mark.parametrize("kind", ["rgba", "16bit", "16bit_rgba", "16bit_grey"])
def test_identical_to_training_read_image_for_png_depths_and_alpha(bgr: np.ndarray, tmp_path: Path,
                                                                    kind: str) -> None:
    """decode_image decodes straight to RGB where OpenCV can (IMREAD_COLOR_RGB): the same pixels as imread's BGR
    plus the conversion, for the PNG variants that go through the most conversion (alpha, 16 bits, grey)."""
    from training.data.images import read_image

    alpha = np.linspace(0, 255, bgr.shape[0] * bgr.shape[1]).reshape(bgr.shape[:2]).astype(np.uint8)
    image = {"rgba": np.dstack([bgr, alpha]),
             "16bit": bgr.astype(np.uint16) * 257 + 3, "16bit_rgba": np.dstack([bgr, alpha]).astype(np.uint16) * 250,
             "16bit_grey": bgr[..., 2].astype(np.uint16) * 199}[kind]
    path = tmp_path / "crop.png"
    path.write_bytes(_encode(".png", image))
    for size in [(H, W), (64, 32), (160, 72)]:
        np.testing.assert_array_equal(decode_image(path.read_bytes(), *size), read_image(path, *size))


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1/Exif segment holding only the orientation tag (TIFF IFD0, tag 0x0112, SHORT)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_exif_orientation_is_applied_like_imread(bgr: np.ndarray, tmp_path: Path) -> None:
    from training.data.images import read_image

    data = _with_exif_orientation(_encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100]), orientation=6)
    # Header size is the stored one (64 high, 32 wide); decoding rotates 90° clockwise (EXIF 6).
    assert (inspect_image(data).height, inspect_image(data).width) == (64, 32)
    upright = decode_image(data, 32, 64)
    plain = decode_image(_encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100]), 64, 32)
    assert np.abs(upright.astype(int) - np.rot90(plain, k=-1).astype(int)).mean() < 1.0
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(data, H, W), read_image(path, H, W))


def test_jpeg_thumbnail_inside_app1_is_not_mistaken_for_the_image(bgr: np.ndarray) -> None:
    thumb = _encode(".jpg", cv2.resize(bgr, (8, 16)))  # a complete JPEG, with its own SOF and EOI
    main = _encode(".jpg", bgr)
    body = b"Exif\x00\x00" + thumb
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + main[2:]
    header = inspect_image(data)
    assert (header.format, header.width, header.height) == ("jpeg", 32, 64)
    # The thumbnail's EOI must not hide truncation of the main image.
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[:-200], H, W)
    assert (status_for(err.value), err.value.error) == (400, "truncated_image")


def _code(data: bytes, limits: DecodeLimits = DecodeLimits()) -> tuple[int, str]:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, H, W, limits)
    assert err.value.to_dict() == {"error": err.value.error, "detail": err.value.detail}
    assert err.value.detail
    return status_for(err.value), err.value.error


def test_empty_file() -> None:
    assert _code(b"") == (400, "empty_file")


@pytest.mark.parametrize("data", [b"hello, this is text", b"%PDF-1.7\n", b"\x00" * 100, b"BM"])
def test_not_an_image(data: bytes) -> None:
    assert _code(data) == (400, "not_an_image")


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated(bgr: np.ndarray, ext: str, keep: float) -> None:
    data = _encode(ext, bgr)
    assert _code(data[:int(len(data) * keep)]) == (400, "truncated_image")


def test_truncated_inside_header(bgr: np.ndarray) -> None:
    for ext in (".jpg", ".png", ".bmp"):
        assert _code(_encode(ext, bgr)[:20]) == (400, "truncated_image")


def test_corrupt_jpeg_data(bgr: np.ndarray) -> None:
    data = bytearray(_encode(".jpg", bgr))
    sos = bytes(data).index(b"\xff\xda")
    data[4:sos] = bytes(sos - 4)  # zero every table before the scan: structurally whole, undecodable
    status, error = _code(bytes(data))
    assert status == 400 and error in {"corrupt_image", "truncated_image"}


def test_too_large_is_413(bgr: np.ndarray, tmp_path: Path) -> None:
    data = _encode(".png", bgr)
    limits = DecodeLimits(max_bytes=len(data) - 1)
    assert _code(data, limits) == (413, "file_too_large")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as err:
        decode_image_file(path, H, W, limits)
    assert status_for(err.value) == 413
    assert decode_image(data, H, W, DecodeLimits(max_bytes=len(data))).shape == (H, W, 3)


def test_png_decompression_bomb_is_refused_from_the_header() -> None:
    """A 45-byte PNG claiming 100000 x 100000 pixels (30 GB decoded) never reaches the codec."""
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    bomb += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b"")
    assert _code(bomb) == (422, "too_many_pixels")


def test_jpeg_and_bmp_bombs(bgr: np.ndarray) -> None:
    jpeg = bytearray(_encode(".jpg", bgr))
    sof = bytes(jpeg).index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60_000, 60_000)
    assert _code(bytes(jpeg)) == (422, "too_many_pixels")
    bmp = bytearray(_encode(".bmp", bgr))
    bmp[18:26] = struct.pack("<ii", 50_000, -50_000)  # top-down: negative height counts too
    assert _code(bytes(bmp)) == (422, "too_many_pixels")


def test_pixel_and_side_limits(bgr: np.ndarray) -> None:
    data = _encode(".png", bgr)  # 32 x 64 = 2048 pixels
    assert _code(data, DecodeLimits(max_pixels=2047)) == (422, "too_many_pixels")
    assert _code(data, DecodeLimits(max_side=63)) == (422, "too_many_pixels")
    assert decode_image(data, H, W, DecodeLimits(max_pixels=2048, max_side=64)).shape == (H, W, 3)


@pytest.mark.parametrize("ext", [".tiff", ".webp"])
def test_other_real_formats_are_415(bgr: np.ndarray, ext: str) -> None:
    assert _code(_encode(ext, bgr)) == (415, "unsupported_format")


def test_gif_is_415() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00\x00\x00" + b"\x2c" + bytes(9) + b"\x02\x02D\x01\x00;"
    assert _code(gif) == (415, "unsupported_format")


def test_sniff_format(bgr: np.ndarray) -> None:
    assert [sniff_format(_encode(e, bgr)) for e in (".jpg", ".png", ".bmp")] == ["jpeg", "png", "bmp"]


def test_bad_output_size_is_a_caller_error(bgr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_image(_encode(".png", bgr), 0, W)


_SAMPLES: dict[str, bytes] = {}


def _sample(ext: str) -> bytes:
    if ext not in _SAMPLES:
        rng = np.random.default_rng(2)
        _SAMPLES[ext] = _encode(ext, rng.integers(0, 256, (20, 12, 3), dtype=np.uint8))
    return _SAMPLES[ext]


@settings(max_examples=60, deadline=None)
@given(ext=st.sampled_from([".jpg", ".png", ".bmp"]), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_damaged_files_only_ever_raise_image_decode_error(ext: str, cut: float, flips: list) -> None:
    """Any truncation or byte damage gives a clean 4xx (or a decoded image), never another exception."""
    data = bytearray(_sample(ext)[:max(1, int(len(_sample(ext)) * cut))])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    try:
        out = decode_image(bytes(data), H, W)
    except ImageDecodeError as exc:
        assert status_for(exc) in {400, 413, 415, 422}
    else:
        assert out.shape == (H, W, 3) and out.dtype == np.uint8


def test_identical_to_training_read_image_for_grey_alpha_png(tmp_path: Path) -> None:
    """PNG colour type 4 (grey + alpha), which OpenCV cannot write: built by hand."""
    from training.data.images import read_image

    h, w = 40, 20
    pixels = np.stack([np.arange(h * w).reshape(h, w) % 251, np.full((h, w), 90)], axis=-1).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per scanline
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    path = tmp_path / "grey_alpha.png"
    path.write_bytes(png)
    for size in [(H, W), (h, w), (96, 48)]:
        np.testing.assert_array_equal(decode_image(png, *size), read_image(path, *size))


def test_claimed_size_reads_only_as_far_as_the_size() -> None:
    """The hot-path size read agrees with the full header check, and needs nothing after the size."""
    import cv2

    from serving.core.imageio import claimed_size, inspect_image

    image = np.random.default_rng(1).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    for ext in (".jpg", ".png", ".bmp"):
        data = cv2.imencode(ext, image)[1].tobytes()
        header = inspect_image(data)
        assert claimed_size(data) == (header.width, header.height) == (23, 37)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    assert claimed_size(jpeg[: len(jpeg) // 2]) == (23, 37)  # cut in the scan: the size is still read
    with pytest.raises(ImageDecodeError):
        claimed_size(b"not an image")
