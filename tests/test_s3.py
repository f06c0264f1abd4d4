"""Ingest from and to S3 for real, against a moto server on 127.0.0.1.

The test builds a tiny data set (three CSVs and an images.zip with a broken image), uploads it
with boto3, runs ``ingest.run`` with ``data`` and ``output`` as s3:// URLs, then reads the
manifest, the ``_SUCCESS`` marker and the petastorm dataset back from S3. A second run onto the
same output must replace it cleanly.
"""
from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import fake_aws_environment
from PIL import Image

BUCKET = "museum"
DATA_URL = f"s3://{BUCKET}/data"
OUTPUT_URL = f"s3://{BUCKET}/work/ingest"

# guid -> (format, size, colour); "broken" is not an image at all.
IMAGES = {
    "a0000000-0000-0000-0000-000000000001": ("JPEG", (64, 48), (200, 30, 30)),
    "a0000000-0000-0000-0000-000000000002": ("PNG", (40, 80), (20, 160, 60)),
    "a0000000-0000-0000-0000-000000000003": ("PNG", (32, 32), (10, 20, 220)),
}
BROKEN_GUID = "a0000000-0000-0000-0000-00000000000b"
NO_IMAGE_GUID = "a0000000-0000-0000-0000-0000000000ff"

TRAIN_CSV = (
    "guid,description,typology\n"
    "t0000000-0000-0000-0000-000000000001,Монета. Копейка,предметы нумизматики\n"
    "t0000000-0000-0000-0000-000000000002,Фото,фотографии и негативы\n"
    "t0000000-0000-0000-0000-000000000003,Что-то,не класс\n"  # unknown label -> rejected
)
TEST_CSV = (
    "guid,description,typology\n"
    f"a0000000-0000-0000-0000-000000000003,Синий квадрат,\n"
    f"{NO_IMAGE_GUID},Без картинки,\n"
)
TRAIN_IMAGES_CSV = (
    "guid,description,typology\n"
    "a0000000-0000-0000-0000-000000000001,Красная картинка,графика\n"
    "a0000000-0000-0000-0000-000000000002,Зелёная картинка,живопись\n"
    f"{BROKEN_GUID},Битая картинка,документы\n"
)
EXPECTED_STATUS = {
    ("train.csv", 1): "no_image",
    ("train.csv", 2): "no_image",
    ("train.csv", 3): "rejected",
    ("test.csv", 1): "ok",
    ("test.csv", 2): "no_image",
    ("train_images.csv", 1): "ok",
    ("train_images.csv", 2): "ok",
    ("train_images.csv", 3): "quarantined",
}


