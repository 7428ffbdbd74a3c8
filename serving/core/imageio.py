"""Decode uploaded image bytes into the model's input: ``uint8 [H, W, 3]`` RGB, resized.

Two promises, both from ``docs/contracts.md``:

* **Identical pixels to offline evaluation.** ``training.data.images.read_image`` decodes a file with
  ``cv2.imread`` (flag ``IMREAD_COLOR``), converts BGR -> RGB and resizes with
  ``cv2.resize(..., (W, H), interpolation=cv2.INTER_LINEAR)``. :func:`decode_image` does the same three
  steps on bytes (``cv2.imdecode`` runs the same codec with the same flag), so a crop scored offline and
  the same crop posted to ``/search`` produce the same descriptor. ``IMREAD_COLOR`` is also what turns
  every supported input into 8-bit 3-channel: grey is replicated to 3 channels, an alpha channel is
  dropped (not composited: compositing would break the parity above), 16-bit samples keep their high
  byte (``v >> 8``, libpng's ``strip_16``), CMYK JPEGs are converted.
* **EXIF orientation is applied.** ``IMREAD_COLOR`` honours the EXIF orientation tag (``IMREAD_UNCHANGED``
  would ignore it); since ``cv2.imread`` in training applies it too, both sides agree, and a phone photo
  tagged "rotated 90°" is searched upright. Limits below are checked on the stored (unrotated) size.

Untrusted input is checked *before* the codec runs: the byte size, the format (JPEG, PNG or BMP,
recognised by magic bytes; everything else is refused), the width, height and pixel count read from the
file header by the small parsers below (PNG ``IHDR``, JPEG ``SOFn``, BMP info header), and structural
completeness (PNG up to ``IEND``, JPEG up to ``EOI``, BMP pixel array inside the file). A 30 KB PNG that
claims 100000 x 100000 pixels (a decompression bomb) is rejected without allocating anything.

Refusals are :class:`ImageDecodeError` (a bad image) or one of its subclasses, each with a short code;
``serving.api.errors`` decides what status each becomes:

=========================  =====================  ==========================================================
exception                  error                  meaning
=========================  =====================  ==========================================================
``ImageDecodeError``       ``empty_file``         zero bytes
``ImageDecodeError``       ``not_an_image``       bytes are not a recognised image format
``ImageDecodeError``       ``truncated_image``    the file ends before the image data does
``ImageDecodeError``       ``corrupt_image``      header or data malformed; the codec could not decode it
``ImageTooLarge``          ``file_too_large``     more bytes than ``DecodeLimits.max_bytes``
``UnsupportedImageFormat`` ``unsupported_format`` a real image format we do not accept (GIF, TIFF, WebP, ...)
``TooManyPixels``          ``too_many_pixels``    width/height/pixel count over the limits (decompression bomb)
=========================  =====================  ==========================================================
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

# isort: off
from serving.core import opencv_limits  # noqa: F401  sets OpenCV's decoder limits before cv2 loads
import cv2
import numpy as np
# isort: on

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: tuple[str, ...] = ("jpeg", "png", "bmp")


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on an untrusted image, checked before decoding.

    Attributes:
        max_bytes: largest encoded size accepted (:class:`ImageTooLarge` above it).
        max_pixels: largest width x height accepted (:class:`TooManyPixels` above it). The default, 36 MP,
            admits any camera frame while keeping the decoded buffer under ~110 MB.
        max_side: largest width or height accepted (:class:`TooManyPixels` above it); stops 1 x 10^8 strips
            that a pixel budget alone would let through.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 36_000_000
    max_side: int = 16_384

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DecodeLimits.{name} must be positive, got {getattr(self, name)}")


DEFAULT_LIMITS = DecodeLimits()


class ImageDecodeError(ValueError):
    """An image was refused: it is empty, not an image, truncated or corrupt (subclasses: other reasons).

    Attributes:
        error: short machine-readable code, e.g. ``truncated_image`` (see the module docstring).
        detail: one sentence for a human.
    """

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail

    def to_dict(self) -> dict[str, str]:
        """The JSON error body, ``{"error": ..., "detail": ...}``."""
        return {"error": self.error, "detail": self.detail}

    def prefixed(self, prefix: str) -> ImageDecodeError:
        """The same refusal (same class and code) with ``prefix`` before its detail, e.g. ``image 2: ``."""
        return type(self)(self.error, prefix + self.detail)


class ImageTooLarge(ImageDecodeError):
    """The file has more bytes than the limit (``file_too_large``)."""


class UnsupportedImageFormat(ImageDecodeError):
    """A real image format that is not accepted: GIF, TIFF, WebP, ... (``unsupported_format``)."""


class TooManyPixels(ImageDecodeError):
    """The image's width, height or pixel count is over the limits, a decompression bomb (``too_many_pixels``)."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an accepted image says, before any pixel is decoded."""

    format: str
    width: int
    height: int


