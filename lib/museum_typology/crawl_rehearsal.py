"""Rehearse the full-size crawl on one machine: a synthetic URL CSV of any size and a local
image server that answers it like a slow catalogue image server.

    # 1. serve realistic JPEGs (800-3000 px, 100-600 KB) with 400 ms added per request
    python -m museum_typology.crawl_rehearsal serve --port 8900 --delay-ms 400
    # 2. a 180K-row URL CSV pointing at it (1% shared URLs, 0.5% missing images)
    python -m museum_typology.crawl_rehearsal csv --rows 180000 --base-url http://127.0.0.1:8900 --out var/urls.csv
    # 3. crawl it
    museum-typology crawl --input var/urls.csv --output var/crawl-rehearsal

The server holds a pool of distinct images (``--pool``, generated once, deterministic) and
answers ``/img/<k>.jpg`` with image ``k mod pool``; ``/missing/<k>.jpg`` is a 404; ``/stats``
returns the request count as JSON. HTTP/1.1 keep-alive, one thread per connection.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import count_argument, number_argument
from .schema import CLASSES

MIN_SIDE_PX, MAX_SIDE_PX = 800, 3000
MIN_KB, MAX_KB = 100, 600


def make_jpeg(seed: int, index: int) -> bytes:
    """One deterministic catalogue-like JPEG: 800-3000 px on the long side, smooth photo-like
    content (compresses like a photo, not like noise), about 100-600 KB."""
    rng = np.random.default_rng([seed, index])
    long_side = int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1))
    short_side = max(MIN_SIDE_PX * 3 // 4, int(long_side / rng.uniform(1.0, 1.6)))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    span = (width * height - MIN_SIDE_PX**2) / (MAX_SIDE_PX**2 - MIN_SIDE_PX**2)
    scale = 8.0 + 4.0 * span
    low_w, low_h = max(4, int(width / scale)), max(4, int(height / scale))
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    low = np.asarray(Image.fromarray(base).resize((low_w, low_h), Image.Resampling.BICUBIC), dtype=np.int16)
    low = low + rng.normal(0, 12, (low_h, low_w, 1)).astype(np.int16)
    image = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    target = float(np.clip((MIN_KB + (MAX_KB - MIN_KB) * span) * rng.uniform(0.8, 1.2), MIN_KB * 1.1, MAX_KB * 0.9)) * 1024
    return encode_jpeg_near(image, target)[0]


def encode_jpeg_near(image: Image.Image, target: float, bounds: tuple[int, int] | None = None, **save_options: Any) -> tuple[bytes, int]:
    """JPEG bytes within 15% of ``target`` bytes (and inside ``bounds`` if given), by bisecting the
    quality: a few encodes at most. Returns (bytes, the quality used)."""
    low_q, high_q, quality = 50, 96, 88
    data = b""
    for _ in range(6):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, **save_options)
        data = buffer.getvalue()
        if abs(len(data) - target) < 0.15 * target and (bounds is None or bounds[0] <= len(data) <= bounds[1]):
            break
        if len(data) > target:
            high_q = quality
        else:
            low_q = quality
        quality = (low_q + high_q) // 2
    return data, quality


def make_pool(size: int, seed: int = 0, workers: int = 2) -> list[bytes]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(make_jpeg, [seed] * size, range(size)))


def write_url_csv(path: str | Path, rows: int, base_url: str, seed: int = 0, shared_rate: float = 0.01, missing_rate: float = 0.005) -> dict[str, int]:
    """``rows`` rows of guid,description,typology,url. A ``shared_rate`` share of rows reuse an
    earlier row's URL (the crawler fetches those once); a ``missing_rate`` share point at 404s."""
    rng = np.random.default_rng(seed)
    base_url = base_url.rstrip("/")
    counts = {"rows": rows, "shared": 0, "missing": 0}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    urls: list[str] = []
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "description", "typology", "url"])
        for i in range(rows):
            guid = f"{seed:04x}{i:012x}"
            guid = f"{guid[:8]}-{guid[8:12]}-4000-8000-{i:012x}"
            roll = rng.random()
            if i and roll < shared_rate:
                url = urls[int(rng.integers(0, i))]
                counts["shared"] += 1
            elif roll < shared_rate + missing_rate:
                url = f"{base_url}/missing/{i}.jpg"
                counts["missing"] += 1
            else:
                url = f"{base_url}/img/{i}.jpg"
            urls.append(url)
            writer.writerow([guid, f"Предмет {i}. Бумага, тушь", CLASSES[int(rng.integers(0, len(CLASSES)))], url])
    return counts


class ImageServer:
    """Serves the pool with a fixed delay per request; counts requests."""

    def __init__(self, pool: Sequence[bytes], delay_s: float = 0.4, host: str = "127.0.0.1", port: int = 0):
        self.pool, self.delay_s = list(pool), delay_s
        self.requests = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/stats":
                    body = json.dumps({"requests": server_ref.requests, "bytes": server_ref.bytes_sent}).encode()
                    return self._send(200, body, "application/json")
                with server_ref._lock:
                    server_ref.requests += 1
                if server_ref.delay_s:
                    time.sleep(server_ref.delay_s)
                parts = path.strip("/").split("/")
                if len(parts) == 2 and parts[0] == "img" and parts[1].endswith(".jpg") and parts[1][:-4].isdigit():
                    body = server_ref.pool[int(parts[1][:-4]) % len(server_ref.pool)]
                    with server_ref._lock:
                        server_ref.bytes_sent += len(body)
                    return self._send(200, body, "image/jpeg")
                return self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request, client_address) -> None:
                pass

        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def start(self) -> ImageServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m museum_typology.crawl_rehearsal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the local image server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=count_argument(0), default=8900)
    serve.add_argument("--delay-ms", type=number_argument(0.0), default=400.0, help="added to every request (default 400)")
    serve.add_argument("--pool", type=count_argument(1), default=64, help="distinct images served (default 64)")
    serve.add_argument("--seed", type=int, default=0)
    make_csv = sub.add_parser("csv", help="write a synthetic URL CSV")
    make_csv.add_argument("--rows", type=count_argument(0), default=180_000)
    make_csv.add_argument("--base-url", default="http://127.0.0.1:8900")
    make_csv.add_argument("--out", required=True)
    make_csv.add_argument("--seed", type=int, default=0)
    make_csv.add_argument("--shared-rate", type=number_argument(0.0, 1.0), default=0.01)
    make_csv.add_argument("--missing-rate", type=number_argument(0.0, 1.0), default=0.005)
    args = parser.parse_args(argv)
    if args.command == "csv":
        counts = write_url_csv(args.out, args.rows, args.base_url, args.seed, args.shared_rate, args.missing_rate)
        print(f"{args.out}: {counts['rows']} rows ({counts['shared']} reuse an earlier URL, {counts['missing']} point at 404s)")
        return 0
    print(f"generating {args.pool} images ...", file=sys.stderr, flush=True)
    server = ImageServer(make_pool(args.pool, args.seed), args.delay_ms / 1000, args.host, args.port)
    print(f"serving on {server.base_url} (delay {args.delay_ms:g} ms); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
