"""HTTPS without a proxy: ``serve --ssl-certfile/--ssl-keyfile`` with a self-signed certificate.

``tls/test-only.*.pem`` is a self-signed certificate for 127.0.0.1 made for these tests only (``openssl req -x509
-newkey rsa:2048 -nodes -days 36500 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.reliability.conftest import REPO, free_port

TLS = Path(__file__).parent / "tls"
CERT, KEY = TLS / "test-only.cert.pem", TLS / "test-only.key.pem"


def test_serve_answers_https_with_the_given_certificate(tiny_onnx, tiny_gallery, tmp_path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "serving", "serve", "--model", str(tiny_onnx), "--gallery", str(tiny_gallery),
            "--port", str(port), "--ssl-certfile", str(CERT), "--ssl-keyfile", str(KEY), "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, ready = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=str(CERT), timeout=2.0)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, log.read_text()[-2000:]
        # The certificate is checked against the server's (verify=CERT above); plain HTTP is not served.
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0)
            assert plain.status_code == 400  # uvicorn answers a plain request on a TLS port with a bad request
        except httpx.TransportError:
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_half_or_bad_tls_pair_is_one_sentence(tiny_onnx, tiny_gallery, tmp_path) -> None:
    base = [sys.executable, "-m", "serving", "serve", "--model", str(tiny_onnx), "--gallery", str(tiny_gallery)]
    half = subprocess.run([*base, "--ssl-certfile", str(CERT)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert half.returncode != 0 and "needs both --ssl-certfile and --ssl-keyfile" in half.stderr
    assert "Traceback" not in half.stderr
    wrong = tmp_path / "not-a-key.pem"
    wrong.write_text("not a key\n")
    bad = subprocess.run([*base, "--ssl-certfile", str(CERT), "--ssl-keyfile", str(wrong)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "cannot use --ssl-certfile" in bad.stderr and "Traceback" not in bad.stderr