# Formats recognised only to be refused as unsupported (rather than "not an image").
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"), (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
    (b"ftyp", 4, "HEIF/AVIF (ISO media)"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"), (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "JPEG XL"), (b"\xff\x0a", 0, "JPEG XL"),
    (b"8BPS", 0, "Photoshop"), (b"\x00\x00\x01\x00", 0, "ICO"), (b"v/1\x01", 0, "OpenEXR"),
    (b"#?RADIANCE", 0, "Radiance HDR"), (b"\x59\xa6\x6a\x95", 0, "Sun raster"),
)
_PNM_MAGIC = re.compile(rb"P[1-7]\s")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (ITU T.81 table B.1): C0-C3, C5-C7, C9-CB, CD-CF. C4 (DHT), C8 (JPG)
# and CC (DAC) share the range but are not frame headers.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(data: bytes) -> str:
    """Name the image format from magic bytes.

    Args:
        data: the encoded file.

    Returns:
        ``"jpeg"``, ``"png"`` or ``"bmp"``.

    Raises:
        ImageDecodeError: ``empty_file`` / ``not_an_image``; UnsupportedImageFormat: ``unsupported_format``.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty_file", "the uploaded file is empty (0 bytes)")
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"BM") and len(head) >= 18:
        return "bmp"
    for magic, offset, name in _UNSUPPORTED_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedImageFormat("unsupported_format", f"{name} images are not accepted; send JPEG, PNG or BMP")
    if _PNM_MAGIC.match(head):
        raise UnsupportedImageFormat("unsupported_format", "PNM images are not accepted; send JPEG, PNG or BMP")
    raise ImageDecodeError("not_an_image", "the file is not an image (expected JPEG, PNG or BMP bytes)")


def _truncated(fmt: str, what: str) -> ImageDecodeError:
    return ImageDecodeError("truncated_image", f"the {fmt} file is truncated: it ends {what}")


def _corrupt(fmt: str, what: str) -> ImageDecodeError:
    return ImageDecodeError("corrupt_image", f"the {fmt} file is malformed: {what}")


def _png_header(data: bytes, size_only: bool = False) -> tuple[int, int, ImageDecodeError | None]:
    """Width and height from IHDR, then walk the chunks to IEND (PNG spec §5.3: length, type, data, CRC);
    ``size_only`` stops after IHDR."""
    if len(data) < 33:
        raise _truncated("PNG", "inside the IHDR header")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise _corrupt("PNG", "the first chunk is not a 13-byte IHDR")
    width, height = struct.unpack(">II", data[16:24])
    if size_only:
        return width, height, None
    pos, n = 8, len(data)
    while True:
        if pos + 8 > n:
            return width, height, _truncated("PNG", "before the IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if length > 0x7FFFFFFF:
            return width, height, _corrupt("PNG", f"chunk {ctype!r} has an invalid length")
        pos += 12 + length
        if ctype == b"IEND":
            return width, height, (None if pos <= n else _truncated("PNG", "inside the IEND chunk"))


def _next_jpeg_marker(data: bytes, pos: int) -> int:
    """Offset of the 0xFF that starts the first marker at or after ``pos`` in entropy-coded data, or -1.

    There a 0xFF is followed by 0x00 (a stuffed data byte), a restart marker RST0-7, or 0xFF (fill before
    a marker); anything else is a marker code. Vectorised with numpy: a Python loop over the ~1/256 of
    bytes that are 0xFF costs ~5 ms on a 1 MB photo, this ~1 ms.
    """
    if pos >= len(data) - 1:
        return -1
    tail = np.frombuffer(data, dtype=np.uint8, offset=pos)
    ff = np.flatnonzero(tail[:-1] == 0xFF)
    follower = tail[ff + 1]
    marker = (follower != 0x00) & (follower != 0xFF) & ((follower < 0xD0) | (follower > 0xD7))
    hits = ff[marker]
    return pos + int(hits[0]) if hits.size else -1


def _jpeg_header(data: bytes, size_only: bool = False) -> tuple[int, int, ImageDecodeError | None]:
    """Width and height from the first SOFn, then walk the markers (ITU T.81 annex B) to EOI (``size_only``:
    return at the SOFn).

    Segments carry a 2-byte length and are skipped whole (so a thumbnail inside an EXIF APP1 segment is
    never mistaken for the image). After SOS comes entropy-coded data, in which 0xFF is always followed
    by 0x00 (byte stuffing) or a restart marker; any other 0xFF xx is the next marker.
    """
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    while True:
        if pos >= n:
            break
        if data[pos] != 0xFF:
            err = _corrupt("JPEG", f"expected a marker at byte {pos}")
            if size is None:
                raise err
            return size[0], size[1], err
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker are legal
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if size is None:
                raise _corrupt("JPEG", "no frame header (SOF) before the end of image")
            return size[0], size[1], None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers, no length
            continue
        if pos + 2 > n:
            break
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if length < 2:
            err = _corrupt("JPEG", f"marker 0xFF{marker:02X} has length {length}")
            if size is None:
                raise err
            return size[0], size[1], err
        if marker in _JPEG_SOF and size is None:
            if length < 8 or pos + 7 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            if height == 0 or width == 0:
                raise _corrupt("JPEG", f"frame header gives size {width}x{height} "
                                       "(a height defined later by a DNL marker is not supported)")
            size = (width, height)
            if size_only:
                return width, height, None
        pos += length
        if marker == 0xDA:  # SOS: skip the entropy-coded segment that follows
            if size is None:
                raise _corrupt("JPEG", "scan data before any frame header (SOF)")
            found = _next_jpeg_marker(data, pos)
            if found < 0:
                return size[0], size[1], _truncated("JPEG", "inside the compressed image data")
            pos = found
    if size is None:
        raise _truncated("JPEG", "before the frame header (SOF)")
    return size[0], size[1], _truncated("JPEG", "before the end-of-image marker")


def _bmp_header(data: bytes, size_only: bool = False) -> tuple[int, int, ImageDecodeError | None]:
    """Width and height from the DIB header; check the pixel array fits in the file when uncompressed
    (``size_only`` changes nothing: the check costs a few arithmetic operations)."""
    if len(data) < 26:
        raise _truncated("BMP", "inside the header")
    (offset,) = struct.unpack("<I", data[10:14])
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER (OS/2): 16-bit unsigned sizes
        width, height, _planes, bits = struct.unpack("<HHHH", data[18:26])
        compression = 0
    elif dib_size in (40, 52, 56, 64, 108, 124):
        if len(data) < 34:
            raise _truncated("BMP", "inside the info header")
        width, height, _planes, bits, compression = struct.unpack("<iiHHI", data[18:34])
        height = abs(height)  # negative height = rows stored top-down
    else:
        raise _corrupt("BMP", f"unknown DIB header size {dib_size}")
    if width <= 0 or height <= 0:
        raise _corrupt("BMP", f"invalid size {width}x{height}")
    problem = None
    if compression in (0, 3, 6) and bits in (1, 4, 8, 16, 24, 32):  # uncompressed / bitfields
        row = ((bits * width + 31) // 32) * 4
        if offset + row * height > len(data):
            problem = _truncated("BMP", "inside the pixel array")
    return width, height, problem


def claimed_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` as the header states them, read no further than the size: no limits and no
    completeness checks (:func:`inspect_image` does those). Cheap enough for a hot path: a JPEG's size is read
    at its frame header instead of after a walk through the compressed data.

    Raises:
        ImageDecodeError: not a recognised image, or its header is cut or damaged before the size.
    """
    fmt = sniff_format(data)
    parse = {"jpeg": _jpeg_header, "png": _png_header, "bmp": _bmp_header}[fmt]
    width, height, _ = parse(data, size_only=True)
    return width, height


