#!/usr/bin/env python
"""Crawl throughput against a local image server that adds a fixed delay per request.

One run, same URL list, same server (``museum_typology.crawl_rehearsal.ImageServer`` in a forked
process: realistic JPEGs, 800-3000 px, 100-600 KB, ``--delay-ms`` added per request, 400 by
default: the 2021 baseline's 2.2 images/s means about 450 ms a request):

(a) naive:      a sequential loop, requests + Pillow (open, convert, thumbnail): the 2021 baseline
                (run on the first ``--naive-n`` URLs only; it is slow by construction)
(b) crawler:    ``museum_typology.crawl.run`` on local Spark, end to end (fetch, decode, encode,
                part files, manifest, metadata, commit); Spark session start timed apart
(c) img2dataset: PyPI ``img2dataset`` with its pyspark distributor, in its own virtualenv
                (``--img2dataset-venv``, created with ``--install-img2dataset``: its pins clash
                with ours), resize to the same longest side, parquet output
(d) decode:     ``images.decode_image`` alone (draft mode, sha256) on the same bodies in a
                process pool of one process per core: the CPU bound of (b), measured before and
                after (b) (the ratio uses their mean); also decode + JPEG encode, which (b) does too

and the crawler's peak memory (RSS summed over the driver, the JVM and the Python workers,
sampled every 50 ms; the image server excluded) at two corpus sizes (``--sizes``).

    .venv/bin/python benchmarks/crawl.py                     # 2000 URLs (+20000 for memory); about 12 minutes on 2 cores
    .venv/bin/python benchmarks/crawl.py --sizes 500,2000    # quicker; fixed costs weigh more at 500
    .venv/bin/python benchmarks/crawl.py --install-img2dataset --json var/bench/crawl.json
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
try:
    import museum_typology  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "lib"))

from ingest import MemorySampler  # noqa: E402  (benchmarks/ingest.py)
from museum_typology import crawl, images  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.crawl_rehearsal import ImageServer, make_pool, write_url_csv  # noqa: E402
from museum_typology.log import setup_logging  # noqa: E402
from museum_typology.schema import make_image_schema  # noqa: E402

MB = 1024 * 1024


# ---------------------------------------------------------------- helpers


def _serve(pool: list[bytes], delay_s: float, queue) -> None:
    server = ImageServer(pool, delay_s)
    queue.put(server.port)
    server.serve_forever()


def _decode_one(args: tuple[bytes, int]) -> bool:
    return images.decode_image(args[0], args[1]).ok


def _decode_encode_one(args: tuple[bytes, int]) -> bool:
    from museum_typology import petastorm_io

    result = images.decode_image(args[0], args[1])
    schema = make_image_schema()
    petastorm_io.encode_row(schema, {"guid": "g", "split": "crawl", "typology": None, "description": None, "image": result.pixels,
                                     "orig_width": result.orig_width, "orig_height": result.orig_height, "sha256": result.sha256})
    return result.ok


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- the variants


def bench_decode(bodies: list[bytes], max_side: int, encode: bool) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_decode_one, [(bodies[0], max_side)] * cores))  # start the workers first
        load = _load()
        started = time.perf_counter()
        ok = sum(pool.map(_decode_encode_one if encode else _decode_one, [(b, max_side) for b in bodies], chunksize=4))
        seconds = time.perf_counter() - started
    return {"images": ok, "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 1),
            "mb_per_s": round(sum(map(len, bodies)) / MB / seconds, 1), "processes": cores, "load_at_start": load}


def bench_naive(urls: list[str], max_side: int, exclude: set[int]) -> dict[str, Any]:
    import requests
    from PIL import Image

    load = _load()
    started = time.perf_counter()
    ok, nbytes = 0, 0
    with MemorySampler(tree=True, exclude=exclude) as rss:  # without the image server, as (b) and (c)
        for url in urls:
            response = requests.get(url, timeout=30)
            nbytes += len(response.content)
            image = Image.open(io.BytesIO(response.content)).convert("RGB")
            image.thumbnail((max_side, max_side))
            ok += 1
    seconds = time.perf_counter() - started
    return {"images": ok, "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 2), "mb_per_s": round(nbytes / MB / seconds, 2),
            "peak_rss_mb": round(rss.result.peak_total_mb), "load_at_start": load}


def bench_crawler(spark, settings, csv_path: str, output: str, n: int, exclude: set[int]) -> dict[str, Any]:
    load = _load()
    started = time.perf_counter()
    with MemorySampler(tree=True, exclude=exclude) as rss:
        summary = crawl.run(spark, settings, csv_path, output)
    seconds = time.perf_counter() - started
    ok = summary["status_counts"].get("ok", 0)
    return {"images": ok, "rows": n, "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 1),
            "images_per_s_fetch_phase": summary["urls_per_second"],
            "mb_per_s": round(summary["bytes_this_run"] / MB / seconds, 1), "peak_rss_mb": round(rss.result.peak_total_mb),
            "partitions": summary["partitions"], "status_counts": summary["status_counts"], "load_at_start": load}


def install_img2dataset(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset", "pyspark==3.5.3"], check=True)


def bench_img2dataset(venv: Path, csv_path: str, output: str, n: int, max_side: int, threads: int, exclude: set[int], timeout_s: float = 900) -> dict[str, Any]:
    binary = venv / "bin" / "img2dataset"
    if not binary.exists():
        return {"skipped": f"{binary} not found (run with --install-img2dataset)"}
    cores = os.cpu_count() or 1
    shards = 2 * cores  # so that every core has work, as the crawler's partitions do
    command = [
        str(binary), "--url_list", csv_path, "--input_format", "csv", "--url_col", "url", "--output_folder", output,
        "--output_format", "parquet", "--distributor", "pyspark", "--processes_count", str(cores), "--thread_count", str(threads),
        "--number_sample_per_shard", str(max(1, -(-n // shards))), "--image_size", str(max_side), "--resize_mode", "keep_ratio_largest",
        "--resize_only_if_bigger", "True", "--encode_quality", "92", "--timeout", "30", "--retries", "0", "--enable_wandb", "False",
    ]
    Path(output).mkdir(parents=True, exist_ok=True)  # img2dataset 1.47 writes its _tmp shards into an existing folder
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYSPARK_PYTHON": str(venv / "bin" / "python"), "PYSPARK_DRIVER_PYTHON": str(venv / "bin" / "python")}
    load = _load()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    with MemorySampler(tree=True, root=process.pid, exclude=exclude) as rss:
        try:
            log_text = process.communicate(timeout=timeout_s)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            return {"failed": f"no result after {timeout_s} s", "log_tail": process.communicate()[0].decode(errors="replace")[-2000:]}
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        return {"failed": f"exit code {process.returncode}", "log_tail": log_text[-2000:]}
    successes, starts, ends = 0, [], []
    for stats_file in Path(output).glob("*_stats.json"):
        stats = json.loads(stats_file.read_text())
        successes += stats.get("successes", 0)
        starts.append(stats["start_time"])
        ends.append(stats["end_time"])
    shard_span = (max(ends) - min(starts)) if starts else float("nan")
    return {"images": successes, "seconds": round(seconds, 2), "images_per_s": round(successes / seconds, 1),
            "images_per_s_download_phase": round(successes / shard_span, 1) if starts else None,
            "peak_rss_mb": round(rss.result.peak_total_mb), "threads_per_process": threads, "shards": shards,
            "note": "wall time includes its own Spark session start", "load_at_start": load}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="corpus sizes (URLs): the first for (a)-(d), every one for the crawler's memory")
    parser.add_argument("--delay-ms", type=float, default=400.0)
    parser.add_argument("--pool", type=int, default=48, help="distinct images the server holds")
    parser.add_argument("--naive-n", type=int, default=20, help="URLs the naive loop fetches")
    parser.add_argument("--img2dataset-venv", default="/tmp/i2d-venv")
    parser.add_argument("--install-img2dataset", action="store_true")
    parser.add_argument("--skip-img2dataset", action="store_true")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    setup_logging("WARNING")
    os.environ.setdefault("MUSEUM_NO_PROGRESS", "1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    settings = load_settings(overrides=["crawl.progress_interval_s=0", *args.overrides])
    max_side = int(settings.get("images.max_side"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_at_start": _load()},
                               "delay_ms": args.delay_ms, "sizes": sizes}
    work = Path(tempfile.mkdtemp(prefix="crawl-bench-"))
    try:
        started = time.perf_counter()
        pool = make_pool(args.pool, seed=0, workers=os.cpu_count() or 1)
        kb = sorted(len(b) // 1024 for b in pool)
        results["corpus"] = {"distinct_images": len(pool), "kb_min_median_max": [kb[0], kb[len(kb) // 2], kb[-1]],
                             "generate_seconds": round(time.perf_counter() - started, 1)}
        print(f"corpus: {len(pool)} distinct JPEGs, {kb[0]}-{kb[-1]} KB (median {kb[len(kb) // 2]})", flush=True)

        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        server = context.Process(target=_serve, args=(pool, args.delay_ms / 1000, queue), daemon=True)
        server.start()
        base_url = f"http://127.0.0.1:{queue.get(timeout=30)}"
        exclude = {server.pid}

        csvs = {}
        for n in sizes:
            csvs[n] = str(work / f"urls-{n}.csv")
            write_url_csv(csvs[n], n, base_url, seed=n, shared_rate=0.0, missing_rate=0.0)
        n0 = sizes[0]
        bodies = [pool[k % len(pool)] for k in range(n0)]
        urls = [f"{base_url}/img/{k}.jpg" for k in range(args.naive_n)]

        print("(d) decode-only bound ...", flush=True)
        results["d_decode_only"] = bench_decode(bodies, max_side, encode=False)
        results["d_decode_and_encode"] = bench_decode(bodies, max_side, encode=True)
        print("(a) naive loop ...", flush=True)
        results["a_naive"] = bench_naive(urls, max_side, exclude)

        print("(b) crawler ...", flush=True)
        from museum_typology.session import build_spark

        t0 = time.perf_counter()
        spark = build_spark(settings, "bench-crawl", master=args.master)
        spark.sparkContext.parallelize(range(4), 4).count()  # start the Python workers
        results["spark_start_seconds"] = round(time.perf_counter() - t0, 1)
        results["b_crawler"] = bench_crawler(spark, settings, csvs[n0], str(work / f"crawl-{n0}"), n0, exclude)
        # The bound again right after the crawler: this machine's speed drifts by 20% within minutes,
        # so the ratio is taken against the mean of the two measurements around it.
        print("(d) decode-only bound, again ...", flush=True)
        results["d_decode_only_after"] = bench_decode(bodies, max_side, encode=False)

        if not args.skip_img2dataset:
            venv = Path(args.img2dataset_venv)
            if args.install_img2dataset and not (venv / "bin" / "img2dataset").exists():
                print("installing img2dataset into", venv, flush=True)
                install_img2dataset(venv)
            print("(c) img2dataset ...", flush=True)
            threads = int(settings.get("crawl.threads_per_task"))
            results["c_img2dataset"] = bench_img2dataset(venv, csvs[n0], str(work / "i2d"), n0, max_side, threads, exclude)

        results["memory"] = [{"rows": n0, "peak_rss_mb": results["b_crawler"]["peak_rss_mb"], "images_per_s": results["b_crawler"]["images_per_s"]}]
        for n in sizes[1:]:
            print(f"crawler memory at {n} URLs ...", flush=True)
            run = bench_crawler(spark, settings, csvs[n], str(work / f"crawl-{n}"), n, exclude)
            results["memory"].append({"rows": n, "peak_rss_mb": run["peak_rss_mb"], "images_per_s": run["images_per_s"], "seconds": run["seconds"],
                                      "load_at_start": run["load_at_start"]})
        spark.stop()
        server.terminate()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    a, b, d = results["a_naive"], results["b_crawler"], results["d_decode_only"]
    bound = (d["images_per_s"] + results["d_decode_only_after"]["images_per_s"]) / 2
    c = results.get("c_img2dataset", {})
    results["ratios"] = {
        "crawler_vs_naive": round(b["images_per_s"] / a["images_per_s"], 1),
        "crawler_vs_decode_only": round(b["images_per_s"] / bound, 2),
        "crawler_fetch_phase_vs_decode_only": round(b["images_per_s_fetch_phase"] / bound, 2),
        "crawler_vs_decode_and_encode": round(b["images_per_s"] / results["d_decode_and_encode"]["images_per_s"], 2),
        **({"crawler_vs_img2dataset": round(b["images_per_s"] / c["images_per_s"], 2)} if c.get("images_per_s") else {}),
    }
    print()
    print(f"delay {args.delay_ms:g} ms per request, {os.cpu_count()} cores, {n0} URLs (naive: {args.naive_n})")
    print(f"{'variant':28s} {'images/s':>9s} {'MB/s':>7s} {'peak RSS MB':>12s} {'load':>6s}")
    for name, row in [("(a) naive loop", a), ("(b) crawler (local Spark)", b), ("(c) img2dataset (pyspark)", c),
                      ("(d) decode only (before b)", d), ("(d) decode only (after b)", results["d_decode_only_after"]),
                      ("(d') decode + encode", results["d_decode_and_encode"])]:
        if not row or "images_per_s" not in row:
            print(f"{name:28s} {row.get('skipped') or row.get('failed') or 'not run'}")
            continue
        print(f"{name:28s} {row['images_per_s']:9.1f} {row.get('mb_per_s', float('nan')):7.1f} {row.get('peak_rss_mb', float('nan')):12} {row['load_at_start']:6}")
    print(f"Spark session start (not in (b)): {results['spark_start_seconds']} s")
    print(f"without fixed costs: crawler fetch phase {b['images_per_s_fetch_phase']}/s (without the final assembly); "
          f"img2dataset download phase {c.get('images_per_s_download_phase')}/s (first shard start to last shard end, without its Spark start)")
    print("ratios:", json.dumps(results["ratios"]))
    for m in results["memory"]:  # larger runs spread the fixed costs (job start, worker imports, assembly)
        m["vs_decode_only"] = round(m["images_per_s"] / bound, 2)
        m["vs_naive"] = round(m["images_per_s"] / a["images_per_s"], 1)
    print("crawler by corpus size:", ", ".join(
        f"{m['rows']} URLs: {m['images_per_s']}/s ({m['vs_naive']}x naive, {m['vs_decode_only']} of decode-only), peak {m['peak_rss_mb']} MB"
        for m in results["memory"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