def _image_bytes(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _images_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for guid, (fmt, size, colour) in IMAGES.items():
            archive.writestr(f"images/{guid}.{fmt.lower()}", _image_bytes(fmt, size, colour))
        archive.writestr(f"images/{BROKEN_GUID}.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return buffer.getvalue()


@pytest.fixture
def s3_env(spark, fresh_bucket, monkeypatch, tmp_path):
    """A fresh bucket holding the uploaded data set, with fake credentials for this test only.

    The credentials reach the code the standard way, through the AWS environment variables. The
    shared Spark session started before this test, so its Python workers would not inherit them:
    they are also given as executor environment (what ``spark.executorEnv.*`` sets), as a cluster
    would give its executors their own credentials.
    """
    client, bucket = fresh_bucket
    assert bucket == BUCKET
    for name, value in fake_aws_environment(tmp_path).items():
        monkeypatch.setitem(spark.sparkContext.environment, name, value)
    for key, body in (
        ("data/train.csv", TRAIN_CSV.encode()),
        ("data/test.csv", TEST_CSV.encode()),
        ("data/train_images.csv", TRAIN_IMAGES_CSV.encode()),
        ("data/images.zip", _images_zip()),
    ):
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return client


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _check_output(client, s3) -> None:
    from museum_typology import petastorm_io, storage

    assert storage.is_committed(OUTPUT_URL, s3)
    assert "work/ingest/_SUCCESS" in _keys(client, "work/ingest/")

    fs, path = storage.filesystem(storage.join(OUTPUT_URL, "manifest.parquet"), s3)
    manifest = pq.read_table(path, filesystem=fs).to_pylist()
    assert len(manifest) == len(EXPECTED_STATUS)
    assert {(r["source_file"], r["source_row"]): r["status"] for r in manifest} == EXPECTED_STATUS
    broken = next(r for r in manifest if r["guid"] == BROKEN_GUID)
    assert broken["reason"]

    with petastorm_io.make_reader(storage.join(OUTPUT_URL, "dataset"), s3, num_epochs=1, workers_count=1, shuffle_row_groups=False) as reader:
        rows = {row.guid: row for row in reader}
    assert sorted(rows) == sorted(IMAGES)
    for guid, (_fmt, (width, height), colour) in IMAGES.items():
        row = rows[guid]
        assert row.image.shape == (height, width, 3)
        assert (int(row.orig_width), int(row.orig_height)) == (width, height)
        assert np.abs(row.image.astype(int) - np.array(colour)).max() <= 8, guid

    # Only the committed output under work/: no temporaries left behind. ("work/" itself may
    # exist as the empty directory marker pyarrow's create_dir writes.)
    keys = _keys(client, "work/")
    assert [k for k in keys if ".tmp-" in k or ".old-" in k] == []
    assert [k for k in keys if not k.startswith("work/ingest/") and k != "work/"] == []


def test_ingest_reads_and_writes_s3(spark, s3_env, moto_endpoint, monkeypatch):
    from museum_typology import ingest, storage
    from museum_typology.config import load_settings
    from museum_typology.storage import S3Options

    settings = load_settings(
        overrides=[f"s3.endpoint_url={moto_endpoint}", "s3.region=us-east-1", "ingest.partitions=2", "images.max_side=128"],
        environ={},
    )
    s3 = S3Options.from_settings(settings.section("s3"))

    summary = ingest.run(spark, settings, DATA_URL, OUTPUT_URL)
    assert summary["input_rows"] == summary["manifest_rows"] == len(EXPECTED_STATUS)
    assert summary["dataset_rows"] == len(IMAGES)
    _check_output(s3_env, s3)
    # Objects, not pyarrow's empty "directory/" markers (its deletes leave one on the parent).
    first_keys = [k for k in _keys(s3_env, "work/ingest/") if not k.endswith("/")]

    # A re-run onto the same output replaces it whole, and cleans up what a crashed run left.
    s3_env.put_object(Bucket=BUCKET, Key="work/ingest/stale-from-before.txt", Body=b"old")
    s3_env.put_object(Bucket=BUCKET, Key="work/.ingest.tmp-deadbeef/dataset/part-00000.parquet", Body=b"half")
    monkeypatch.setattr(storage, "STALE_TEMPORARY_QUIET_S", 0)  # an hour later: quiet, so a crash's, not another run's
    assert ingest.run(spark, settings, DATA_URL, OUTPUT_URL)["reused"]  # the same inputs: kept as it is
    summary = ingest.run(spark, settings, DATA_URL, OUTPUT_URL, force=True)
    assert summary["manifest_rows"] == len(EXPECTED_STATUS)
    _check_output(s3_env, s3)
    assert "work/ingest/stale-from-before.txt" not in _keys(s3_env, "work/ingest/")
    assert [k for k in _keys(s3_env, "work/ingest/") if not k.endswith("/")] == first_keys, "a re-run writes the same set of objects"


def test_score_reads_images_from_s3_and_writes_predictions_there(spark, s3_env, moto_endpoint):
    """score with its input, a DIR/<guid> image folder, a petastorm dataset and its output on S3
    (stand-in models, shipped to the executors by value: see test_score.py)."""
    import dataclasses

    import pandas as pd

    from museum_typology import ingest, score
    from museum_typology.config import load_settings
    from museum_typology.storage import S3Options, read_bytes
    from test_score import spec, stand_in

    settings = load_settings(overrides=[f"s3.endpoint_url={moto_endpoint}", "s3.region=us-east-1", "ingest.partitions=2", "images.max_side=128"], environ={})
    s3 = S3Options.from_settings(settings.section("s3"))
    on_s3 = dataclasses.replace(spec(), s3=s3)  # what resolve_models gives the executors
    ingest.run(spark, settings, DATA_URL, OUTPUT_URL)
    red, green, blue = IMAGES
    s3_env.put_object(Bucket=BUCKET, Key="score/in.csv", Body=f"guid,description\n{red},\n{green},\n{blue},монета\nx-1,\n".encode())
    s3_env.put_object(Bucket=BUCKET, Key="score/images/x-1.weird", Body=_image_bytes("PNG", (20, 20), (230, 0, 0)))

    from_dataset = score.run(spark, settings, f"s3://{BUCKET}/score/in.csv", f"s3://{BUCKET}/score/out.parquet", on_s3, image_dataset=f"{OUTPUT_URL}/dataset", factory=stand_in)
    got = pd.read_parquet(io.BytesIO(read_bytes(f"s3://{BUCKET}/score/out.parquet", s3)))
    assert from_dataset["rows"] == 4 and list(got["guid"]) == [red, green, blue, "x-1"]
    assert list(got["source"]) == ["image", "image", "text", "default"]  # x-1 is not in the dataset
    assert got.loc[0, "typology"] == "живопись" and got.loc[0, "image_sha256"]  # the red one

    score.run(spark, settings, f"s3://{BUCKET}/score/in.csv", f"s3://{BUCKET}/score/out.csv", on_s3, images_dir=f"s3://{BUCKET}/score/images", factory=stand_in)
    rows = read_bytes(f"s3://{BUCKET}/score/out.csv", s3).decode().splitlines()
    assert len(rows) == 5 and rows[4].startswith("x-1,живопись,") and ",image," in rows[4]

    # A file over images.max_bytes on S3 is refused from the size the open gives, unread.
    from museum_typology.storage import StorageError, read_bytes_within

    body = _image_bytes("PNG", (20, 20), (230, 0, 0))
    assert read_bytes_within(f"s3://{BUCKET}/score/images/x-1.weird", len(body), s3) == (body, len(body))
    assert read_bytes_within(f"s3://{BUCKET}/score/images/x-1.weird", len(body) - 1, s3) == (None, len(body))
    with pytest.raises(StorageError, match="cannot read"):
        read_bytes_within(f"s3://{BUCKET}/score/images/missing", 100, s3)


def test_crawl_to_s3_survives_a_crash_and_resumes(spark, s3_env, moto_endpoint, monkeypatch):
    """crawl with its URL CSV and its output on S3, against the HTTP zoo on 127.0.0.1: every row
    once in the manifest, the good images in the dataset. A crash in the final assembly leaves
    the committed chunks under ``_work/`` on S3; ``--resume`` fetches nothing again and commits."""
    import hashlib

    from http_zoo import ZooServer, gen_image

    from museum_typology import crawl, petastorm_io, storage
    from museum_typology.config import load_settings
    from museum_typology.schema import CLASSES
    from museum_typology.storage import S3Options

    settings = load_settings(
        overrides=[f"s3.endpoint_url={moto_endpoint}", "s3.region=us-east-1", "crawl.partitions=2", "crawl.commit_rows=3",
                   "crawl.retries=0", "crawl.progress_interval_s=0", "images.max_side=128"],
        environ={},
    )
    s3 = S3Options.from_settings(settings.section("s3"))
    output = f"s3://{BUCKET}/work/crawl"
    with ZooServer() as zoo:
        rows = [(f"c{i:03d}", f"item {i}", CLASSES[i % len(CLASSES)], zoo.url(f"/gen/{i}.png")) for i in range(10)]
        rows += [("c404", "gone", CLASSES[0], zoo.url("/status/404")), ("cfile", "local", CLASSES[0], "file:///etc/passwd")]
        text = io.StringIO()
        csv.writer(text).writerows([("guid", "description", "typology", "url"), *rows])  # some class names hold commas
        s3_env.put_object(Bucket=BUCKET, Key="urls.csv", Body=text.getvalue().encode())

        real = petastorm_io.write_metadata
        monkeypatch.setattr(petastorm_io, "write_metadata", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            crawl.run(spark, settings, f"s3://{BUCKET}/urls.csv", output)
        assert not storage.is_committed(output, s3)
        assert [k for k in _keys(s3_env, "work/crawl/_work/manifest/") if k.endswith(".parquet")], "chunks committed on S3"
        fetched_once = sum(zoo.requests.values())
        assert fetched_once == 11, zoo.requests  # the file:// row is never requested

        monkeypatch.setattr(petastorm_io, "write_metadata", real)
        summary = crawl.run(spark, settings, f"s3://{BUCKET}/urls.csv", output, resume=True)
        assert sum(zoo.requests.values()) == fetched_once, "resume fetched nothing again"

    assert summary["manifest_rows"] == 12 and summary["dataset_rows"] == 10
    assert storage.is_committed(output, s3)
    fs, path = storage.filesystem(storage.join(output, "manifest.parquet"), s3)
    manifest = {r["guid"]: r for r in pq.read_table(path, filesystem=fs).to_pylist()}
    assert len(manifest) == 12
    assert (manifest["c404"]["status"], manifest["c404"]["http_status"]) == ("http_error", 404)
    assert manifest["cfile"]["status"] == "bad_url" and manifest["cfile"]["attempts"] == 0
    with petastorm_io.make_reader(storage.join(output, "dataset"), s3, num_epochs=1, workers_count=1, shuffle_row_groups=False) as reader:
        stored = {row.guid: row for row in reader}
    assert sorted(stored) == [f"c{i:03d}" for i in range(10)]
    assert all(stored[g].sha256 == manifest[g]["sha256"] == hashlib.sha256(gen_image(int(g[1:]))).hexdigest() for g in stored)
    assert [k for k in _keys(s3_env, "work/") if ".tmp-" in k or "/_work/" in k] == []  # committed whole, work area gone