def inspect_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageHeader:
    """Check untrusted bytes against ``limits`` without decoding pixels.

    Args:
        data: the encoded file.
        limits: size bounds.

    Returns:
        Format and stored (pre-EXIF-rotation) width and height.

    Raises:
        ImageDecodeError: see the module docstring for the codes.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("file_too_large",
                            f"the file is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    fmt = sniff_format(data)
    parse = {"jpeg": _jpeg_header, "png": _png_header, "bmp": _bmp_header}[fmt]
    width, height, problem = parse(data)
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise TooManyPixels("too_many_pixels",
                            f"the image is {width}x{height} ({width * height} pixels); the limits are "
                               f"{limits.max_side} pixels per side and {limits.max_pixels} pixels in total")
    if width == 0 or height == 0:
        raise _corrupt(fmt.upper(), f"invalid size {width}x{height}")
    if problem is not None:
        raise problem
    return ImageHeader(format=fmt, width=width, height=height)


# OpenCV >= 4.10 can decode straight to RGB: one pass over the pixels fewer than decoding to BGR and converting
# (about a tenth of a small crop's decoding time).
_DECODE_FLAG: int = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


def decode_image(data: bytes, height: int, width: int, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode, convert to RGB and resize an uploaded image exactly as training's ``read_image`` does.

    Args:
        data: the encoded file (JPEG, PNG or BMP; 1, 3 or 4 channels; 8 or 16 bits).
        height: output height (the model's input height).
        width: output width.
        limits: size bounds checked before decoding.

    Returns:
        ``np.ndarray [height, width, 3]`` uint8 RGB.

    Raises:
        ImageDecodeError: the bytes were refused (status and code in the module docstring).
        ValueError: ``height`` or ``width`` is not positive (a caller bug, not an upload problem).
    """
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    header = inspect_image(data, limits)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAG)
    except cv2.error:
        # OpenCV's own size guard (OPENCV_IO_MAX_IMAGE_*, set from the same limits by serving.core.opencv_limits)
        # refused what the header check let through: the header under-stated the image.
        raise TooManyPixels("too_many_pixels", f"the {header.format.upper()} image is larger than the "
                                                f"{limits.max_pixels} pixels this server accepts") from None
    if image is None:
        raise _corrupt(header.format.upper(), "the decoder could not read the image data")
    # The same pixels as training.data.images.read_image (docs/contracts.md, "Images"): decode to colour,
    # BGR -> RGB, resize. With IMREAD_COLOR_RGB the decoder writes RGB itself, bit for bit what the
    # conversion gives (tests/serving/test_imageio.py compares them for every format, depth and channel count).
    if _DECODE_FLAG == cv2.IMREAD_COLOR:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[0] != height or image.shape[1] != width:
        image = cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


def decode_image_file(path: str | Path, height: int, width: int,
                      limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """:func:`decode_image` for a file, checking its size before reading it into memory.

    Args:
        path: the image file.
        height: output height.
        width: output width.
        limits: size bounds.

    Returns:
        ``np.ndarray [height, width, 3]`` uint8 RGB.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
        OSError: the file cannot be read.
    """
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        raise ImageTooLarge("file_too_large",
                            f"the file is {size} bytes; the limit is {limits.max_bytes} bytes")
    with open(path, "rb") as fh:
        data = fh.read(limits.max_bytes + 1)
    return decode_image(data, height, width, limits)
