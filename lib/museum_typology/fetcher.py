"""The per-task HTTP fetcher of the crawl job: many requests in flight, polite per host, safe.

One ``Fetcher`` per Spark task, shared by that task's threads (``crawl.threads_per_task``). It
holds one urllib3 connection pool per host and enforces, per host:

- at most ``host_connections`` requests at once (a semaphore; the pool holds as many sockets),
- at most ``host_rate`` request starts per second (a shared schedule; 0 = no limit),
- a pause for every thread when the host answers 429/503 with ``Retry-After``.

Per request: http and https only, connect/read timeouts plus a total deadline per attempt (a
slow drip cannot hold a thread forever), redirects followed by hand (each hop checked, a cap,
loops detected), a body-size cap (``Content-Length`` first, then while streaming), retries with
exponential backoff and jitter on connection errors, timeouts, 5xx and 429 (``Retry-After``
honoured, capped). Failures are results with a status and a reason, never exceptions.

The settings the crawl job gives are cluster-wide per host; ``FetchSettings.from_settings``
divides them by the number of tasks that run at once, so the whole cluster stays within them.
"""
from __future__ import annotations

import contextlib
import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    TimeoutError as Urllib3TimeoutError,
)
from urllib3.util import parse_url

# Fetch outcomes (also manifest statuses; the crawl job adds ok / not_image / quarantined / rejected).
FETCHED = "fetched"  # a 200 with a body within the caps: goes on to decode
BAD_URL = "bad_url"  # not http(s), unparsable, no host (never requested)
HTTP_ERROR = "http_error"  # a non-200 final answer (after retries for 5xx / 429)
TIMEOUT = "timeout"  # connect, read or total deadline exceeded (after retries)
CONNECTION_ERROR = "connection_error"  # refused, reset, DNS, body shorter than Content-Length
TOO_MANY_REDIRECTS = "too_many_redirects"  # over the cap, or a loop
TOO_LARGE = "too_large"  # body over crawl.max_bytes (declared or streamed)
ROBOTS_DISALLOWED = "robots_disallowed"  # a redirect led to a URL the caller's check refused (robots.txt)

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class FetchSettings:
    """Everything a fetcher needs; picklable so Spark ships it to executors. The defaults are
    conf/default.toml's [crawl] (tests/test_config.py holds them equal), for code and tests that
    build one directly; the job builds it with ``from_settings``."""

    user_agent: str = "museum-typology-crawler/0.1 (research crawl of Goskatalog item images; polite: per-host limits, backoff, Retry-After)"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0
    max_redirects: int = 5
    max_bytes: int = 50_000_000
    threads: int = 32
    host_connections: int = 48
    host_rate: float = 0.0  # request starts per second per host; 0 = no limit
    parallel_tasks: int = 1  # tasks sharing the per-host limits (each has its share)

    @classmethod
    def from_settings(cls, section: Mapping[str, Any], max_bytes: int, parallel_tasks: int = 1) -> FetchSettings:
        """``section`` is the ``[crawl]`` table. Per-host limits there are for the whole job;
        each of the ``parallel_tasks`` tasks running at once gets its share, rounded down so that
        the shares add up to no more than the limit; but every task needs one connection, so
        with more tasks than ``host_connections`` the job may hold one per task (a warning says
        so; fewer partitions or executors keep the limit)."""
        parallel_tasks = max(1, int(parallel_tasks))
        rate = float(section["host_rate"])
        return cls(
            user_agent=str(section["user_agent"]),
            connect_timeout_s=float(section["connect_timeout_s"]),
            read_timeout_s=float(section["read_timeout_s"]),
            total_timeout_s=float(section["total_timeout_s"]),
            retries=int(section["retries"]),
            backoff_base_s=float(section["backoff_base_s"]),
            backoff_max_s=float(section["backoff_max_s"]),
            retry_after_max_s=float(section["retry_after_max_s"]),
            max_redirects=int(section["max_redirects"]),
            max_bytes=int(max_bytes),
            threads=max(1, int(section["threads_per_task"])),
            host_connections=max(1, int(section["host_connections"]) // parallel_tasks),
            host_rate=rate / parallel_tasks if rate > 0 else 0.0,
            parallel_tasks=parallel_tasks,
        )


@dataclass
class FetchResult:
    url: str
    status: str
    body: bytes | None = None
    http_status: int | None = None
    attempts: int = 0
    reason: str | None = None
    final_url: str | None = None
    received_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == FETCHED


def url_problem(url: str | None) -> str | None:
    """Why ``url`` cannot be fetched, or None. Pure (no network)."""
    if url is None or not url.strip():
        return "empty url"
    if any(c in url for c in "\r\n\t") or " " in url.strip():
        return f"url contains whitespace or control characters: {url!r}"
    try:
        parsed = parse_url(url)
    except (LocationParseError, LocationValueError, ValueError) as exc:
        return f"unparsable url {url!r}: {exc}"
    scheme = (parsed.scheme or "").lower()
    if scheme not in ALLOWED_SCHEMES:
        return f"scheme {scheme or '(none)'!r} is not allowed (http and https only): {url!r}"
    if not parsed.host:
        return f"url has no host: {url!r}"
    try:
        parsed.port  # noqa: B018 - parse_url validates the port range lazily in some versions
    except ValueError as exc:
        return f"unparsable url {url!r}: {exc}"
    if not parsed.host.startswith("["):  # a host name, as urllib3 encodes it when it connects
        try:
            parsed.host.encode("idna")
        except UnicodeError:
            # "a..b", or a label over 63 characters: urllib3 refuses it only on connecting, and
            # the robots.txt fetch failing first made the row robots_disallowed, not bad_url
            return f"unparsable url {url!r}: host {parsed.host!r} has an empty label or one over 63 characters"
    return None


def canonical_url(url: str) -> str:
    """One spelling per resource, for fetching a URL shared by rows once: scheme and host in
    lower case, no default port, no fragment (never sent to the server). The path and the query
    as urllib3 sends them: a non-ASCII character percent-encoded as UTF-8 and every escape in
    upper case (``/фото.jpg``, ``/%d1%84...`` and ``/%D1%84...`` are one request), otherwise as
    written: servers may tell their case apart. ``url`` must have passed ``url_problem``."""
    sent = parse_url(url.strip())
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == {"http": 80, "https": 443}.get(scheme) else f"{host}:{port}"
    if parts.username is not None:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit((scheme, netloc, sent.path or "/", sent.query or "", ""))


def _header_text(value: str | None) -> str | None:
    """A header value as its sender meant it: http.client decodes header bytes as latin-1, so a
    Location of raw UTF-8 (``/фото.jpg``, as many servers send it) read as ``/Ñ\x84Ð¾...`` and
    was requested percent-encoded as such (a 404). Bytes that are valid UTF-8 are read as UTF-8;
    others stay as they were read."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not latin-1-decoded bytes (a str from elsewhere), or not UTF-8
        return value


def host_key(url: str) -> str:
    parsed = parse_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{(parsed.host or '').lower()}:{port}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit also takes "²" (headers decode as latin-1)
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Attempt(Exception):
    """One attempt's failure inside ``Fetcher``: carries the outcome and whether to retry."""

    def __init__(self, status: str, reason: str, http_status: int | None = None, retry: bool = False, retry_after: float | None = None, received: int = 0, host: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.http_status = status, reason, http_status
        self.retry, self.retry_after, self.received = retry, retry_after, received
        self.host = host  # the host that answered (after redirects): the one a Retry-After pauses


class _Host:
    """Per-host politeness state shared by the task's threads."""

    def __init__(self, connections: int):
        self.slots = threading.BoundedSemaphore(connections)
        self.lock = threading.Lock()
        self.next_start = 0.0  # monotonic time before which no request may start
        self.last_start = -math.inf  # monotonic time the latest request started
        self.min_interval = 0.0  # seconds between request starts asked by the host (robots.txt Crawl-delay)


class Fetcher:
    """Thread-safe; one per Spark task. ``fetch(url)`` never raises for network problems."""

    def __init__(self, settings: FetchSettings, sleep: Callable[[float], None] = time.sleep, seed: int | None = None):
        self.settings = settings
        self._sleep = sleep
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        self._pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=settings.host_connections,
            block=False,  # our semaphore bounds the connections; the pool just keeps them alive
            retries=False,
            headers={"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"},
        )
        self.requests = 0  # HTTP requests sent (every attempt and redirect hop)
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ politeness

    def _host(self, key: str) -> _Host:
        with self._hosts_lock:
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = _Host(self.settings.host_connections)
            return host

    @contextlib.contextmanager
    def _slot(self, key: str) -> Iterator[None]:
        host = self._host(key)
        with host.slots:
            while True:
                with host.lock:
                    now = time.monotonic()
                    if host.next_start <= now:
                        interval = max(1.0 / self.settings.host_rate if self.settings.host_rate > 0 else 0.0, host.min_interval)
                        if interval > 0:
                            host.next_start = now + interval
                        host.last_start = now
                        break
                    wait = host.next_start - now
                self._sleep(min(wait, 1.0))
            yield

    def slow_host(self, key: str, delay_s: float) -> None:
        """Keep ``delay_s`` between request starts to host ``key`` for the whole job (a robots.txt
        Crawl-delay): this task's share of it is ``delay_s`` times the tasks running at once."""
        host = self._host(key)
        with host.lock:
            host.min_interval = max(host.min_interval, delay_s * self.settings.parallel_tasks)
            # From the robots.txt request itself, which started before the delay was known: the
            # first image request followed it within milliseconds.
            host.next_start = max(host.next_start, host.last_start + host.min_interval)

    def _pause_host(self, key: str, seconds: float) -> None:
        host = self._host(key)
        with host.lock:
            host.next_start = max(host.next_start, time.monotonic() + seconds)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: base * 2^(attempt-1), capped, times U(0.5, 1.5)."""
        base = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2 ** (attempt - 1)))
        with self._random_lock:
            return base * self._random.uniform(0.5, 1.5)

    # ------------------------------------------------------------ fetching

    def fetch(self, url: str, check_redirect: Callable[[str], str | None] | None = None) -> FetchResult:
        """GET ``url`` with retries. ``check_redirect(target)``, when given, is asked before each
        redirect hop is requested (the crawl passes robots.txt: a redirect must not lead it
        where the target's host forbids); a reason it returns ends the fetch as
        ``ROBOTS_DISALLOWED``, the target never requested."""
        problem = url_problem(url)
        if problem:
            return FetchResult(url, BAD_URL, reason=problem)
        attempts = 0
        while True:
            attempts += 1
            try:
                body, final_url, http_status = self._attempt(url, check_redirect)
                return FetchResult(url, FETCHED, body=body, http_status=http_status, attempts=attempts, final_url=final_url, received_bytes=len(body))
            except _Attempt as failure:
                if not failure.retry or attempts > self.settings.retries:
                    reason = failure.reason if attempts == 1 else f"{failure.reason} (after {attempts} attempts)"
                    return FetchResult(url, failure.status, http_status=failure.http_status, attempts=attempts, reason=reason, received_bytes=failure.received)
                if failure.retry_after is not None:
                    delay = min(failure.retry_after, self.settings.retry_after_max_s)
                    self._pause_host(failure.host or host_key(url), delay)
                else:
                    delay = self._backoff(attempts)
                self._sleep(delay)

    def _attempt(self, url: str, check_redirect: Callable[[str], str | None] | None = None) -> tuple[bytes, str, int]:
        """One attempt, following redirects by hand. Returns (body, final url, status) or raises
        ``_Attempt``."""
        s = self.settings
        deadline: float | None = None  # set when the first request starts
        current, chain = url, [url]
        hop_status: int | None = None  # the last redirect's status, for a hop refused before its request
        while True:
            # Outside the host slot: the check may fetch the target host's robots.txt, and
            # waiting for one host's slot while holding another's could deadlock two threads.
            # Its time (that fetch has its own timeouts) is not charged to this attempt's deadline.
            if check_redirect is not None and len(chain) > 1:
                checked_at = time.monotonic()
                refusal = check_redirect(current)
                if refusal:
                    raise _Attempt(ROBOTS_DISALLOWED, f"redirected to {current}: {refusal}", http_status=hop_status)
                if deadline is not None:
                    deadline += time.monotonic() - checked_at
            key = host_key(current)
            queued_at = time.monotonic()
            with self._slot(key):
                # The timeout bounds the requests, not the wait for the host's turn (its rate,
                # Crawl-delay, a Retry-After pause): charged with the wait, a URL queued behind a
                # slow host timed out without being requested, and was requested again later.
                if deadline is None:
                    deadline = time.monotonic() + s.total_timeout_s
                else:
                    deadline += time.monotonic() - queued_at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Attempt(TIMEOUT, f"total timeout {s.total_timeout_s:g}s exceeded before the request", retry=True)
                timeout = urllib3.Timeout(connect=min(s.connect_timeout_s, remaining), read=min(s.read_timeout_s, remaining))
                with self._count_lock:
                    self.requests += 1
                try:
                    response = self._pool.urlopen("GET", current, redirect=False, retries=False, preload_content=False, timeout=timeout)
                except NewConnectionError as exc:  # refused, DNS (a subclass of ConnectTimeoutError)
                    raise _Attempt(CONNECTION_ERROR, f"connection error: {_short(exc)}", retry=True) from None
                except (ConnectTimeoutError, ReadTimeoutError, Urllib3TimeoutError) as exc:
                    raise _Attempt(TIMEOUT, f"timeout: {_short(exc)}", retry=True) from None
                except (LocationParseError, LocationValueError) as exc:
                    raise _Attempt(BAD_URL, f"unparsable url {current!r}: {exc}") from None
                except (HTTPError, OSError) as exc:
                    raise _Attempt(CONNECTION_ERROR, f"connection error: {_short(exc)}", retry=True) from None
                try:
                    status = response.status
                    if status in REDIRECT_STATUSES:
                        location = _header_text(response.headers.get("Location"))
                        _discard(response)
                        if not location:
                            raise _Attempt(HTTP_ERROR, f"HTTP {status} redirect without a Location header", http_status=status)
                        target = urljoin(current, location)
                        problem = url_problem(target)
                        if problem:
                            raise _Attempt(BAD_URL, f"redirect to a refused url: {problem}", http_status=status)
                        if target in chain:
                            raise _Attempt(TOO_MANY_REDIRECTS, "redirect loop: " + " -> ".join([*chain, target]), http_status=status)
                        chain.append(target)
                        hop_status = status
                        if len(chain) - 1 > s.max_redirects:
                            raise _Attempt(TOO_MANY_REDIRECTS, f"more than crawl.max_redirects={s.max_redirects} redirects", http_status=status)
                        current = target
                        continue
                    if status != 200:
                        retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
                        _discard(response)
                        raise _Attempt(
                            HTTP_ERROR,
                            f"HTTP {status} {response.reason or ''}".rstrip(),
                            http_status=status,
                            retry=status in RETRY_STATUSES,
                            retry_after=retry_after,
                            host=key,
                        )
                    return self._read_body(response, deadline), current, status
                finally:
                    response.release_conn()

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        s = self.settings
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isascii() and declared.strip().isdigit() and int(declared) > s.max_bytes:
            _discard(response, drain=False)
            raise _Attempt(TOO_LARGE, f"Content-Length {int(declared)} bytes > crawl.max_bytes={s.max_bytes}", http_status=200)
        chunks: list[bytes] = []
        received = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    _discard(response, drain=False)
                    raise _Attempt(TIMEOUT, f"total timeout {s.total_timeout_s:g}s exceeded after {received} bytes", http_status=200, retry=True, received=received)
                data = response.read1(_READ_CHUNK)
                if not data:
                    break
                received += len(data)
                if received > s.max_bytes:
                    _discard(response, drain=False)
                    raise _Attempt(TOO_LARGE, f"body over crawl.max_bytes={s.max_bytes} bytes (stopped reading)", http_status=200, received=received)
                chunks.append(data)
        except (ReadTimeoutError, Urllib3TimeoutError) as exc:
            _discard(response, drain=False)
            raise _Attempt(TIMEOUT, f"read timeout after {received} bytes: {_short(exc)}", http_status=200, retry=True, received=received) from None
        except (ProtocolError, HTTPError, OSError) as exc:
            _discard(response, drain=False)
            raise _Attempt(CONNECTION_ERROR, f"body broken after {received} bytes: {_short(exc)}", http_status=200, retry=True, received=received) from None
        return b"".join(chunks)


def _discard(response: urllib3.BaseHTTPResponse, drain: bool = True) -> None:
    """Drop a response: read a small remainder so the connection can be reused, else close it."""
    try:
        if drain:
            length = response.headers.get("Content-Length")
            if length is not None and length.isascii() and length.isdigit() and int(length) <= 64 * 1024:
                response.drain_conn()
                return
        response.close()
    except Exception:  # noqa: BLE001 - the connection is being dropped anyway
        with contextlib.suppress(Exception):
            response.close()


def _short(exc: BaseException) -> str:
    """urllib3's messages nest the pool and the URL; keep the useful innermost part."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."
