"""A real HTTP server on 127.0.0.1 with a fault zoo, for the fetcher and crawl tests.

``ZooServer`` runs ``http.server.ThreadingHTTPServer`` (HTTP/1.1, keep-alive) in a thread. Every
request is counted per path. Routes:

  /img/<name>          a registered body (``add``), e.g. /img/ok.jpg
  /gen/<n>.png         a small PNG generated from n (for many-URL runs; ``gen_image(n)``)
  /status/<code>       that status with a short body
  /flaky/<key>         500 on the first request for <key>, then a JPEG
  /limited/<key>       429 with Retry-After: 1 on the first request for <key>, then a JPEG
  /drip                Content-Length 100000, then one byte every 50 ms (must time out)
  /reset               the connection is reset (RST) without an answer
  /short               Content-Length 5000, 1000 bytes sent, connection closed
  /redirect/<n>        a chain of n redirects ending at /img/ok.jpg
  /to-localhost        redirects to /img/ok.jpg on http://localhost:<port> (another host)
  /loop/a, /loop/b     redirect to each other
  /to-raw-utf8         redirects to /img/фото.jpg with the Location's raw UTF-8 bytes (as many
                       servers send it; the body is registered as "%D1%84%D0%BE%D1%82%D0%BE.jpg")
  /huge                declares a body far over any cap (Content-Length), sends a little
  /huge-chunked        streams 1 MB chunks without Content-Length, forever-ish (50 MB)
  /slow/<ms>/<name>    the registered body after <ms> ms (tracks requests in flight)
  /robots.txt          ``robots_txt`` when set, else 404; counted in ``robots_requests``, not ``requests``
"""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def image_bytes(fmt: str, size=(48, 32), colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, colour)
    # A gradient, so that pixel comparisons check more than one colour.
    if mode == "RGB":
        array = np.asarray(image).copy()
        array[:, :, 1] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
        image = Image.fromarray(array)
    kwargs = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gen_image(n: int) -> bytes:
    return image_bytes("PNG", size=(24 + n % 17, 16 + n % 11), colour=((n * 37) % 256, (n * 91) % 256, (n * 13) % 256))


def bomb_png() -> bytes:
    """10000 x 10000 1-bit PNG: 100 Mpx, a few KB on the wire (over images.max_pixels=80M)."""
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000), 0).save(buffer, format="PNG")
    return buffer.getvalue()


class ZooServer:
    def __init__(self) -> None:
        self.bodies: dict[str, tuple[bytes, str]] = {}
        self.requests: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.start_times: list[float] = []
        self.user_agents: list[str | None] = []
        self.delay_s = 0.0  # added to every /gen/ request
        self.robots_txt: bytes | None = None  # served at /robots.txt (None: 404)
        self.robots_requests = 0
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        zoo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                zoo._count(self.path)
                zoo.user_agents.append(self.headers.get("User-Agent"))
                try:
                    zoo._route(self)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request, client_address) -> None:  # resets and drips are expected
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # ---------------------------------------------------------------- control

    def __enter__(self) -> ZooServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, name: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.bodies[name] = (body, content_type)
        return self.url(f"/img/{name}")

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.start_times.clear()
            self.max_in_flight = 0
            self.robots_requests = 0

    def _count(self, path: str) -> None:
        with self._lock:
            if path == "/robots.txt":
                self.robots_requests += 1
                return
            self.requests[path] += 1
            self.start_times.append(time.monotonic())

    def _first(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    # ---------------------------------------------------------------- routes

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "application/octet-stream", headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _jpeg_head(h: BaseHTTPRequestHandler, declared_length: str) -> None:
        """A 200 image/jpeg head whose Content-Length the route's body then does not honour."""
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", declared_length)
        h.end_headers()

    def _route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        head = parts[0]
        ok_jpeg = image_bytes("JPEG")
        if path == "/robots.txt":
            if self.robots_txt is None:
                self._send(h, 404, b"no robots.txt here", "text/plain")
            else:
                self._send(h, 200, self.robots_txt, "text/plain")
        elif head == "img" and len(parts) == 2 and parts[1] in self.bodies:
            body, content_type = self.bodies[parts[1]]
            self._send(h, 200, body, content_type)
        elif head == "gen" and len(parts) == 2 and parts[1].endswith(".png"):
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.delay_s:
                    time.sleep(self.delay_s)
                self._send(h, 200, gen_image(int(parts[1][:-4])), "image/png")
            finally:
                with self._lock:
                    self.in_flight -= 1
        elif head == "slow" and len(parts) == 3:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                time.sleep(int(parts[1]) / 1000)
                body, content_type = self.bodies[parts[2]]
                self._send(h, 200, body, content_type)
            finally:
                with self._lock:
                    self.in_flight -= 1
        elif head == "status" and len(parts) == 2:
            self._send(h, int(parts[1]), b"status page", "text/plain")
        elif head == "flaky":
            if self._first(path):
                self._send(h, 500, b"internal error", "text/plain")
            else:
                self._send(h, 200, ok_jpeg, "image/jpeg")
        elif head == "limited":
            if self._first(path):
                self._send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
            else:
                self._send(h, 200, ok_jpeg, "image/jpeg")
        elif head == "drip":
            self._jpeg_head(h, "100000")
            h.close_connection = True
            for byte in ok_jpeg[:200]:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                time.sleep(0.05)
        elif head == "reset":
            h.close_connection = True
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        elif head == "short":
            self._jpeg_head(h, "5000")
            h.wfile.write(ok_jpeg[:1000])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif path == "/to-raw-utf8":
            # send_header writes a str as latin-1: this str is the raw UTF-8 bytes of the path.
            self._send(h, 302, b"", "text/plain", {"Location": "/img/фото.jpg".encode().decode("latin-1")})
        elif head == "redirect" and len(parts) == 2:
            n = int(parts[1])
            target = "/img/ok.jpg" if n <= 1 else f"/redirect/{n - 1}"
            self._send(h, 302, b"", "text/plain", {"Location": target})
        elif head == "loop" and len(parts) == 2:
            self._send(h, 301, b"", "text/plain", {"Location": "/loop/b" if parts[1] == "a" else "/loop/a"})
        elif head == "to-localhost":  # the same server under another host name: another host to a crawler
            self._send(h, 302, b"", "text/plain", {"Location": f"http://localhost:{self.port}/img/ok.jpg"})
        elif head == "odd-retry-after":  # "²" passes str.isdigit; headers decode as latin-1
            self._send(h, 429, b"slow down", "text/plain", {"Retry-After": "\xb2"})
        elif head == "odd-length":
            self._jpeg_head(h, "\xb2")
            h.close_connection = True
            h.wfile.write(ok_jpeg)
        elif head == "to-localhost-limited":  # another host that answers 429 with a Retry-After
            self._send(h, 302, b"", "text/plain", {"Location": f"http://localhost:{self.port}/limited/{parts[1]}"})
        elif head == "to-file":
            self._send(h, 302, b"", "text/plain", {"Location": "file:///etc/passwd"})
        elif head == "huge":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(10**10))
            h.end_headers()
            h.close_connection = True
            h.wfile.write(ok_jpeg)
        elif head == "huge-chunked":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            h.close_connection = True
            chunk = b"\xff" * (1024 * 1024)
            for _ in range(50):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            h.wfile.write(b"0\r\n\r\n")
        else:
            self._send(h, 404, b"not found", "text/plain")
