"""Hypothesis fuzzing of ``serving.core.imageio.decode_image`` with random and mutated JPEG/PNG/BMP bytes.

The contract under test (docs/contracts.md, "Embedders"): whatever the bytes, ``decode_image`` either
returns ``uint8 [H, W, 3]`` or raises ``ImageDecodeError`` with an HTTP-ready 4xx status. Anything else
(another exception type, a wrong shape, a crash of the native codec, a hang) is a failure.

The campaign runs in a child process (this file run as a script) so that a segfault in OpenCV's codecs
or a hang fails this test with the child's report instead of killing or freezing the whole test session;
the parent bounds it with a timeout and Hypothesis bounds every single example with a deadline.

Seeds are real small images written by OpenCV (baseline and progressive JPEG, grey JPEG, 8-bit BGR, grey
and 16-bit BGRA PNG, 24-bit and 8-bit BMP); mutations are bit flips, byte overwrites, truncations,
insertions, deletions, duplicated ranges, and edits of the header fields that carry width and height.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {"mutated": 1500, "random": 300, "magic": 300}  # per campaign; ~15 s on a loaded 2-core machine
DEADLINE_MS = 10_000  # per example: a 36 MP image (the default limit) decodes in ~1 s even on a loaded machine
HEIGHT, WIDTH = 96, 32  # the tiny model's input size
STATUSES = {400, 413, 415, 422}
ERRORS = {"empty_file", "not_an_image", "truncated_image", "corrupt_image", "file_too_large",
          "unsupported_format", "too_many_pixels"}


# ----------------------------------------------------------------------------- the campaign (child process)


def _seeds() -> dict[str, bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    # Smooth content (as person crops are) plus a little noise, 40x24: small enough to fuzz fast.
    small = rng.integers(0, 256, size=(5, 3, 3), dtype=np.uint8)
    bgr = cv2.resize(small, (24, 40), interpolation=cv2.INTER_LINEAR)
    bgr = np.clip(bgr.astype(np.int16) + rng.integers(-8, 9, size=bgr.shape), 0, 255).astype(np.uint8)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra16 = np.dstack([bgr, rng.integers(0, 256, size=bgr.shape[:2], dtype=np.uint8)]).astype(np.uint16) * 257

    def enc(ext: str, image, params=()) -> bytes:
        ok, buf = cv2.imencode(ext, image, list(params))
        assert ok, ext
        return buf.tobytes()

    return {
        "jpeg": enc(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90]),
        "jpeg_progressive": enc(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "jpeg_grey": enc(".jpg", grey),
        "png": enc(".png", bgr),
        "png_grey": enc(".png", grey),
        "png_16bit_alpha": enc(".png", bgra16),
        "bmp": enc(".bmp", bgr),
        "bmp_grey": enc(".bmp", grey),
    }


def _size_fields(name: str, data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the width and height fields in a seed's header."""
    if name.startswith("png"):
        return [(16, ">I"), (20, ">I")]
    if name.startswith("bmp"):
        return [(18, "<i"), (22, "<i")]
    # JPEG: the first SOFn segment: FF Cn, length (2), precision (1), height (2), width (2).
    pos = 2
    while pos + 4 <= len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return [(pos + 5, ">H"), (pos + 7, ">H")]
        pos += 2 + length
    raise AssertionError(f"no SOF in seed {name}")


def check(data: bytes, limits) -> str:
    """Decode ``data``; return the outcome label, or raise AssertionError when the contract is broken."""
    import numpy as np

    from serving.api.errors import status_for
    from serving.core.imageio import ImageDecodeError, decode_image

    try:
        out = decode_image(data, HEIGHT, WIDTH, limits)
    except ImageDecodeError as exc:
        assert status_for(exc) in STATUSES and exc.error in ERRORS, (status_for(exc), exc.error)
        assert isinstance(exc.detail, str) and exc.detail
        return exc.error
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (HEIGHT, WIDTH, 3), \
        (type(out), getattr(out, "dtype", None), getattr(out, "shape", None))
    assert out.flags.c_contiguous
    return "decoded"


