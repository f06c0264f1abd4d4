"""Text normalisation speed: titles/s of ``text.normalize`` as in this tree against the same module
at an earlier commit, side by side in one run (``side_by_side.alternate``: a warm-up of each, then
alternating rounds; best of each), and a check that both give the same text for every title
under every rule version.

    .venv/bin/python benchmarks/normalize.py [--against 8a0795d] [--copies 20] [--rounds 3]

Every night ``rescore`` normalises each catalogue description on the driver (to compare its hash
with the stored one), so at 1M rows this is the bulk of a night in which little changed.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from museum_typology import text as current  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.ingest import read_input_rows  # noqa: E402
from museum_typology.text import KNOWN_VERSIONS  # noqa: E402
from side_by_side import alternate  # noqa: E402


def module_at(revision: str):
    """``museum_typology.text`` as it was at ``revision`` (it imports nothing of the package)."""
    source = subprocess.run(["git", "show", f"{revision}:lib/museum_typology/text.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "text_then.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("text_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds(normalize, titles: list[str]) -> float:
    start = time.perf_counter()
    for title in titles:
        normalize(title)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="8a0795d", help="the commit to compare with (default: the last one before the guarded patterns)")
    parser.add_argument("--copies", type=int, default=20, help="how many times the shared titles are timed over (default 20)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = load_settings()
    titles = [r.description for r in read_input_rows(settings.get("paths.data"), settings) if r.description]
    then = module_at(args.against)
    for version in KNOWN_VERSIONS:
        differ = sum(current.normalize(t, version) != then.normalize(t, version) for t in titles)
        print(f"rule version {version}: {len(titles)} titles, {differ} normalised differently")
    batch = titles * args.copies
    normalizers = {"now": current.normalize, "before": then.normalize}
    runs, _ = alternate(lambda name: (seconds(normalizers[name], batch), None), args.rounds)  # in turn: a busy spell hits both
    best = {name: min(values) for name, values in runs.items()}
    for name, label in (("before", f"at {args.against}"), ("now", "this tree")):
        print(f"{label:>14}: {len(batch) / best[name]:9,.0f} titles/s ({best[name] / len(batch) * 1e6:.1f} us per title)")
    print(f"ratio: {best['before'] / best['now']:.2f}x; at 1M catalogue rows {best['before'] / len(batch) * 1e6:.0f} s -> {best['now'] / len(batch) * 1e6:.0f} s of one core")


if __name__ == "__main__":
    main()
