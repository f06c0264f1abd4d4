#!/usr/bin/env python
"""Ingest throughput: a naive single-process Pillow loop against the real ingest job, same files.

(a) naive: what a plain script does with an images archive: for each file, open it, convert to
    RGB, ``thumbnail`` to ``max_side``, encode JPEG as the job stores it
    (``petastorm_io.encode_image``, so the encode work equals the job's). No guards, no EXIF transpose, no hashing, no Parquet output.
(b) job:   ``museum_typology.ingest.run`` on a local SparkSession (``local[*]`` by default),
    end to end: CSV checks, planning, decode/encode in Spark tasks, Parquet part files,
    petastorm metadata, manifest, reconciliation, atomic commit.

Both phases run in this one process run, interleaved when ``--rounds`` > 1 (ABBA order), because
a 2-core shared machine drifts by tens of percent between runs: ratios across separate runs
mean little. The Spark session start is timed apart, so (b) is reported with and without it.

Peak memory comes from a background thread that samples RSS with psutil every 50 ms: for (a)
this process alone (the naive loop is single-process); for (b) the whole process tree: this
Python driver, the driver JVM (which hosts the local executors) and the Python workers.
RSS counts pages shared between forked workers once per process, so (b)'s total is an upper
bound.

Input: by default a seeded synthetic corpus in a temp dir (``--n`` JPEGs, 800-3000 px, smooth
random content at 100-600 KB each, packed as ``images.zip`` plus the three CSVs the job reads);
``--shared`` uses the project's shared data instead, ``--data DIR`` any directory of that shape.

    .venv/bin/python benchmarks/ingest.py [--n 400] [--shared] [--max-side 512] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
try:
    import museum_typology  # noqa: F401  (installed editable by `make setup`)
except ImportError:  # a checkout without the editable install: use the sources
    sys.path.insert(0, str(ROOT / "lib"))

from museum_typology import petastorm_io  # noqa: E402
from museum_typology.config import Settings, load_settings  # noqa: E402
from museum_typology.crawl_rehearsal import encode_jpeg_near  # noqa: E402
from museum_typology.log import get_logger, setup_logging  # noqa: E402
from museum_typology.schema import CLASSES, make_image_schema  # noqa: E402

log = get_logger("benchmarks.ingest")

# Synthetic corpus shape (the brief: realistic catalogue scans, 800-3000 px, 100-600 KB each).
MIN_SIDE_PX, MAX_SIDE_PX = 800, 3000
MIN_KB, MAX_KB = 100, 600
SAMPLE_INTERVAL_S = 0.05
MB = 1024 * 1024


# ---------------------------------------------------------------- synthetic corpus


def _smooth_content(rng: np.random.Generator, width: int, height: int, grey: bool, scale: float) -> Image.Image:
    """Smooth random content: a low-frequency colour field plus texture in cells of ``scale``
    pixels, both upscaled bicubically. Compresses like a photo (not like noise, not a flat fill)."""
    low_w, low_h = max(4, int(width / scale)), max(4, int(height / scale))
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    low = np.asarray(Image.fromarray(base).resize((low_w, low_h), Image.Resampling.BICUBIC), dtype=np.int16)
    low = low + rng.normal(0, 12, (low_h, low_w, 1)).astype(np.int16)
    image = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    return image.convert("L") if grey else image


def _make_jpeg(seed: int, index: int) -> tuple[str, bytes, dict[str, Any]]:
    """One deterministic JPEG (a function of (seed, index) only, so worker count doesn't matter)."""
    rng = np.random.default_rng([seed, index])
    guid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    long_side = int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1))
    short_side = max(MIN_SIDE_PX, int(long_side / rng.uniform(1.0, 1.6)))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    # A realistic mix: mostly baseline RGB, some progressive, some greyscale document scans,
    # some camera files whose EXIF says "rotate" (the job transposes them, the naive loop doesn't).
    grey = rng.random() < 0.10
    progressive = rng.random() < 0.15
    rotated = rng.random() < 0.10
    # Bigger files for bigger images, with jitter, always inside [MIN_KB, MAX_KB].
    span = (width * height - MIN_SIDE_PX**2) / (MAX_SIDE_PX**2 - MIN_SIDE_PX**2)  # 0 (smallest) .. 1 (largest)
    # Finer texture on small images: at 12 px cells an 800x800 image stays under 100 KB even at q95.
    # With these cells the quality search below ends at JPEG q 70-95 (measured), as real photos do.
    image = _smooth_content(rng, width, height, grey, scale=8.0 + 4.0 * span)
    target = float(np.clip((MIN_KB + (MAX_KB - MIN_KB) * span) * rng.uniform(0.8, 1.2), MIN_KB * 1.1, MAX_KB * 0.9)) * 1024
    exif = Image.Exif()
    if rotated:
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data, quality = encode_jpeg_near(image, target, (MIN_KB * 1024, MAX_KB * 1024), progressive=progressive, exif=exif.tobytes())
    info = {"width": width, "height": height, "bytes": len(data), "quality": quality, "grey": grey, "progressive": progressive, "exif_rotated": rotated}
    return guid, data, info


