"""Shared fixtures: one module-scoped local[2] SparkSession, settings pointing at temp dirs,
the path of the shared data (read in place, never copied into the repository), and one moto
S3 server on 127.0.0.1 with fake credentials for the S3 tests."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSEUM_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("MUSEUM_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def spark():
    from museum_typology.config import load_settings
    from museum_typology.session import build_spark

    settings = load_settings(overrides=['spark.conf."spark.driver.memory"="2g"', 'spark.conf."spark.sql.shuffle.partitions"=2'])
    session = build_spark(settings, "tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path):
    from museum_typology.config import load_settings

    return load_settings(overrides=[f"paths.work_dir={tmp_path / 'work'}", "ingest.partitions=2"], environ={})


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train.csv").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set MUSEUM_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on a free port of 127.0.0.1 for the whole session. moto keeps buckets in
    process-wide state, so each test creates its bucket and deletes it (``fresh_bucket``)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def fake_aws_environment(tmp_path: Path) -> dict[str, str]:
    """Fake credentials, given the standard way (AWS environment variables), with any real AWS
    config of the machine kept out of the way and no wait on EC2 metadata."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def fresh_bucket(moto_endpoint, monkeypatch, tmp_path):
    """``(boto3 client, bucket name)`` of an empty bucket on the moto server, with fake
    credentials in this test's environment; the bucket is emptied and deleted afterwards."""
    import boto3

    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in fake_aws_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    bucket = "museum"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def left_by_a_crash(path: Path, hours: float = 2.0) -> Path:
    """Date ``path`` and everything in it ``hours`` back: a crashed run's temporary, which the
    next run deletes (one written to within storage.STALE_TEMPORARY_QUIET_S may be another
    run's, still going, and is left alone)."""
    import time

    then = time.time() - hours * 3600
    for item in [*path.rglob("*"), path]:
        os.utime(item, (then, then))
    return path
