"""robots.txt for the crawl, read as RFC 9309 asks: once per host (per Spark task), through the
crawl's own fetcher (same timeouts, retries, redirect cap and User-Agent), and cached.

What an answer means (RFC 9309, section 2.3.1):
- 200: its rules apply to our User-Agent's product token (``museum-typology-crawler``): the
  groups naming it (else the ``*`` groups), the longest matching path pattern wins, ``allow`` on a
  tie, ``*`` and ``$`` understood. (``urllib.robotparser`` takes the first match and knows no
  wildcards, so it is not used.)
- 4xx (404 most often): there is no robots.txt; everything is allowed. Not 429 (still, after
  the retries): a host rate-limiting even its robots.txt is treated as below.
- 5xx after the retries, a timeout, a refused connection: the host is treated as disallowing
  everything, since a server in trouble must not be crawled harder. Rows of such a host get
  ``robots_disallowed`` with the reason and can be crawled by a later ``--resume``-less re-run.
A ``Crawl-delay`` is honoured as a minimum interval between request starts to that host.

Pure apart from the fetch function it is given, so it is tested without a network.
"""
from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from .fetcher import FETCHED, HTTP_ERROR, FetchResult, host_key

# RFC 9309 asks crawlers to parse at least the first 500 KiB.
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str  # as written, percent-encoding normalised

    def matches(self, path: str) -> bool:
        return _compile(self.pattern).match(path) is not None


@dataclass(frozen=True)
class HostRules:
    """The robots.txt verdict for one host."""

    rules: tuple[Rule, ...] = ()
    allow_all: bool = False
    reason: str | None = None  # set when everything is disallowed because robots.txt was unreachable
    crawl_delay_s: float | None = None

    def verdict(self, path: str) -> bool:
        """Allowed? The longest matching pattern decides; allow wins a tie; no match allows."""
        if self.allow_all:
            return True
        if self.reason is not None:
            return False
        best: Rule | None = None
        for rule in self.rules:
            if rule.matches(path) and (best is None or len(rule.pattern) > len(best.pattern) or (len(rule.pattern) == len(best.pattern) and rule.allow)):
                best = rule
        return best is None or best.allow


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compile(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        compiled = re.compile("".join(".*" if c == "*" else re.escape(c) for c in body) + ("$" if anchored else ""))
        _PATTERNS[pattern] = compiled
    return compiled


def _normalise(path: str) -> str:
    """Percent-encode the way both sides compare: decode, then encode all but the reserved."""
    return quote(unquote(path), safe="/*$?=&;:@+,!~'()%")


def parse(text: str, token: str) -> tuple[tuple[Rule, ...], float | None]:
    """The rules and Crawl-delay that apply to ``token`` in a robots.txt. Pure.

    Groups start at ``User-agent`` lines (consecutive ones share a group); every group naming
    ``token`` (case-insensitive) applies, merged; if none does, the ``*`` groups apply."""
    groups: list[tuple[list[str], list[Rule], list[float]]] = []
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if not in_agents:
                groups.append(([], [], []))
            groups[-1][0].append(value.lower())
            in_agents = True
            continue
        in_agents = False
        if not groups:
            continue  # rules before any User-agent line belong to nobody
        if key in ("allow", "disallow") and value:
            groups[-1][1].append(Rule(allow=key == "allow", pattern=_normalise(value)))
        elif key == "crawl-delay":
            try:
                delay = float(value)
            except ValueError:
                continue
            if math.isfinite(delay) and delay > 0:  # "inf" would pause the host for ever, "nan" compares false
                groups[-1][2].append(delay)
    token = token.lower()
    chosen = [g for g in groups if token in g[0]] or [g for g in groups if "*" in g[0]]
    rules = tuple(rule for g in chosen for rule in g[1])
    delays = [d for g in chosen for d in g[2]]
    return rules, (max(delays) if delays else None)


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"


def product_token(user_agent: str) -> str:
    """``museum-typology-crawler/0.1 (...)`` -> ``museum-typology-crawler`` (what robots.txt
    ``User-agent`` lines name)."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0].strip() or "*"


def rules_from(result: FetchResult, user_agent: str, max_crawl_delay_s: float | None = None) -> HostRules:
    """The verdict for one host from the fetch of its robots.txt. Pure. A Crawl-delay over
    ``max_crawl_delay_s`` cannot be honoured within a crawl: the host counts as disallowing all."""
    if result.status == FETCHED:
        # utf-8-sig: a BOM would glue itself to the first "User-agent" and orphan its group's rules.
        text = (result.body or b"")[:MAX_ROBOTS_BYTES].decode("utf-8-sig", errors="replace")
        rules, delay = parse(text, product_token(user_agent))
        if delay is not None and max_crawl_delay_s is not None and delay > max_crawl_delay_s:
            return HostRules(reason=f"robots.txt asks a Crawl-delay of {delay:g} s, over crawl.max_crawl_delay_s={max_crawl_delay_s:g}: the host is treated as disallowing all")
        return HostRules(rules=rules, crawl_delay_s=delay)
    # A 4xx means "no rules" (RFC 9309), except 429: a host that rate-limits even its robots.txt
    # (after the fetcher's retries, Retry-After honoured) is asking us to back off, not inviting
    # a crawl at full speed; counted as unreachable, as Google's crawler does.
    if result.status == HTTP_ERROR and result.http_status is not None and 400 <= result.http_status < 500 and result.http_status != 429:
        return HostRules(allow_all=True)
    detail = result.reason or result.status
    return HostRules(reason=f"robots.txt unreachable ({detail}): the host is treated as disallowing all (RFC 9309)")


class RobotsCache:
    """``check(url)`` -> None when robots.txt allows the URL, else the reason. Thread-safe: the
    first thread to need a host fetches its robots.txt, the others wait for that answer."""

    def __init__(self, fetch: Callable[[str], FetchResult], user_agent: str, on_crawl_delay: Callable[[str, float], None] | None = None, max_crawl_delay_s: float | None = None):
        self._fetch = fetch
        self._max_crawl_delay_s = max_crawl_delay_s
        self._user_agent = user_agent
        self._token = product_token(user_agent)
        self._on_crawl_delay = on_crawl_delay
        self._rules: dict[str, HostRules] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetched = 0  # robots.txt requests made (one per host)

    def rules(self, url: str) -> HostRules:
        key = host_key(url)
        with self._lock:
            if key in self._rules:
                return self._rules[key]
            host_lock = self._locks.setdefault(key, threading.Lock())
        with host_lock:
            with self._lock:
                if key in self._rules:
                    return self._rules[key]
            rules = rules_from(self._fetch(robots_url(url)), self._user_agent, self._max_crawl_delay_s)
            if rules.crawl_delay_s and self._on_crawl_delay is not None:
                self._on_crawl_delay(key, rules.crawl_delay_s)
            with self._lock:
                self._rules[key] = rules
                self.fetched += 1
            return rules

    def check(self, url: str) -> str | None:
        rules = self.rules(url)
        parts = urlsplit(url)
        path = _normalise((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        if rules.verdict(path):
            return None
        return rules.reason or f"robots.txt of {parts.netloc} disallows this path for {self._token}"