@dataclass
class Corpus:
    data_dir: str
    source: str  # "synthetic" or "shared"/path
    files: int
    archive_mb: float
    description: str
    stats: dict[str, Any] = field(default_factory=dict)


def make_corpus(directory: Path, n: int, seed: int, workers: int) -> Corpus:
    """Write images.zip (images/<guid>.jpg, stored: JPEGs don't deflate) and the job's CSVs."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        made = list(pool.map(_make_jpeg, [seed] * n, range(n), chunksize=8))
    with zipfile.ZipFile(directory / "images.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for guid, data, _ in made:
            archive.writestr(f"images/{guid}.jpg", data)
    labels = [CLASSES[int(i)] for i in rng.integers(0, len(CLASSES), n)]
    _write_csv(directory / "train_images.csv", [(guid, "", label) for (guid, _, _), label in zip(made, labels)])
    # The job requires train.csv and reads test.csv; a few text-only rows keep their code paths honest.
    text_rows = [(str(uuid.UUID(bytes=rng.bytes(16), version=4)), f"Предмет {i}. Бумага, тушь", CLASSES[i % len(CLASSES)]) for i in range(30)]
    _write_csv(directory / "train.csv", text_rows)
    _write_csv(directory / "test.csv", [(str(uuid.UUID(bytes=rng.bytes(16), version=4)), f"Монета {i}", "") for i in range(10)])
    sizes_kb = np.array([info["bytes"] for _, _, info in made]) / 1024
    pixels_mp = np.array([info["width"] * info["height"] for _, _, info in made]) / 1e6
    stats = {
        "seed": seed,
        "kb_min_median_max": [round(float(x)) for x in np.percentile(sizes_kb, [0, 50, 100])],
        "megapixels_min_median_max": [round(float(x), 2) for x in np.percentile(pixels_mp, [0, 50, 100])],
        "quality_min_median_max": [int(x) for x in np.percentile([i["quality"] for _, _, i in made], [0, 50, 100])],
        "greyscale": sum(i["grey"] for _, _, i in made),
        "progressive": sum(i["progressive"] for _, _, i in made),
        "exif_rotated": sum(i["exif_rotated"] for _, _, i in made),
        "generate_seconds": round(time.perf_counter() - started, 1),
    }
    archive_mb = (directory / "images.zip").stat().st_size / MB
    description = (
        f"{n} synthetic JPEGs (seed {seed}), {stats['megapixels_min_median_max'][0]}-{stats['megapixels_min_median_max'][2]} MP "
        f"(median {stats['megapixels_min_median_max'][1]}), {stats['kb_min_median_max'][0]}-{stats['kb_min_median_max'][2]} KB "
        f"(median {stats['kb_min_median_max'][1]}), {archive_mb:.0f} MB zip"
    )
    return Corpus(str(directory), "synthetic", n, round(archive_mb, 1), description, stats)


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "description", "typology"])
        writer.writerows(rows)


def existing_corpus(data_dir: Path, settings: Settings, source: str) -> Corpus:
    archive = data_dir / settings.get("ingest.images")
    if not archive.is_file():
        raise SystemExit(f"{archive}: no images archive (the benchmark reads a zip, as the job does by default)")
    with zipfile.ZipFile(archive) as handle:
        members = [info for info in handle.infolist() if not info.is_dir()]
    archive_mb = archive.stat().st_size / MB
    description = f"{len(members)} images from {data_dir} (mixed formats and sizes), {archive_mb:.0f} MB zip"
    return Corpus(str(data_dir), source, len(members), round(archive_mb, 1), description)


# ---------------------------------------------------------------- memory sampling


def _role(process: psutil.Process, me: int) -> str:
    if process.pid == me:
        return "driver_python"
    name = process.name()
    if name.startswith("java"):
        return "jvm"
    cmdline = " ".join(process.cmdline())
    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
        return "python_workers"
    return "other"


@dataclass
class MemoryPeak:
    peak_total_mb: float = 0.0
    at_peak_mb: dict[str, float] = field(default_factory=dict)  # per role, in the sample with the peak total
    peak_by_role_mb: dict[str, float] = field(default_factory=dict)  # each role's own peak (maybe other samples)
    max_processes: int = 0
    samples: int = 0


class MemorySampler:
    """Samples RSS of this process (``tree=False``) or of its whole process tree in a thread.

    A thread, not a process, so it sees Spark's children without extra plumbing. Its cost,
    measured here: ~0.05 ms per sample for this process alone, ~3 ms for the tree of a local
    Spark (listing /proc for children), i.e. ~6% of one core during (b), which (b) pays.
    """

    def __init__(self, tree: bool, interval: float = SAMPLE_INTERVAL_S, root: int | None = None, exclude: Collection[int] = ()):
        """``root``: the process to sample (default this one), e.g. a tool run as a subprocess;
        ``exclude``: pids left out of the sum (a helper server that is not part of the job)."""
        self.tree, self.interval, self.exclude = tree, interval, frozenset(exclude)
        self.result = MemoryPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._me = psutil.Process(root)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            processes = [self._me] + (self._me.children(recursive=True) if self.tree else [])
        except psutil.Error:
            return  # the sampled process has exited (a subprocess root)
        processes = [process for process in processes if process.pid not in self.exclude]
        by_role: dict[str, float] = {}
        for process in processes:
            try:
                # Classified afresh each sample, never cached by pid: a pid can exec() another
                # program (launcher scripts, spawn helpers), and caching once mislabelled one.
                role = _role(process, self._me.pid)
                rss = process.memory_info().rss / MB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that exited between listing and reading
            by_role[role] = by_role.get(role, 0.0) + rss
        total = sum(by_role.values())
        result = self.result
        result.samples += 1
        result.max_processes = max(result.max_processes, len(processes))
        for role, rss in by_role.items():
            result.peak_by_role_mb[role] = round(max(result.peak_by_role_mb.get(role, 0.0), rss), 1)
        if total > result.peak_total_mb:
            result.peak_total_mb = round(total, 1)
            result.at_peak_mb = {role: round(rss, 1) for role, rss in sorted(by_role.items())}


# ---------------------------------------------------------------- the two phases


@dataclass
class PhaseResult:
    phase: str  # "naive" or "job"
    round: int
    files: int  # image files handled (the rate's numerator, the same for both phases)
    ok: int  # images decoded and encoded
    failed: int
    seconds: float
    images_per_s: float
    memory: MemoryPeak
    baseline_rss_mb: float  # this process's RSS just before the phase
    load_1min: float  # the machine's 1-minute load average as the phase began: how noisy it was
    extra: dict[str, Any] = field(default_factory=dict)


def run_naive(archive_path: Path, max_side: int, codec: str, jpeg_quality: int, round_no: int) -> PhaseResult:
    """(a) The loop a plain script would write. Failures are counted, never fatal, so it can run
    over the shared data's odd files (CMYK, alpha PNGs, huge scans)."""
    image_field = make_image_schema(codec, jpeg_quality).fields["image"]
    baseline, load = psutil.Process().memory_info().rss / MB, os.getloadavg()[0]
    ok = failed = out_bytes = 0
    with MemorySampler(tree=False) as sampler:
        started = time.perf_counter()
        with zipfile.ZipFile(archive_path) as archive:
            members = [info.filename for info in archive.infolist() if not info.is_dir()]
            report_every = max(1, len(members) // 5)
            for number, member in enumerate(members, 1):
                try:
                    with Image.open(io.BytesIO(archive.read(member))) as opened:
                        image = opened.convert("RGB")  # loads the full-resolution pixels
                    image.thumbnail((max_side, max_side))
                    # the job's encoder (Pillow), so that both sides do the same encode work
                    out_bytes += len(petastorm_io.encode_image(image_field, np.asarray(image)))
                    ok += 1
                except Exception as exc:  # noqa: BLE001 - a naive loop skips what it can't read
                    failed += 1
                    log.debug("naive: %s: %s", member, exc)
                if number % report_every == 0:
                    log.info("naive loop: %d/%d files, %.1f s", number, len(members), time.perf_counter() - started)
        seconds = time.perf_counter() - started
    return PhaseResult(
        "naive", round_no, len(members), ok, failed, round(seconds, 2), round(len(members) / seconds, 2), sampler.result, round(baseline, 1), round(load, 2), {"encoded_mb": round(out_bytes / MB, 1)}
    )


def run_job(spark, settings: Settings, corpus: Corpus, scratch: Path, round_no: int) -> PhaseResult:
    """(b) The real ingest job, into a fresh output directory (deleted afterwards, untimed)."""
    from museum_typology import ingest

    output = scratch / f"ingest-round{round_no}"
    baseline, load = psutil.Process().memory_info().rss / MB, os.getloadavg()[0]
    with MemorySampler(tree=True) as sampler:
        started = time.perf_counter()
        summary = ingest.run(spark, settings, corpus.data_dir, str(output))
        seconds = time.perf_counter() - started
    shutil.rmtree(output, ignore_errors=True)
    counts = summary["status_counts"]
    ok = summary["dataset_rows"]
    failed = counts.get("quarantined", 0)
    if ok + failed != corpus.files:
        log.warning("job: %d ok + %d quarantined != %d image files in the archive", ok, failed, corpus.files)
    return PhaseResult(
        "job", round_no, corpus.files, ok, failed, round(seconds, 2), round(corpus.files / seconds, 2), sampler.result, round(baseline, 1), round(load, 2), {"status_counts": counts}
    )


# ---------------------------------------------------------------- report


def _median(results: list[PhaseResult], phase: str, attribute: str) -> float:
    return statistics.median(getattr(r, attribute) for r in results if r.phase == phase)


def _memory_text(result: PhaseResult) -> str:
    parts = ", ".join(f"{role.replace('_', ' ')} {mb:.0f}" for role, mb in result.memory.at_peak_mb.items())
    return f"{result.memory.peak_total_mb:.0f} ({parts})"


def summarise(results: list[PhaseResult], spark_start_s: float, corpus: Corpus, args: argparse.Namespace, environment: dict[str, Any]) -> dict[str, Any]:
    naive_rate = _median(results, "naive", "images_per_s")
    job_rate = _median(results, "job", "images_per_s")
    first_job = next(r for r in results if r.phase == "job")
    job_rate_with_start = first_job.files / (spark_start_s + first_job.seconds)
    return {
        "note": "ratios come from this one run on this machine; repeat the run before trusting small differences",
        "corpus": asdict(corpus),
        "settings": {"max_side": args.max_side, "master": args.master, "rounds": args.rounds},
        "environment": environment,
        "spark_start_seconds": round(spark_start_s, 2),
        "naive_images_per_s": round(naive_rate, 2),
        "job_images_per_s": round(job_rate, 2),
        "job_images_per_s_with_spark_start": round(job_rate_with_start, 2),
        "ratio_job_over_naive": round(job_rate / naive_rate, 2),
        "ratio_job_with_spark_start_over_naive": round(job_rate_with_start / naive_rate, 2),
        "naive_peak_rss_mb": max(r.memory.peak_total_mb for r in results if r.phase == "naive"),
        "job_peak_rss_mb": max(r.memory.peak_total_mb for r in results if r.phase == "job"),
        "rounds": [asdict(r) for r in results],
    }


def print_table(summary: dict[str, Any], results: list[PhaseResult]) -> None:
    corpus = summary["corpus"]
    env = summary["environment"]
    settings = summary["settings"]
    print()
    generated = corpus["stats"].get("generate_seconds")
    print(f"ingest benchmark: {corpus['description']}" + (f" (generated in {generated:.0f} s, untimed)" if generated else ""))
    print(
        f"max_side {settings['max_side']}, master {settings['master']} ({env['cpu_count']} CPUs), rounds {settings['rounds']}; "
        f"load average {env['loadavg_before'][0]:.1f} before, {env['loadavg_after'][0]:.1f} after"
    )
    print()
    print(f"{'':34} {'round':>5} {'load':>5} {'files':>6} {'ok':>5} {'seconds':>8} {'images/s':>9}  peak RSS MB")
    labels = {"naive": "(a) naive Pillow loop, 1 process", "job": f"(b) ingest job, {settings['master']}"}
    for r in results:
        print(f"{labels[r.phase]:34} {r.round:>5} {r.load_1min:>5.1f} {r.files:>6} {r.ok:>5} {r.seconds:>8.2f} {r.images_per_s:>9.2f}  {_memory_text(r)}")
    first_job = next(r for r in results if r.phase == "job")
    start = summary["spark_start_seconds"]
    print(
        f"{'(b) + Spark session start':34} {first_job.round:>5} {'':>5} {first_job.files:>6} {first_job.ok:>5} "
        f"{start + first_job.seconds:>8.2f} {summary['job_images_per_s_with_spark_start']:>9.2f}  (start alone {start:.2f} s)"
    )
    print()
    which = "median of rounds" if settings["rounds"] > 1 else "one round each"
    print(
        f"(b)/(a) images/s: {summary['ratio_job_over_naive']:.2f} without Spark start, "
        f"{summary['ratio_job_with_spark_start_over_naive']:.2f} with it ({which})"
    )
    naive_baseline = min(r.baseline_rss_mb for r in results if r.phase == "naive")
    print(f"peak RSS: (a) {summary['naive_peak_rss_mb']:.0f} MB (this process; {naive_baseline:.0f} MB of it before the loop: imports), (b) {summary['job_peak_rss_mb']:.0f} MB (driver Python + JVM + Python workers; RSS double-counts shared pages)")
    print("These ratios are from this one run on a shared, noisy machine: rerun before trusting differences of a few tens of percent.")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shared", action="store_true", help="use the shared data (paths.data, $MUSEUM_DATA; ../shared/data) instead of a synthetic corpus")
    source.add_argument("--data", metavar="DIR", help="use this data directory (images.zip + CSVs) instead of a synthetic corpus")
    parser.add_argument("--n", type=int, default=400, help="synthetic images to generate (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus (default 0)")
    parser.add_argument("--max-side", type=int, help="longer side of stored images (default: images.max_side from the settings)")
    parser.add_argument("--master", help="Spark master (default: spark.master from the settings, local[*])")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (a) and (b), in ABBA order; >1 reports medians (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help="override a setting, as in museum-typology")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    # Spark's Python workers must run this interpreter (build_spark also sets these).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    overrides = list(args.overrides)
    if args.max_side:
        overrides.append(f"images.max_side={args.max_side}")
    settings = load_settings(overrides=overrides)
    args.max_side = int(settings.get("images.max_side"))
    args.master = args.master or settings.get("spark.master")

    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    spark = None
    try:
        if args.shared or args.data:
            data_dir = Path(args.data or settings.get("paths.data"))
            if not data_dir.is_absolute() and not data_dir.is_dir():
                data_dir = ROOT / data_dir  # paths.data is relative to the project root
            corpus = existing_corpus(data_dir.resolve(), settings, "shared" if args.shared else "data")
        else:
            corpus_dir = scratch / "data"
            corpus_dir.mkdir()
            log.info("generating %d synthetic JPEGs into %s", args.n, corpus_dir)
            corpus = make_corpus(corpus_dir, args.n, args.seed, os.cpu_count() or 1)
        log.info("corpus: %s", corpus.description)
        archive_path = Path(corpus.data_dir) / settings.get("ingest.images")
        codec, quality = str(settings.get("images.codec")), int(settings.get("images.jpeg_quality"))
        # Read the archive once untimed so neither phase pays for a cold page cache.
        archive_path.read_bytes()

        environment = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        }
        results: list[PhaseResult] = []
        spark_start_s = 0.0
        for round_no in range(1, args.rounds + 1):
            # ABBA: round 1 a,b; round 2 b,a; ... so drift in machine load hits both phases alike.
            order = ("naive", "job") if round_no % 2 else ("job", "naive")
            for phase in order:
                if phase == "naive":
                    log.info("round %d: (a) naive Pillow loop over %d files", round_no, corpus.files)
                    results.append(run_naive(archive_path, args.max_side, codec, quality, round_no))
                else:
                    if spark is None:
                        from museum_typology.session import build_spark

                        log.info("starting Spark (%s)", args.master)
                        started = time.perf_counter()
                        spark = build_spark(settings, "bench-ingest", master=args.master)
                        spark_start_s = time.perf_counter() - started
                        log.info("Spark session started in %.2f s", spark_start_s)
                    log.info("round %d: (b) ingest job over %d files", round_no, corpus.files)
                    results.append(run_job(spark, settings, corpus, scratch, round_no))
                log.info("  %s: %.2f images/s", phase, results[-1].images_per_s)
        environment["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        import pyspark

        environment["pyspark"] = pyspark.__version__
        environment["spark_default_parallelism"] = spark.sparkContext.defaultParallelism
        summary = summarise(results, spark_start_s, corpus, args, environment)
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print_table(summary, results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
