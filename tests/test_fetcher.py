"""The crawl fetcher alone, against a real HTTP server on 127.0.0.1 (tests/http_zoo.py)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from http_zoo import ZooServer, image_bytes

from museum_typology import fetcher
from museum_typology.fetcher import FetchSettings, Fetcher

FAST = FetchSettings(
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    total_timeout_s=1.5,
    retries=2,
    backoff_base_s=0.05,
    backoff_max_s=0.2,
    retry_after_max_s=5.0,
    max_redirects=3,
    max_bytes=2_000_000,
    threads=8,
    host_connections=4,
)


@pytest.fixture(scope="module")
def zoo():
    with ZooServer() as server:
        server.add("ok.jpg", image_bytes("JPEG"), "image/jpeg")
        yield server


def _fetch(zoo, path, settings=FAST):
    with Fetcher(settings, seed=0) as f:
        return f.fetch(zoo.url(path))


def test_good_image(zoo):
    result = _fetch(zoo, "/img/ok.jpg")
    assert result.ok and result.status == fetcher.FETCHED
    assert result.body == image_bytes("JPEG") and result.http_status == 200 and result.attempts == 1
    assert result.received_bytes == len(result.body) and result.final_url == zoo.url("/img/ok.jpg")


def test_user_agent_is_sent(zoo):
    _fetch(zoo, "/img/ok.jpg")
    assert zoo.user_agents[-1] == FAST.user_agent and "museum-typology" in FAST.user_agent


def test_404_is_not_retried(zoo):
    zoo.reset_counts()
    result = _fetch(zoo, "/status/404")
    assert (result.status, result.http_status, result.attempts) == (fetcher.HTTP_ERROR, 404, 1)
    assert result.reason == "HTTP 404 Not Found"
    assert zoo.requests["/status/404"] == 1


def test_500_then_200_is_retried(zoo):
    result = _fetch(zoo, "/flaky/fetcher")
    assert result.ok and result.attempts == 2 and zoo.requests["/flaky/fetcher"] == 2


def test_persistent_503_gives_up_after_the_retries(zoo):
    zoo.reset_counts()
    result = _fetch(zoo, "/status/503")
    assert (result.status, result.http_status, result.attempts) == (fetcher.HTTP_ERROR, 503, 3)
    assert "after 3 attempts" in result.reason and zoo.requests["/status/503"] == 3


def test_429_honours_retry_after(zoo):
    started = time.monotonic()
    result = _fetch(zoo, "/limited/fetcher")
    elapsed = time.monotonic() - started
    assert result.ok and result.attempts == 2
    assert elapsed >= 0.95  # Retry-After: 1, not the 0.05 s backoff


def test_slow_drip_times_out(zoo):
    started = time.monotonic()
    result = _fetch(zoo, "/drip", FetchSettings(**{**FAST.__dict__, "retries": 0}))
    assert result.status == fetcher.TIMEOUT and "total timeout 1.5s" in result.reason
    assert time.monotonic() - started < 4


def test_connection_reset(zoo):
    zoo.reset_counts()
    result = _fetch(zoo, "/reset")
    assert result.status == fetcher.CONNECTION_ERROR and result.attempts == 3
    assert "connection error" in result.reason and zoo.requests["/reset"] == 3


def test_wrong_content_length(zoo):
    result = _fetch(zoo, "/short")
    # Content-Length says 5000; the server sends less and closes: retried, then a connection error.
    assert result.status == fetcher.CONNECTION_ERROR and "body broken after" in result.reason
    assert "IncompleteRead" in result.reason and result.attempts == 3


def test_redirect_chain_within_the_cap(zoo):
    result = _fetch(zoo, "/redirect/3")
    assert result.ok and result.final_url == zoo.url("/img/ok.jpg") and result.attempts == 1


def test_redirect_chain_over_the_cap(zoo):
    result = _fetch(zoo, "/redirect/5")
    assert result.status == fetcher.TOO_MANY_REDIRECTS and "max_redirects=3" in result.reason


def test_a_redirect_to_a_raw_utf8_location_requests_the_servers_path(zoo):
    """http.client reads header bytes as latin-1: the Cyrillic path was requested as
    /img/%C3%91%C2%84... and the row ended as a 404."""
    zoo.add("%D1%84%D0%BE%D1%82%D0%BE.jpg", image_bytes("JPEG"), "image/jpeg")
    result = _fetch(zoo, "/to-raw-utf8")
    assert result.ok and result.final_url == zoo.url("/img/фото.jpg"), (result.status, result.reason, result.final_url)
    assert fetcher._header_text("/img/caf\xe9") == "/img/caf\xe9"  # latin-1 bytes that are not UTF-8: as read


def test_the_first_request_after_robots_txt_keeps_its_crawl_delay(zoo):
    """The Crawl-delay is known only after the robots.txt request: the first image request
    followed it within milliseconds."""
    with Fetcher(FAST, seed=0) as f:
        key = fetcher.host_key(zoo.url("/robots.txt"))
        first = time.monotonic()
        f.fetch(zoo.url("/img/ok.jpg"))  # stands for the robots.txt request: any request to the host
        f.slow_host(key, 0.4)
        f.fetch(zoo.url("/img/ok.jpg"))
        assert time.monotonic() - first >= 0.4


def test_one_resource_spelled_two_ways_is_one_url():
    """Both spellings are one request on the wire; the crawl fetched it twice."""
    spellings = ["http://h/cyr/фото.jpg", "http://h/cyr/%D1%84%D0%BE%D1%82%D0%BE.jpg", "http://h/cyr/%d1%84%d0%be%d1%82%d0%be.jpg", "HTTP://H:80/cyr/фото.jpg#x"]
    assert {fetcher.canonical_url(u) for u in spellings} == {"http://h/cyr/%D1%84%D0%BE%D1%82%D0%BE.jpg"}
    assert fetcher.canonical_url("http://h/A.JPG?q=фото") == "http://h/A.JPG?q=%D1%84%D0%BE%D1%82%D0%BE"  # case kept


def test_redirect_loop(zoo):
    result = _fetch(zoo, "/loop/a")
    assert result.status == fetcher.TOO_MANY_REDIRECTS and result.reason.startswith("redirect loop")
    assert result.attempts == 1


def test_a_redirect_hop_the_check_refuses_is_never_requested(zoo):
    asked = []

    def check(url):
        asked.append(url)
        return "robots.txt says no" if url.endswith("/img/ok.jpg") else None

    zoo.reset_counts()
    with Fetcher(FAST, seed=0) as f:
        result = f.fetch(zoo.url("/redirect/2"), check_redirect=check)
    assert result.status == fetcher.ROBOTS_DISALLOWED and result.reason == f"redirected to {zoo.url('/img/ok.jpg')}: robots.txt says no"
    assert result.attempts == 1 and not result.ok
    assert result.http_status in fetcher.REDIRECT_STATUSES  # the redirect that led there, not None
    assert asked == [zoo.url("/redirect/1"), zoo.url("/img/ok.jpg")]  # every hop, not the first URL
    assert zoo.requests["/img/ok.jpg"] == 0 and zoo.requests["/redirect/2"] == 1 and zoo.requests["/redirect/1"] == 1
    with Fetcher(FAST, seed=0) as f:
        assert f.fetch(zoo.url("/redirect/2"), check_redirect=lambda url: None).ok


def test_redirect_to_file_url_is_refused(zoo):
    result = _fetch(zoo, "/to-file")
    assert result.status == fetcher.BAD_URL and "'file' is not allowed" in result.reason


def test_declared_body_over_the_cap(zoo):
    result = _fetch(zoo, "/huge")
    assert result.status == fetcher.TOO_LARGE and "Content-Length 10000000000" in result.reason
    assert result.received_bytes == 0


def test_streamed_body_over_the_cap(zoo):
    result = _fetch(zoo, "/huge-chunked")
    assert result.status == fetcher.TOO_LARGE and "stopped reading" in result.reason
    assert FAST.max_bytes < result.received_bytes < 2 * FAST.max_bytes


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("file:///etc/passwd", "'file' is not allowed"),
        ("ftp://example.org/a.jpg", "'ftp' is not allowed"),
        ("http://[::1", "unparsable"),
        ("ht!tp://x/y", "not allowed"),
        ("", "empty url"),
        ("http:///nohost.jpg", "no host"),
        ("http://example.org/a b.jpg", "whitespace"),
        # refused by urllib3 only when it connects: a robots.txt fetch made them robots_disallowed
        ("http://a..b/x.jpg", "has an empty label or one over 63 characters"),
        (f"http://{'x' * 64}.org/x.jpg", "has an empty label or one over 63 characters"),
    ],
)
def test_bad_urls_are_never_requested(url, fragment):
    with Fetcher(FAST) as f:
        result = f.fetch(url)
        assert result.status == fetcher.BAD_URL and fragment in result.reason and result.attempts == 0
        assert f.requests == 0


def test_connection_refused():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Fetcher(FetchSettings(**{**FAST.__dict__, "retries": 1})) as f:
        result = f.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert result.status == fetcher.CONNECTION_ERROR and result.attempts == 2


def test_per_host_concurrency_is_bounded(zoo):
    zoo.add("tiny.png", image_bytes("PNG"), "image/png")
    zoo.reset_counts()
    settings = FetchSettings(**{**FAST.__dict__, "host_connections": 3, "total_timeout_s": 10.0})
    with Fetcher(settings) as f, ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: f.fetch(zoo.url(f"/slow/100/tiny.png?{i}")), range(24)))
    assert all(r.ok for r in results)
    assert zoo.max_in_flight == 3


def test_per_host_rate_is_bounded(zoo):
    zoo.reset_counts()
    settings = FetchSettings(**{**FAST.__dict__, "host_connections": 8, "host_rate": 20.0})
    with Fetcher(settings) as f, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: f.fetch(zoo.url(f"/img/ok.jpg?{i}")), range(20)))
    starts = sorted(zoo.start_times)
    assert len(starts) == 20
    assert starts[-1] - starts[0] >= 19 / 20 * 0.9  # 20 requests at 20/s span about 0.95 s


def test_the_wait_for_the_hosts_turn_is_not_charged_to_the_request_timeout(zoo):
    """At 4 requests/s, the 12th URL of 12 waits ~2.75 s for its turn: with a 1.5 s timeout that
    counted from before the wait, URLs timed out unrequested and were requested again later."""
    zoo.reset_counts()
    settings = FetchSettings(**{**FAST.__dict__, "host_connections": 8, "host_rate": 4.0, "retries": 0})
    with Fetcher(settings) as f, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: f.fetch(zoo.url(f"/img/ok.jpg?wait{i}")), range(12)))
    assert [r.status for r in results] == [fetcher.FETCHED] * 12, [r.reason for r in results if not r.ok]
    assert len(zoo.start_times) == 12  # each requested once


def test_backoff_grows_exponentially_with_jitter():
    f = Fetcher(FetchSettings(backoff_base_s=1.0, backoff_max_s=10.0), seed=1)
    delays = [f._backoff(a) for a in range(1, 7)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(10.0, 2 ** (attempt - 1))
        assert 0.5 * base <= delay <= 1.5 * base
    assert len(set(delays)) == len(delays)  # jittered


def test_retry_after_parsing():
    assert fetcher.parse_retry_after("7") == 7.0
    assert fetcher.parse_retry_after(None) is None and fetcher.parse_retry_after("soon") is None
    now = time.time()
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 28 <= fetcher.parse_retry_after(http_date, now) <= 31


def test_odd_header_values_are_a_result_not_an_exception(zoo):
    """fetch() never raises: a Retry-After or Content-Length of "²" (str.isdigit says yes) is a
    header to ignore, not a crawl task to fail."""
    limited = _fetch(zoo, "/odd-retry-after")
    assert (limited.status, limited.http_status, limited.attempts) == (fetcher.HTTP_ERROR, 429, FAST.retries + 1)
    body = _fetch(zoo, "/odd-length")
    assert body.ok and body.received_bytes > 0  # the length is unknown, so the body is read to its end
    assert fetcher.parse_retry_after("\xb2") is None and fetcher.parse_retry_after("²") is None


def test_retry_after_pauses_the_host_that_asked_not_the_one_that_redirected(zoo):
    with Fetcher(FAST, seed=0) as f:
        started = time.monotonic()
        result = f.fetch(zoo.url("/to-localhost-limited/x"))
        paused = {key: host.next_start - started for key, host in f._hosts.items()}
    assert result.ok and result.attempts == 2
    assert paused[fetcher.host_key(f"http://localhost:{zoo.port}/")] >= 0.9  # Retry-After: 1
    assert paused[fetcher.host_key(zoo.url("/"))] < 0.5  # the redirecting host was never asked to wait


def test_cluster_wide_limits_are_shared_between_tasks():
    section = {
        "user_agent": "ua", "connect_timeout_s": 1, "read_timeout_s": 2, "total_timeout_s": 3, "retries": 1,
        "backoff_base_s": 0.1, "backoff_max_s": 1, "retry_after_max_s": 5, "max_redirects": 2,
        "threads_per_task": 16, "host_connections": 10, "host_rate": 8.0,
    }
    s = FetchSettings.from_settings(section, max_bytes=100, parallel_tasks=4)
    assert s.host_connections == 2 and s.host_rate == 2.0 and s.threads == 16 and s.max_bytes == 100  # 4 x 2 <= 10
    assert FetchSettings.from_settings({**section, "host_connections": 48}, 100, parallel_tasks=20).host_connections == 2  # 40 <= 48
    assert FetchSettings.from_settings({**section, "host_connections": 1}, 100, parallel_tasks=4).host_connections == 1  # one each at least


def test_fetch_is_thread_safe_under_load(zoo):
    zoo.add("a.png", image_bytes("PNG", colour=(1, 2, 3)), "image/png")
    errors = []

    def worker(f):
        for i in range(20):
            r = f.fetch(zoo.url(f"/img/a.png?t={threading.get_ident()}-{i}"))
            if not r.ok:
                errors.append(r)

    with Fetcher(FAST) as f:
        threads = [threading.Thread(target=worker, args=(f,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert f.requests == 120
    assert not errors
