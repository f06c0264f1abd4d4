"""The crawl job end to end on local Spark, against a real HTTP server on 127.0.0.1
(tests/http_zoo.py): the fault zoo, duplicate URLs, resume after kill -9, atomic commit."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from http_zoo import ZooServer, bomb_png, gen_image, image_bytes
from PIL import Image

from museum_typology import crawl, images, ingest, petastorm_io, storage, train_image
from museum_typology.catalogue import CsvError, InputRow
from museum_typology.config import load_settings
from museum_typology.schema import CLASSES, CRAWL_MANIFEST_SCHEMA, MANIFEST_SCHEMA
from conftest import left_by_a_crash

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("museum-typology")

FAST = [
    "crawl.connect_timeout_s=2.0",
    "crawl.read_timeout_s=2.0",
    "crawl.total_timeout_s=1.5",
    "crawl.retries=1",
    "crawl.backoff_base_s=0.05",
    "crawl.backoff_max_s=0.2",
    "crawl.max_redirects=3",
    "crawl.max_bytes=2000000",
    "crawl.threads_per_task=8",
    "crawl.host_connections=8",
    "crawl.progress_interval_s=0",
]


def _settings(tmp_path, *extra: str):
    return load_settings(overrides=[f"paths.work_dir={tmp_path / 'work'}", *FAST, *extra], environ={})


def _write_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> str:
    import csv

    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "description", "typology", "url"])
        writer.writerows(rows)
    return str(path)


def _manifest(output: Path) -> dict[str, dict]:
    return {r["guid"]: r for r in pq.read_table(output / "manifest.parquet").to_pylist()}


def _dataset(output: Path) -> dict[str, object]:
    with petastorm_io.make_reader(str(output / "dataset"), num_epochs=1, workers_count=1, shuffle_row_groups=False) as reader:
        return {row.guid: row for row in reader}


# ---------------------------------------------------------------- pure parts


def _row(n: int, url: str | None, guid: str | None = None, reason: str | None = None) -> InputRow:
    return InputRow(guid or f"g{n}", "crawl", "urls.csv", n, n + 1, "описание", CLASSES[0], url, reason)


def test_plan_groups_duplicate_urls_and_finishes_bad_rows():
    rows = [
        _row(1, "http://a.example/1.jpg"),
        _row(2, "http://a.example/1.jpg"),
        _row(3, "file:///etc/passwd"),
        _row(4, None),
        _row(5, "http://b.example/2.jpg", reason="duplicate guid"),
        _row(6, "http://b.example/3.jpg"),
    ]
    tasks, finished = crawl.plan(rows)
    assert [t["url"] for t in tasks] == ["http://a.example/1.jpg", "http://b.example/3.jpg"]
    assert [r["guid"] for r in tasks[0]["rows"]] == ["g1", "g2"]
    assert {r["source_row"]: r["status"] for r in finished} == {3: "bad_url", 4: "bad_url", 5: "rejected"}
    assert all(r["attempts"] == 0 for r in finished)
    # One resource however it is spelled: fetched once, each row keeping its own URL.
    spellings = ["http://c.example/4.jpg", "HTTP://C.example/4.jpg", "http://c.example:80/4.jpg", "http://c.example/4.jpg#top"]
    same, _ = crawl.plan([_row(10 + i, url) for i, url in enumerate(spellings)])
    assert [t["url"] for t in same] == ["http://c.example/4.jpg"] and [r["url"] for r in same[0]["rows"]] == spellings
    assert [t["url"] for t in crawl.plan([_row(20, "http://c.example/4.JPG"), _row(21, "http://c.example/4.jpg?a=1")])[0]] == ["http://c.example/4.JPG", "http://c.example/4.jpg?a=1"]
    groups = crawl.group_tasks(tasks * 3, 4)
    assert crawl.group_tasks(tasks * 3, 4) == groups  # stable
    assert sum(map(len, groups.values())) == 6


def test_decode_failure_statuses():
    assert crawl.decode_failure_status("empty file (0 bytes)") == "not_image"
    assert crawl.decode_failure_status("not an image: content matches no known image format") == "not_image"
    assert crawl.decode_failure_status("unsupported image format ICO") == "not_image"
    assert crawl.decode_failure_status("file too large: 9 bytes > images.max_bytes=1") == "too_large"
    assert crawl.decode_failure_status("corrupt image: OSError: image file is truncated") == "quarantined"
    assert crawl.decode_failure_status("corrupt image: JPEG data ends early: the bottom 123 of 300 rows are flat grey (truncated file)") == "quarantined"
    assert crawl.decode_failure_status("decompression bomb guard: 1x1") == "quarantined"


def test_auto_partitions():
    assert crawl.auto_partitions(180_000, 2000, 2) == 90
    assert crawl.auto_partitions(100, 2000, 2) == 2  # one wave: a partition per core
    assert crawl.auto_partitions(5000, 2000, 2) == 3
    assert crawl.auto_partitions(1, 2000, 8) == 1
    assert crawl.auto_partitions(0, 2000, 2) == 1


def test_the_decoders_of_a_resumed_crawl_are_recorded_and_a_mix_is_named(tmp_path):
    """train-image's run key takes the summary's pixel_decoder: a crawl resumed after an upgrade
    of the decoding code holds pixels of both versions and must not pass for either."""
    work = tmp_path / "_work"
    work.mkdir()
    (work / crawl.PLAN_FILE).write_text(json.dumps({"fingerprint": "f", "partitions": 2}))
    assert crawl.record_pixel_decoder(str(work), "v1", True, False, None) == ["v1"]
    assert crawl.record_pixel_decoder(str(work), "v1", True, True, None) == ["v1"]  # resumed with the same code
    assert crawl.record_pixel_decoder(str(work), "v2", False, True, None) == ["v1"]  # nothing left to decode
    assert crawl.record_pixel_decoder(str(work), "v2", True, True, None) == ["v1", "v2"]
    assert json.loads((work / crawl.PLAN_FILE).read_text()) == {"fingerprint": "f", "partitions": 2, "pixel_decoders": ["v1", "v2"]}
    # A plan of older code: its stored chunks' decoder is unknown; with none stored, nothing is.
    (work / crawl.PLAN_FILE).write_text(json.dumps({"fingerprint": "f", "partitions": 2}))
    assert crawl.record_pixel_decoder(str(work), "v2", False, False, None) == []
    assert crawl.record_pixel_decoder(str(work), "v2", True, True, None) == ["unrecorded", "v2"]
    (work / crawl.PLAN_FILE).write_text(json.dumps({"fingerprint": "f", "partitions": 2}))
    assert crawl.record_pixel_decoder(str(work), "v2", True, False, None) == ["v2"]

    assert crawl.summary_pixel_decoder(["v1"], "v2") == "v1" and crawl.summary_pixel_decoder([], "v2") == "v2"
    mixed = crawl.summary_pixel_decoder(["v1", "v2"], "v2")
    assert mixed.startswith("mixed-") and mixed != crawl.summary_pixel_decoder(["unrecorded", "v2"], "v2")


def test_an_executor_with_other_decoding_code_refuses_to_crawl(tmp_path):
    settings = _settings(tmp_path)
    task = crawl.TaskSettings(
        work_url=str(tmp_path / "_work"),
        fetch=crawl.FetchSettings.from_settings(settings.section("crawl"), 1000),
        decode=ingest.DecodeSettings.from_settings(settings),
        commit_rows=5,
        row_group_bytes=1 << 20,
        decode_threads=1,
        robots_txt=False,
        s3=None,
        pixel_decoder="another version",
    )
    with pytest.raises(ingest.IngestError, match="differs from the driver's"):
        crawl.crawl_partition(0, [], task)
    assert not (tmp_path / "_work").exists()


def test_crawl_manifest_schema_extends_the_ingest_one():
    assert CRAWL_MANIFEST_SCHEMA.names[: len(MANIFEST_SCHEMA.names)] == MANIFEST_SCHEMA.names
    assert CRAWL_MANIFEST_SCHEMA.names[len(MANIFEST_SCHEMA.names):] == ["url", "http_status", "attempts", "bytes"]


# ---------------------------------------------------------------- the fault zoo, end to end


@pytest.fixture(scope="module")
def zoo():
    with ZooServer() as server:
        yield server


def _big_jpeg() -> bytes:
    array = np.zeros((300, 400, 3), np.uint8)
    array[..., 0] = np.linspace(0, 255, 400, dtype=np.uint8)[None, :]
    array[..., 2] = np.linspace(0, 255, 300, dtype=np.uint8)[:, None]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_crawl_fault_zoo(spark, zoo, tmp_path, monkeypatch):
    sources = {
        "jpeg": image_bytes("JPEG", colour=(200, 30, 30)),
        "png": image_bytes("PNG", colour=(20, 160, 60)),
        "webp": image_bytes("WEBP", colour=(10, 20, 220)),
        "gif": image_bytes("GIF", colour=(250, 250, 0)),
        "dup": image_bytes("PNG", size=(20, 30), colour=(5, 6, 7)),
    }
    urls = {name: zoo.add(f"{name}.img", body, "image/jpeg") for name, body in sources.items()}
    zoo.add("ok.jpg", image_bytes("JPEG"), "image/jpeg")
    zoo.add("html.jpg", b"<html><body>Not found</body></html>", "image/jpeg")
    zoo.add("truncated.jpg", _big_jpeg()[:4000], "image/jpeg")
    zoo.add("empty.jpg", b"", "image/jpeg")
    zoo.add("bomb.png", bomb_png(), "image/png")
    cases = {
        # guid: (url, status, reason fragment, http_status, attempts)
        "jpeg": (urls["jpeg"], "ok", None, 200, 1),
        "png": (urls["png"], "ok", None, 200, 1),
        "webp": (urls["webp"], "ok", None, 200, 1),
        "gif": (urls["gif"], "ok", None, 200, 1),
        "dup1": (urls["dup"], "ok", None, 200, 1),
        "dup2": (urls["dup"], "ok", None, 200, 1),
        "not-found": (zoo.url("/status/404"), "http_error", "HTTP 404 Not Found", 404, 1),
        "flaky": (zoo.url("/flaky/crawl"), "ok", None, 200, 2),
        "limited": (zoo.url("/limited/crawl"), "ok", None, 200, 2),
        "drip": (zoo.url("/drip"), "timeout", "total timeout 1.5s exceeded", 200, 2),
        "reset": (zoo.url("/reset"), "connection_error", "connection error", None, 2),
        "redirects": (zoo.url("/redirect/3"), "ok", None, 200, 1),
        "too-many-redirects": (zoo.url("/redirect/5"), "too_many_redirects", "max_redirects=3", 302, 1),
        "loop": (zoo.url("/loop/a"), "too_many_redirects", "redirect loop", 301, 1),
        "html": (zoo.url("/img/html.jpg"), "not_image", "not an image", 200, 1),
        "truncated": (zoo.url("/img/truncated.jpg"), "quarantined", "corrupt image", 200, 1),
        "empty": (zoo.url("/img/empty.jpg"), "not_image", "empty file", 200, 1),
        "huge": (zoo.url("/huge"), "too_large", "Content-Length 10000000000 bytes > crawl.max_bytes=2000000", 200, 1),
        "bomb": (zoo.url("/img/bomb.png"), "quarantined", "decompression bomb guard", 200, 1),
        "short": (zoo.url("/short"), "connection_error", "IncompleteRead", 200, 2),
        # Header values str.isdigit takes ("²"): ignored, not a failed task that loses its rows.
        "odd-retry-after": (zoo.url("/odd-retry-after"), "http_error", "HTTP 429", 429, 2),
        "odd-length": (zoo.url("/odd-length"), "ok", None, 200, 1),
        "file-url": ("file:///etc/passwd", "bad_url", "'file' is not allowed", None, 0),
        "unparsable": ("http://[::1/x.jpg", "bad_url", "unparsable url", None, 0),
        "no-url": ("", "bad_url", "empty url", None, 0),
    }
    rows = [(guid, f"описание {guid}", CLASSES[i % len(CLASSES)], url) for i, (guid, (url, *_)) in enumerate(cases.items())]
    rows.append(("unlabelled", "x", "не класс", urls["png"]))  # unknown typology -> rejected
    rows.append(("jpeg", "again", CLASSES[0], urls["jpeg"]))  # duplicate guid -> rejected
    csv_path = _write_csv(tmp_path / "urls.csv", rows)
    zoo.reset_counts()
    output = tmp_path / "out"
    settings = _settings(tmp_path, "crawl.partitions=3", "crawl.commit_rows=4", 'images.codec="png"')
    checked: list[str] = []  # the driver's existence checks (on S3, a request each)
    exists = storage.exists
    monkeypatch.setattr(storage, "exists", lambda url, s3=None: checked.append(str(url)) or exists(url, s3))
    summary = crawl.run(spark, settings, csv_path, str(output))
    # The assembly finds the chunks' part files in one listing, not by asking for each in turn.
    assert summary["chunks"] >= 5 and not [url for url in checked if url.rsplit("/", 1)[-1].startswith("part-")]

    table = pq.read_table(output / "manifest.parquet")
    assert table.schema.names == CRAWL_MANIFEST_SCHEMA.names
    all_rows = table.to_pylist()
    assert len(all_rows) == len(rows) == summary["input_rows"] == summary["manifest_rows"]
    assert sorted(r["source_row"] for r in all_rows) == list(range(1, len(rows) + 1))  # each exactly once
    manifest = {r["guid"]: r for r in all_rows if r["status"] != "rejected"}
    rejected = [r for r in all_rows if r["status"] == "rejected"]
    assert sorted(r["source_row"] for r in rejected) == [len(rows) - 1, len(rows)]
    assert "unknown typology" in rejected[0]["reason"] and "duplicate guid jpeg" in rejected[1]["reason"]
    for guid, (url, status, fragment, http_status, attempts) in cases.items():
        row = manifest[guid]
        assert (row["status"], row["http_status"], row["attempts"]) == (status, http_status, attempts), (guid, row)
        assert row["url"] == (url or None)
        if fragment is None:
            assert row["reason"] is None, (guid, row)
        else:
            assert fragment in row["reason"], (guid, row["reason"])
    assert manifest["redirects"]["image_member"] == zoo.url("/img/ok.jpg")
    assert manifest["truncated"]["sha256"] and manifest["truncated"]["image_bytes"] == 4000
    assert manifest["huge"]["bytes"] == 0
    assert manifest["jpeg"]["bytes"] == len(sources["jpeg"]) == manifest["jpeg"]["image_bytes"]

    # Duplicate URL: fetched once, stored for both guids; bad URLs never requested.
    assert zoo.requests["/img/dup.img"] == 1
    assert summary["distinct_urls"] == len(cases) - 1 - 3  # dup counted once; bad urls not tasks
    assert summary["rows_sharing_a_url"] == 1
    assert summary["status_counts"]["ok"] == 10 and summary["reconciled"] is True

    # Stored pixels of the good images equal the sources (PNG codec here: lossless storage).
    dataset = _dataset(output)
    assert sorted(dataset) == sorted(g for g, r in manifest.items() if r["status"] == "ok")
    for guid, name in [("jpeg", "jpeg"), ("png", "png"), ("webp", "webp"), ("gif", "gif"), ("dup1", "dup"), ("dup2", "dup")]:
        source = np.asarray(Image.open(io.BytesIO(sources[name])).convert("RGB"))
        stored = dataset[guid]
        assert stored.image.shape == source.shape and np.array_equal(stored.image, source), guid
        assert stored.sha256 == manifest[guid]["sha256"] and stored.split == "crawl"
        assert stored.typology == manifest[guid]["typology"] and stored.description == f"описание {guid}"
    assert np.array_equal(dataset["redirects"].image, images.decode_image(image_bytes("JPEG"), 512).pixels)
    assert storage.is_committed(str(output)) and not (output / "_work").exists()
    saved = json.loads((output / "summary.json").read_text())
    assert saved["reconciled"] and saved["fingerprint"] == summary["fingerprint"]


def test_missing_url_column_is_a_clear_error(spark, tmp_path):
    (tmp_path / "urls.csv").write_text("guid,description,typology\nx,y,графика\n", encoding="utf-8")
    with pytest.raises(CsvError, match=r"urls\.csv: missing column\(s\) url"):
        crawl.run(spark, _settings(tmp_path), str(tmp_path / "urls.csv"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- resume


def _gen_rows(zoo: ZooServer, n: int) -> list[tuple[str, str, str, str]]:
    return [(f"g{i:04d}", f"item {i}", CLASSES[i % len(CLASSES)], zoo.url(f"/gen/{i}.png")) for i in range(n)]


def _committed_rows(output: Path) -> dict[int, str]:
    rows = {}
    for path in sorted((output / "_work" / "manifest").glob("part-*.parquet")):
        for row in pq.read_table(path, columns=["source_row", "url"]).to_pylist():
            rows[row["source_row"]] = row["url"]
    return rows


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_resume_after_kill_9_fetches_only_what_is_not_stored(spark, zoo, tmp_path):
    n = 120
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, n))
    output = tmp_path / "out"
    zoo.reset_counts()
    zoo.delay_s = 0.1
    args = [
        str(SCRIPT), "crawl", "--input", csv_path, "--output", str(output), "--master", "local[2]",
        "--set", 'spark.conf."spark.driver.memory"="1g"', "--set", "crawl.partitions=2", "--set", "crawl.commit_rows=5",
        "--set", "crawl.host_connections=2", "--set", "crawl.threads_per_task=2",
    ]
    for item in FAST:
        args += ["--set", item]
    env = {**os.environ, "MUSEUM_NO_PROGRESS": "1"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if len(list((output / "_work" / "manifest").glob("part-*.parquet"))) >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        # kill -9 the driver's process group (the Python driver and its JVM). PySpark's worker
        # daemon has its own process group and stops by itself when the JVM dies: wait for it,
        # so that the snapshot below is final.
        descendants = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, alive
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()
    zoo.delay_s = 0.0
    time.sleep(0.3)  # let requests in flight at the kill finish on the server side

    assert not storage.is_committed(str(output))  # nothing half-done is presented as output
    stored_before = _committed_rows(output)
    assert 15 <= len(stored_before) < n, len(stored_before)
    zoo.reset_counts()

    summary = crawl.run(spark, _settings(tmp_path, "crawl.partitions=7"), csv_path, str(output), resume=True)
    assert summary["resumed"] is True and summary["partitions"] == 2  # the plan of the killed run
    assert summary["rows_stored_before_this_run"] == len(stored_before)
    fetched_again = [u for u in stored_before.values() if zoo.requests[_path(u)]]
    assert fetched_again == []  # nothing that was stored is fetched again
    assert sum(zoo.requests.values()) == n - len(stored_before) == summary["urls_fetched_this_run"]

    manifest = _manifest(output)
    assert len(manifest) == n and all(r["status"] == "ok" for r in manifest.values())
    assert sorted(r["source_row"] for r in manifest.values()) == list(range(1, n + 1))
    dataset = _dataset(output)
    assert sorted(dataset) == sorted(manifest)  # every guid exactly once
    for i in (0, 57, n - 1):
        source = np.asarray(Image.open(io.BytesIO(gen_image(i))).convert("RGB")).astype(int)
        stored = dataset[f"g{i:04d}"].image.astype(int)
        assert stored.shape == source.shape and np.abs(stored - source).max() <= 12  # JPEG storage
    assert storage.is_committed(str(output)) and not (output / "_work").exists()

    # Resuming a finished crawl does nothing; a plain re-run starts over and replaces it whole.
    zoo.reset_counts()
    again = crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True)
    assert again["already_complete"] is True and sum(zoo.requests.values()) == 0
    assert again["urls_fetched_this_run"] == 0 and again["urls_per_second"] == 0.0  # not the finishing run's figures
    assert again["requests_this_run"] == again["bytes_this_run"] == 0 and again["resumed"] is False


def test_crash_before_the_commit_keeps_the_old_output_and_resume_finishes(spark, zoo, tmp_path, monkeypatch):
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 12))
    output = tmp_path / "out"
    crawl.run(spark, _settings(tmp_path, "crawl.partitions=2"), csv_path, str(output))
    first = pq.read_table(output / "manifest.parquet").to_pylist()

    # A second crawl of a changed list dies in the final assembly: the old output stays whole.
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 20))
    real = petastorm_io.write_metadata

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(petastorm_io, "write_metadata", boom)
    zoo.reset_counts()
    with pytest.raises(RuntimeError, match="killed"):
        crawl.run(spark, _settings(tmp_path, "crawl.partitions=2"), csv_path, str(output))
    assert sum(zoo.requests.values()) == 20
    assert storage.is_committed(str(output)) and pq.read_table(output / "manifest.parquet").to_pylist() == first
    assert len(_committed_rows(output)) == 20

    # Run again without --resume: the stored chunks are not thrown away unasked.
    zoo.reset_counts()
    with pytest.raises(crawl.CrawlUsageError, match=r"_work: an unfinished crawl has \d+ chunk\(s\) stored; pass --resume to finish it .* or --restart"):
        crawl.run(spark, _settings(tmp_path, "crawl.partitions=2"), csv_path, str(output))
    assert sum(zoo.requests.values()) == 0 and len(_committed_rows(output)) == 20
    with pytest.raises(crawl.CrawlUsageError, match="choose one"):
        crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True, restart=True)

    # A chunk committed twice (executors of a killed run still working beside a resumed one)
    # is kept once.
    work = output / "_work"
    chunk = sorted((work / "dataset").glob("part-*.parquet"))[0].name
    for kind in ("dataset", "manifest"):
        (work / kind / chunk.replace("part-", "part-99999-", 1)).write_bytes((work / kind / chunk).read_bytes())

    # Resume: nothing to fetch, just the assembly.
    monkeypatch.setattr(petastorm_io, "write_metadata", real)
    zoo.reset_counts()
    summary = crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True)
    assert sum(zoo.requests.values()) == 0 and summary["manifest_rows"] == summary["dataset_rows"] == 20
    # The chunks' decoder is recorded, and train-image's run key reads it beside the dataset.
    assert summary["pixel_decoder"] == ingest.pixel_version() and summary["pixel_decoders"] == [ingest.pixel_version()]
    assert train_image.stored_image_settings(str(output / "dataset"), _settings(tmp_path), None)["pixel_decoder"] == ingest.pixel_version()
    assert sorted(_dataset(output)) == sorted(_manifest(output)) and len(_manifest(output)) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary debris

    # --resume onto work from another input is refused, clearly.
    (output / "_work").mkdir()
    (output / "_work" / "plan.json").write_text(json.dumps({"fingerprint": "other", "partitions": 2}))
    with pytest.raises(crawl.CrawlUsageError, match="different input CSV or images settings; pass --restart instead"):
        crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True)
    # with stored chunks of another input and no flag, the way out named is --restart, not --resume
    (output / "_work" / "manifest").mkdir()
    (output / "_work" / "manifest" / "part-00000-0.parquet").write_bytes((output / "manifest.parquet").read_bytes())
    with pytest.raises(crawl.CrawlUsageError, match="another input CSV or images settings has 1 chunk\\(s\\) stored; pass --restart"):
        crawl.run(spark, _settings(tmp_path), csv_path, str(output))
    # --restart discards an unfinished crawl and starts over
    zoo.reset_counts()
    restarted = crawl.run(spark, _settings(tmp_path), csv_path, str(output), restart=True)
    assert restarted["resumed"] is False and sum(zoo.requests.values()) == 20 and restarted["manifest_rows"] == 20


def _killed_before_the_assembly(spark, tmp_path, csv_path, output, monkeypatch) -> None:
    """A crawl into ``output`` (2 partitions) killed after every chunk is stored, before its output is assembled."""
    real = petastorm_io.write_metadata
    monkeypatch.setattr(petastorm_io, "write_metadata", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        crawl.run(spark, _settings(tmp_path, "crawl.partitions=2"), csv_path, str(output))
    monkeypatch.setattr(petastorm_io, "write_metadata", real)


def test_a_kill_between_the_commits_two_renames_loses_no_stored_chunk(spark, zoo, tmp_path, monkeypatch):
    """A local commit sets the output (its _work/ with every stored chunk inside) aside, then
    renames the new one into place; killed in between, --resume found no unfinished crawl, fetched
    everything again and then deleted both the set-aside output and the finished one."""
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 12))
    output = tmp_path / "out"
    _killed_before_the_assembly(spark, tmp_path, csv_path, output, monkeypatch)
    assert len(_committed_rows(output)) == 12
    output.rename(tmp_path / ".out.old-1234abcd")  # the first rename of the commit...
    (tmp_path / ".out.tmp-abcdef12" / "dataset").mkdir(parents=True)  # ...and the new output, not yet renamed
    left_by_a_crash(tmp_path / ".out.tmp-abcdef12")
    zoo.reset_counts()
    summary = crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True)
    assert summary["resumed"] is True and sum(zoo.requests.values()) == 0 and summary["manifest_rows"] == 12
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_chunk_committed_without_its_part_file_is_fetched_again_not_taken_for_stored(spark, zoo, tmp_path, monkeypatch):
    """An executor of a killed run still working beside the resumed one can commit a fragment whose
    part file the resumed driver's clean-up deleted: its ok rows were in no dataset, and every
    later --resume failed to reconcile."""
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 12))
    output = tmp_path / "out"
    _killed_before_the_assembly(spark, tmp_path, csv_path, output, monkeypatch)
    work = output / "_work"
    chunk = next(p.name for p in sorted((work / "dataset").glob("part-*.parquet")))
    # 1. the orphan's rows are stored in another chunk too; named to come first, it won the duplicates
    (work / "manifest" / "part-00000-00000-00000000.parquet").write_bytes((work / "manifest" / chunk).read_bytes())
    zoo.reset_counts()
    summary = crawl.run(spark, _settings(tmp_path), csv_path, str(output), resume=True)
    assert sum(zoo.requests.values()) == 0 and summary["manifest_rows"] == summary["dataset_rows"] == 12
    # 2. its rows are stored nowhere else: the resumed run fetches them (and only them) again
    _killed_before_the_assembly(spark, tmp_path, csv_path, tmp_path / "third", monkeypatch)
    work = tmp_path / "third" / "_work"
    chunk = next(p.name for p in sorted((work / "dataset").glob("part-*.parquet")))
    lost = pq.read_table(work / "manifest" / chunk).num_rows
    (work / "dataset" / chunk).unlink()
    zoo.reset_counts()
    summary = crawl.run(spark, _settings(tmp_path), csv_path, str(tmp_path / "third"), resume=True)
    assert summary["manifest_rows"] == summary["dataset_rows"] == 12 and 0 < sum(zoo.requests.values()) <= lost


def test_an_orphan_committed_while_the_resumed_run_fetched_is_dropped_and_never_loses_rows(tmp_path):
    """At the assembly an orphan's rows must be in another chunk (this run fetched them too); if
    not, the job stops rather than write a dataset without them, and --resume fetches them."""
    work = tmp_path / "_work"
    (work / "manifest").mkdir(parents=True)
    (work / "dataset").mkdir()
    for name in ("part-00000-00000-aaaaaaaa.parquet", "part-00001-00000-bbbbbbbb.parquet"):
        (work / "manifest" / name).write_bytes(b"fragment")
    (work / "dataset" / "part-00001-00000-bbbbbbbb.parquet").write_bytes(b"part")
    loaded = {"part-00000-00000-aaaaaaaa.parquet": [{"source_row": 1, "status": "ok"}, {"source_row": 2, "status": "ok"}],
              "part-00001-00000-bbbbbbbb.parquet": [{"source_row": 1, "status": "ok"}]}
    with pytest.raises(crawl.CrawlError, match="1 rows were in chunks a killed run's executors committed without their part files"):
        crawl._without_orphans(str(work), dict(loaded), [], None)  # source_row 2 is in the orphan only
    assert not (work / "manifest" / "part-00000-00000-aaaaaaaa.parquet").exists()
    (work / "manifest" / "part-00000-00000-aaaaaaaa.parquet").write_bytes(b"fragment")
    kept = crawl._without_orphans(str(work), dict(loaded), [{"source_row": 2}], None)  # row 2 finished at planning
    assert kept == {"part-00001-00000-bbbbbbbb.parquet": [{"source_row": 1, "status": "ok"}]}
    assert sorted(p.name for p in (work / "manifest").iterdir()) == ["part-00001-00000-bbbbbbbb.parquet"]


def test_cli_help():
    result = subprocess.run([str(SCRIPT), "crawl", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--resume" in result.stdout and "--input" in result.stdout
    both = subprocess.run([str(SCRIPT), "crawl", "--input", "x.csv", "--resume", "--restart"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr  # before anything starts


def test_rehearsal_csv_and_server(tmp_path):
    from museum_typology.crawl_rehearsal import ImageServer, make_jpeg, write_url_csv
    from museum_typology.fetcher import FetchSettings, Fetcher

    big = make_jpeg(0, 0)
    with Image.open(io.BytesIO(big)) as image:
        assert 800 <= max(image.size) <= 3000 and image.format == "JPEG"
    assert 100 * 1024 <= len(big) <= 600 * 1024

    server = ImageServer([image_bytes("JPEG"), image_bytes("PNG")], delay_s=0.0).start()
    try:
        counts = write_url_csv(tmp_path / "urls.csv", 400, server.base_url, seed=3, shared_rate=0.05, missing_rate=0.05)
        rows, _ = crawl.read_url_rows(str(tmp_path / "urls.csv"), _settings(tmp_path))
        assert len(rows) == 400 and not any(r.rejected_reason for r in rows)
        tasks, finished = crawl.plan(rows)
        assert not finished and len(tasks) == 400 - counts["shared"] and counts["shared"] > 5 and counts["missing"] > 5
        with Fetcher(FetchSettings(retries=0)) as f:
            assert f.fetch(f"{server.base_url}/img/3.jpg").body == image_bytes("PNG")
            assert f.fetch(f"{server.base_url}/missing/3.jpg").http_status == 404
        assert server.requests == 2
    finally:
        server.stop()


def test_describe_plan(tmp_path):
    rows = [(f"g{i}", "", CLASSES[0], f"http://h{i % 50 % 3}.example/{i % 50}.jpg") for i in range(60)]
    rows.append(("bad", "", CLASSES[0], "file:///x"))
    plan = crawl.describe_plan(_settings(tmp_path, "crawl.commit_rows=10", "crawl.host_connections=12"), _write_csv(tmp_path / "u.csv", rows), parallelism=2)
    assert plan["input_rows"] == 61 and plan["distinct_urls"] == 50 and plan["rows_sharing_a_url"] == 10
    assert plan["finished_at_planning"] == {"bad_url": 1} and plan["hosts"] == 3
    assert plan["partitions"] == 2 and sum(plan["urls_per_partition_min_median_max"]) > 0
    assert plan["per_task"]["connections_per_host"] == 6 and plan["tasks_at_once"] == 2
    assert plan["estimate"]["assumed"]["cores"] == 2 and plan["estimate"]["seconds"] >= 0


def test_estimate_duration_names_the_binding_limit():
    # One host, 48 connections, 450 ms a request: at most ~107 requests/s from the server, while
    # 2 cores at 35/s store 70/s: the CPU binds; 180K URLs take 180000 / 70 s.
    cpu = crawl.estimate_duration({"h": 180_000}, 48, 0, 0.45, 2, 35.0)
    assert cpu["bound_by"].startswith("CPU") and cpu["seconds"] == round(180_000 / 70)
    # Sixteen cores outrun one host: its connections bind (48 / 0.45 s = 106.7/s).
    server = crawl.estimate_duration({"h": 180_000}, 48, 0, 0.45, 16, 35.0)
    assert server["bound_by"].startswith("the image server") and server["seconds"] == round(180_000 * 0.45 / 48)
    # A request-rate limit below connections / latency binds instead, and hosts run side by side.
    limited = crawl.estimate_duration({"a": 1000, "b": 3000}, 48, 10, 0.45, 16, 35.0)
    assert limited["seconds"] == 300 and limited["images_per_s"] == round(4000 / 300, 1)
    assert crawl.estimate_duration({}, 48, 0, 0.45, 2, 35.0)["seconds"] == 0


# ---------------------------------------------------------------- robots.txt


def test_robots_txt_is_obeyed_and_read_once_per_task(spark, zoo, tmp_path):
    """Rows whose path the host's robots.txt disallows are never requested and get
    ``robots_disallowed`` with the reason; the rest are crawled; robots.txt is fetched once per
    task (not per URL); with robots_txt off, everything is fetched."""
    zoo.reset_counts()
    zoo.robots_txt = b"User-agent: *\nDisallow: /gen/1\n\nUser-agent: museum-typology-crawler\nDisallow: /gen/2$\nDisallow: /gen/3\n"
    csv_path = _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 40))
    output = tmp_path / "out"
    try:
        summary = crawl.run(spark, _settings(tmp_path, "crawl.partitions=2"), csv_path, str(output))
    finally:
        zoo.robots_txt = None  # the zoo serves the whole module
    manifest = _manifest(output)
    # Our own group applies (not the * one): /gen/3* is ours to avoid, /gen/1* is not; the
    # "/gen/2$" pattern is anchored, so /gen/2.png is allowed.
    refused = sorted(g for g, r in manifest.items() if r["status"] == "robots_disallowed")
    assert refused == ["g0003"] + [f"g{i:04d}" for i in range(30, 40)]
    assert all(manifest[g]["attempts"] == 0 and "robots.txt" in manifest[g]["reason"] for g in refused)
    assert not any(path.startswith("/gen/3") for path in zoo.requests)
    assert sum(zoo.requests.values()) == 40 - len(refused) and summary["dataset_rows"] == 40 - len(refused)
    assert 1 <= zoo.robots_requests <= 2  # one per task

    zoo.reset_counts()
    crawl.run(spark, _settings(tmp_path, "crawl.partitions=2", "crawl.robots_txt=false"), csv_path, str(tmp_path / "all"))
    assert zoo.robots_requests == 0 and _manifest(tmp_path / "all")["g0030"]["status"] == "ok"


def test_a_redirect_into_a_disallowed_path_is_not_followed(spark, zoo, tmp_path):
    """A URL robots.txt allows may redirect to one it does not, on the same host or another
    (whose robots.txt is then read first): each hop is checked before it is requested."""
    zoo.reset_counts()
    zoo.robots_txt = b"User-agent: *\nDisallow: /img/ok.jpg\n"
    rows = [("r1", "item", CLASSES[0], zoo.url("/redirect/1")), ("r2", "item", CLASSES[0], zoo.url("/to-localhost")), ("g1", "item", CLASSES[1], zoo.url("/gen/1.png"))]
    csv_path = _write_csv(tmp_path / "urls.csv", rows)
    try:
        crawl.run(spark, _settings(tmp_path, "crawl.partitions=1"), csv_path, str(tmp_path / "out"))
    finally:
        zoo.robots_txt = None
    manifest = _manifest(tmp_path / "out")
    for guid in ("r1", "r2"):
        assert manifest[guid]["status"] == "robots_disallowed" and "redirected to" in manifest[guid]["reason"] and "robots.txt" in manifest[guid]["reason"]
    assert f"localhost:{zoo.port}" in manifest["r2"]["reason"]
    assert manifest["g1"]["status"] == "ok"
    assert zoo.requests["/img/ok.jpg"] == 0 and zoo.requests["/redirect/1"] == 1 and zoo.requests["/to-localhost"] == 1
    assert zoo.robots_requests == 2  # 127.0.0.1's, then localhost's for the hop


def test_an_unreachable_robots_txt_disallows_the_host(spark, zoo, tmp_path):
    """RFC 9309: a robots.txt answering 5xx (after the retries) means "disallow all"."""
    original = zoo._route

    def route(h):
        if h.path == "/robots.txt":
            zoo._send(h, 503, b"down")
        else:
            original(h)

    zoo.reset_counts()
    zoo._route = route
    output = tmp_path / "out"
    try:
        crawl.run(spark, _settings(tmp_path, "crawl.partitions=1"), _write_csv(tmp_path / "urls.csv", _gen_rows(zoo, 5)), str(output))
    finally:
        del zoo._route  # back to the class's routes: the zoo serves the whole module
    manifest = _manifest(output)
    assert {r["status"] for r in manifest.values()} == {"robots_disallowed"}
    assert "unreachable" in manifest["g0000"]["reason"] and sum(zoo.requests.values()) == 0


@pytest.mark.parametrize("setting, message", [
    ("connect_timeout_s=-1", "crawl.connect_timeout_s = -1.0: must be a number > 0"),  # a Spark trace from urllib3
    ("total_timeout_s=0", "crawl.total_timeout_s = 0.0: must be a number > 0"),  # every row robots_disallowed
    ("host_connections=0", "crawl.host_connections = 0: must be a whole number >= 1"),  # taken as 1
    ("threads_per_task=-1", "crawl.threads_per_task = -1: must be a whole number >= 1"),
    ("host_rate=-2", "crawl.host_rate = -2: must be a number >= 0"),  # taken as "no limit"
    ("commit_rows=2.5", "crawl.commit_rows = 2.5: must be a whole number >= 1"),
])
def test_crawl_settings_it_cannot_use_are_one_line_before_spark(tmp_path, capsys, monkeypatch, setting, message):
    from museum_typology import cli

    monkeypatch.setattr(cli, "_spark", lambda *a: pytest.fail("Spark started before the settings were checked"))
    (tmp_path / "urls.csv").write_text("guid,description,typology,url\ng1,x,графика,http://127.0.0.1:9/a.jpg\n", encoding="utf-8")
    code = cli.main(["crawl", "--input", str(tmp_path / "urls.csv"), "--output", str(tmp_path / "out"), "--set", f"crawl.{setting}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err



def test_the_rehearsal_tool_refuses_arguments_it_cannot_use(tmp_path, capsys):
    """--rows -1 wrote a file of "-1 rows"; --pool 0 served nothing (a division by zero per request)."""
    from museum_typology import crawl_rehearsal

    for argv, message in ((["csv", "--rows", "-1", "--out", str(tmp_path / "u.csv")], "--rows: must be at least 0, not -1"), (["serve", "--pool", "0"], "--pool: must be at least 1, not 0"),
                          (["csv", "--shared-rate", "2", "--out", str(tmp_path / "u.csv")], "--shared-rate: must be in [0, 1], not 2")):
        with pytest.raises(SystemExit) as exit_:
            crawl_rehearsal.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "u.csv").exists()
