"""Shared fixtures: one module-scoped local[2] SparkSession, settings pointing at temp dirs,
and the path of the shared data (read in place, never copied into the repository)."""
from __future__ import annotations

import os
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
