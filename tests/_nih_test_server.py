"""A local HTTP server standing in for NIH in the downloader tests, and the archives it serves.

Everything here is GENERATED: synthetic noise PNGs with NIH-like file names, never NIH images.
The server listens on 127.0.0.1 on a free port, serves `files` ({url path: bytes}), honours HTTP
Range unless told not to, and can misbehave on purpose:

- `status[path] = 404 | 500`: answer with that error;
- `cut_after[path] = K`: on the first request for `path`, announce the full length, send K bytes
  and close the socket;
- `stall_after[path] = K`: send K bytes then hang until the server stops (for a SIGKILL test);
- `ignore_range = True`: always answer 200 with the whole file;
- `drip[path] = seconds`: send one byte, then one more every `seconds` (a server that never quite
  stalls);
- `endless[path] = chunk`: after the file, keep sending `chunk` forever, with no Content-Length
  (an endless response);
- `claim_length[path] = N`: announce Content-Length N whatever the file's size (a lying server).

It counts the body bytes it sent per path (`sent`) and logs (path, Range header) per request
(`requests`). It stops itself on context exit, and after `lifetime` seconds at the latest.
"""

from __future__ import annotations

import io
import socket
import struct
import tarfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def make_png(width: int, height: int, seed: int) -> bytes:
    """A valid 8-bit grayscale PNG of random pixels (stored with zlib level 0: incompressible)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1).tobytes()  # filter 0

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


def image_names(count: int, first_patient: int = 1) -> list:
    """NIH-like names: 00000001_000.png, 00000001_001.png, 00000002_000.png, ..."""
    return [f"{first_patient + i // 2:08d}_{i % 2:03d}.png" for i in range(count)]


def _add(tar, name, data=b"", **attrs):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_500_000_000
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def make_archive(names, *, side: int = 64, seed: int = 0, extra=()) -> tuple[bytes, dict]:
    """An NIH-like `images_XX.tar.gz` (an `images/` folder of PNGs); returns (bytes, {name: png})."""
    pngs = {name: make_png(side, side, seed + i) for i, name in enumerate(names)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        _add(tar, "images", type=tarfile.DIRTYPE, mode=0o755)
        for name, data in pngs.items():
            _add(tar, f"images/{name}", data, mode=0o644)
        for name, data in extra:
            _add(tar, name, data, mode=0o644)
    return buf.getvalue(), pngs


def make_malicious_archive(kind: str) -> bytes:
    """A tar.gz whose first member is a good PNG and whose second is an attack of `kind`."""
    buf = io.BytesIO()
    good = make_png(8, 8, 1)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "images/00000001_000.png", good, mode=0o644)
        if kind == "dotdot":
            _add(tar, "images/../../evil.png", good, mode=0o644)
        elif kind == "absolute":
            _add(tar, "/tmp/keras_cxr_evil.png", good, mode=0o644)
        elif kind == "symlink":
            _add(tar, "images/00000002_000.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif kind == "hardlink":
            _add(tar, "images/00000002_000.png", type=tarfile.LNKTYPE, linkname="images/00000001_000.png")
        elif kind == "device":
            _add(tar, "images/00000002_000.png", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        else:
            raise ValueError(kind)
        _add(tar, "images/00000003_000.png", good, mode=0o644)
    return buf.getvalue()


class NIHTestServer:
    def __init__(self, files=None, *, lifetime: float = 60.0, chunk: int = 16384):
        self.files = dict(files or {})
        self.status, self.cut_after, self.stall_after = {}, {}, {}
        self.ignore_range = False
        self.drip, self.endless, self.claim_length = {}, {}, {}
        self.sent, self.requests = {}, []
        self.chunk = chunk
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lifetime = lifetime
        self._httpd = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # a small send buffer, so "bytes sent" is close to "bytes the client read"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((path, rng))
                    first_request = sum(1 for p, _ in server.requests if p == path) == 1
                if path in server.status:
                    self.send_error(server.status[path])
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range and rng.startswith("bytes="):
                    start = int(rng[6:].split("-", 1)[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if path not in server.endless:
                    self.send_header("Content-Length", str(server.claim_length.get(path, len(data) - start)))
                self.send_header("Connection", "close")
                self.end_headers()
                body = data[start:]
                try:
                    if path in server.drip:
                        for i in range(len(body)):
                            if server._stop.wait(server.drip[path] if i else 0):
                                break
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                        self.close_connection = True
                        return
                    if path in server.endless:
                        self.wfile.write(body)
                        while not server._stop.is_set():
                            self.wfile.write(server.endless[path])
                            with server._lock:
                                server.sent[path] = server.sent.get(path, 0) + len(server.endless[path])
                        self.close_connection = True
                        return
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                limit = len(body)
                if first_request and path in server.cut_after:
                    limit = min(limit, server.cut_after[path])
                stall = server.stall_after.get(path)
                if stall is not None:
                    limit = min(limit, stall)
                pos = 0
                try:
                    while pos < limit and not server._stop.is_set():
                        n = self.wfile.write(body[pos:min(pos + server.chunk, limit)])
                        pos += n
                        with server._lock:
                            server.sent[path] = server.sent.get(path, 0) + n
                    self.wfile.flush()
                    if stall is not None:
                        server._stop.wait()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        return Handler

    def start(self) -> "NIHTestServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self._lifetime, self.stop)  # never outlives a forgetful test
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._timer.cancel()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    """A port nothing listens on (for the connection-refused test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False
