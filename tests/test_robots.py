"""robots.txt verdicts (RFC 9309) from fetch results, without a network."""
from __future__ import annotations

import threading
import time

from museum_typology import robots
from museum_typology.fetcher import BAD_URL, CONNECTION_ERROR, FETCHED, HTTP_ERROR, TIMEOUT, FetchResult

UA = "museum-typology-crawler/0.1 (research crawl)"
RULES = b"""
User-agent: *
Disallow: /private/

User-agent: museum-typology-crawler
Disallow: /no-museums/
Allow: /no-museums/ok.jpg
Crawl-delay: 2
"""


def _answer(status: str, http_status: int | None = None, body: bytes | None = None) -> FetchResult:
    return FetchResult("http://h.example/robots.txt", status, body=body, http_status=http_status, attempts=1, reason=f"{status} {http_status}")


def test_product_token_and_url():
    assert robots.product_token(UA) == "museum-typology-crawler"
    assert robots.robots_url("https://img.example:8443/a/b.jpg?x=1") == "https://img.example:8443/robots.txt"


def test_rules_of_a_200_apply_to_our_token_most_specific_group_first():
    rules = robots.rules_from(_answer(FETCHED, 200, RULES), UA)
    assert [r.pattern for r in rules.rules] == ["/no-museums/", "/no-museums/ok.jpg"]
    cache = robots.RobotsCache(lambda url: _answer(FETCHED, 200, RULES), UA)
    assert rules.crawl_delay_s == 2.0
    assert cache.check("http://h.example/no-museums/x.jpg").startswith("robots.txt of h.example disallows")
    assert cache.check("http://h.example/no-museums/ok.jpg") is None
    # Our own group replaces the * group (RFC 9309 2.2.1): /private/ is not ours to avoid.
    assert cache.check("http://h.example/private/a.jpg") is None
    assert cache.check("http://h.example/img/1.jpg") is None


def test_4xx_allows_all_and_5xx_or_no_answer_disallows_all():
    assert robots.rules_from(_answer(HTTP_ERROR, 404), UA).allow_all
    assert robots.rules_from(_answer(HTTP_ERROR, 403), UA).allow_all
    # 429 (still, after the retries) is a request to back off, not a 4xx "no rules"
    for answer in (_answer(HTTP_ERROR, 503), _answer(HTTP_ERROR, 429), _answer(TIMEOUT), _answer(CONNECTION_ERROR), _answer(BAD_URL)):
        rules = robots.rules_from(answer, UA)
        assert not rules.allow_all and not rules.verdict("/img/1.jpg") and "unreachable" in rules.reason


def test_one_fetch_per_host_even_with_many_threads_and_crawl_delay_reported():
    calls: list[str] = []
    delays: list[tuple[str, float]] = []

    def fetch(url: str) -> FetchResult:
        calls.append(url)
        time.sleep(0.05)  # the other threads arrive while the first is fetching
        return _answer(FETCHED, 200, RULES)

    cache = robots.RobotsCache(fetch, UA, on_crawl_delay=lambda host, s: delays.append((host, s)))
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.check("http://h.example/img/1.jpg"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.check("http://other.example/no-museums/y.jpg")
    assert calls == ["http://h.example/robots.txt", "http://other.example/robots.txt"]
    assert results == [None] * 8 and cache.fetched == 2
    assert delays == [("http://h.example:80", 2.0), ("http://other.example:80", 2.0)]


def test_wildcards_end_anchors_ties_and_the_star_group():
    text = """
# comment
User-agent: other-bot
Disallow: /

User-agent: *
Disallow: /*.gif$
Disallow: /scans/
Allow: /scans/
Disallow: /tmp
Allow: /tmp/public*
"""
    rules, delay = robots.parse(text, "museum-typology-crawler")
    verdict = robots.HostRules(rules=rules).verdict
    assert delay is None
    assert not verdict("/a/b.gif") and verdict("/a/b.gif?x=1") and verdict("/a/b.jpg")
    assert verdict("/scans/1.jpg")  # allow and disallow of the same length: allow wins
    assert not verdict("/tmp/x") and verdict("/tmp/public/x") and not verdict("/tmpfile")
    assert verdict("/")  # no rule matches
    everything, _ = robots.parse("User-agent: museum-typology-crawler\nDisallow: /\n", "museum-typology-crawler")
    assert not robots.HostRules(rules=everything).verdict("/img/1.jpg")
    assert robots.parse("Disallow: /\n", "x") == ((), None)  # rules before any User-agent belong to nobody


def test_a_byte_order_mark_does_not_orphan_the_first_group():
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /private/\n"
    cache = robots.RobotsCache(lambda url: _answer(FETCHED, 200, body), UA)
    assert cache.check("http://h.example/private/x.jpg").startswith("robots.txt of h.example disallows")
    assert cache.check("http://h.example/img/1.jpg") is None


def test_crawl_delays_that_cannot_be_honoured():
    """inf/nan/negative/zero are ignored (inf paused the host for ever); a finite delay over the
    cap makes the host disallow all, with the reason."""
    for value in ("inf", "nan", "-5", "0", "soon"):
        rules = robots.rules_from(_answer(FETCHED, 200, f"User-agent: *\nCrawl-delay: {value}\n".encode()), UA, max_crawl_delay_s=60)
        assert rules.crawl_delay_s is None and rules.verdict("/a.jpg"), value
    slow = robots.rules_from(_answer(FETCHED, 200, b"User-agent: *\nCrawl-delay: 86400\n"), UA, max_crawl_delay_s=60)
    assert not slow.verdict("/a.jpg") and "Crawl-delay of 86400 s, over crawl.max_crawl_delay_s=60" in slow.reason
    cache = robots.RobotsCache(lambda url: _answer(FETCHED, 200, b"User-agent: *\nCrawl-delay: 86400\n"), UA, max_crawl_delay_s=60)
    assert "over crawl.max_crawl_delay_s" in cache.check("http://h.example/a.jpg")
    assert robots.rules_from(_answer(FETCHED, 200, b"User-agent: *\nCrawl-delay: 30\n"), UA, max_crawl_delay_s=60).crawl_delay_s == 30.0