def campaign(examples: dict[str, int]) -> dict:
    """Run the three fuzzing campaigns; return outcome counts and the slowest example's time."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from serving.core.imageio import DEFAULT_LIMITS

    seeds = _seeds()
    names = sorted(seeds)
    limits = DEFAULT_LIMITS  # the server's own defaults: what a real upload meets
    outcomes: dict[str, dict[str, int]] = {"mutated": {}, "random": {}, "magic": {}, "size_edit": {}}
    slowest = [0.0]

    def timed(kind: str, data: bytes) -> str:
        started = time.perf_counter()
        label = check(data, limits)
        slowest[0] = max(slowest[0], time.perf_counter() - started)
        outcomes[kind][label] = outcomes[kind].get(label, 0) + 1
        return label

    def common(n: int):
        return settings(max_examples=n, deadline=timedelta(milliseconds=DEADLINE_MS), database=None,
                        derandomize=True, suppress_health_check=list(HealthCheck))

    mutation = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
        st.tuples(st.just("set"), st.integers(0, 1 << 20), st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 256)),
        st.tuples(st.just("duplicate"), st.integers(0, 1 << 20), st.integers(1, 512)),
        st.tuples(st.just("header"), st.integers(0, 63), st.integers(0, 255)),
        st.tuples(st.just("size"), st.integers(0, 1), st.integers(0, (1 << 31) - 1)),
    )

    def apply(name: str, data: bytearray, op: tuple) -> bytearray:
        kind, *args = op
        n = max(len(data), 1)
        if kind == "flip" and data:
            data[args[0] % n] ^= 1 << args[1]
        elif kind == "set" and data:
            data[args[0] % n] = args[1]
        elif kind == "truncate":
            del data[args[0] % n:]
        elif kind == "insert":
            data[args[0] % n:args[0] % n] = args[1]
        elif kind == "delete":
            del data[args[0] % n:args[0] % n + args[1]]
        elif kind == "duplicate":
            start = args[0] % n
            data[start:start] = data[start:start + args[1]]
        elif kind == "header" and len(data) > args[0]:
            data[args[0]] = args[1]
        elif kind == "size":
            offset, fmt = _size_fields(name, bytes(seeds[name]))[args[0]]
            if offset + struct.calcsize(fmt) <= len(data):
                limit = (1 << (8 * struct.calcsize(fmt) - (1 if fmt.endswith("i") else 0))) - 1
                data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, args[1] & limit)
        return data

    @common(examples["mutated"])
    @given(name=st.sampled_from(names), ops=st.lists(mutation, min_size=1, max_size=6))
    def mutated(name: str, ops: list) -> None:
        data = bytearray(seeds[name])
        for op in ops:
            data = apply(name, data, op)
        timed("mutated", bytes(data))

    @common(examples["random"])
    @given(data=st.binary(min_size=0, max_size=4096))
    def random_bytes(data: bytes) -> None:
        timed("random", data)

    magic = [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n",
             b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"BM", b"BM" + bytes(12) + b"\x28\x00\x00\x00"]

    @common(examples["magic"])
    @given(head=st.sampled_from(magic), tail=st.binary(min_size=0, max_size=2048))
    def magic_prefixed(head: bytes, tail: bytes) -> None:
        timed("magic", head + tail)

    # Size fields alone, everything else intact: the pre-decode guard must decide exactly by the limits.
    @common(examples["mutated"] // 3)
    @given(name=st.sampled_from(names), width=st.integers(0, 1 << 20), height=st.integers(0, 1 << 20))
    def size_edit(name: str, width: int, height: int) -> None:
        data = bytearray(seeds[name])
        for (offset, fmt), value in zip(_size_fields(name, seeds[name]), (width, height)):
            if fmt == ">H":
                value &= 0xFFFF
            data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        w, h = (width & 0xFFFF, height & 0xFFFF) if name.startswith("jpeg") else (width, height)
        label = timed("size_edit", bytes(data))
        if w and h and (w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels):
            assert label == "too_many_pixels", (name, w, h, label)

    started = time.perf_counter()
    for run in (mutated, random_bytes, magic_prefixed, size_edit):
        run()
    return {"outcomes": outcomes, "slowest_s": slowest[0], "seconds": time.perf_counter() - started,
            "seeds": {k: len(v) for k, v in seeds.items()}}


# ----------------------------------------------------------------------------- the test (parent process)


@pytest.mark.slow
def test_decoder_fuzzing_never_crashes_hangs_or_returns_garbage(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "OPENCV_LOG_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, __file__, str(report)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    # A negative return code is a signal: the native codec crashed (SIGSEGV, SIGABRT).
    assert proc.returncode == 0, f"fuzzing child failed with {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    result = json.loads(report.read_text())
    outcomes = result["outcomes"]
    print(json.dumps(result, indent=1))
    total = {kind: sum(counts.values()) for kind, counts in outcomes.items()}
    assert total["mutated"] >= EXAMPLES["mutated"] * 0.9 and total["random"] >= EXAMPLES["random"] * 0.9
    # The campaign reached both sides of the contract: mutations that still decode, and each refusal class.
    assert outcomes["mutated"].get("decoded", 0) > 0
    assert {"truncated_image", "corrupt_image"} <= set(outcomes["mutated"])
    assert outcomes["size_edit"].get("too_many_pixels", 0) > 0
    assert set(outcomes["random"]) <= ERRORS | {"decoded"}
    assert result["slowest_s"] < DEADLINE_MS / 1000


if __name__ == "__main__":  # the child process
    sys.path.insert(0, str(REPO))
    import logging

    logging.disable(logging.WARNING)
    out = campaign(EXAMPLES)
    Path(sys.argv[1]).write_text(json.dumps(out))
