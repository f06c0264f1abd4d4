"""Settings layering: defaults <- environment <- --conf file <- --set overrides."""
from __future__ import annotations

import pytest

from museum_typology.config import ConfigError, load_settings, parse_override


def test_defaults_are_read_from_conf_default():
    settings = load_settings(environ={})
    assert settings.get("paths.data") == "../shared/data"
    assert settings.get("images.max_side") == 512
    assert settings.get("spark.conf")["spark.sql.execution.arrow.pyspark.enabled"] == "true"


def test_environment_then_file_then_overrides(tmp_path):
    conf = tmp_path / "site.toml"
    conf.write_text('[paths]\nwork_dir = "from-file"\n[images]\nmax_side = 256\n', encoding="utf-8")
    settings = load_settings(conf, ["images.max_side=128", "s3.endpoint_url=http://127.0.0.1:9000"], environ={"MUSEUM_DATA": "/data/x", "MUSEUM_WORK_DIR": "from-env"})
    assert settings.get("paths.data") == "/data/x"
    assert settings.get("paths.work_dir") == "from-file"  # the file beats the environment
    assert settings.get("images.max_side") == 128  # --set beats the file
    assert settings.get("s3.endpoint_url") == "http://127.0.0.1:9000"
    assert settings.get("images.codec") == "jpeg"  # untouched defaults survive the merge
    assert settings.sources[-1].startswith("--set")


@pytest.mark.parametrize(
    ("assignment", "keys", "value"),
    [
        ("images.max_side=384", ["images", "max_side"], 384),
        ("paths.work_dir=/tmp/x y", ["paths", "work_dir"], "/tmp/x y"),
        ('paths.work_dir="s3://b/p"', ["paths", "work_dir"], "s3://b/p"),
        ("ingest.partitions=0", ["ingest", "partitions"], 0),
        ('spark.conf."spark.executor.memory"=8g', ["spark", "conf", "spark.executor.memory"], "8g"),
        ("x.flag=true", ["x", "flag"], True),
    ],
)
def test_parse_override(assignment, keys, value):
    assert parse_override(assignment) == (keys, value)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("images.max_side")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[images\nmax_side=", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match="'images.nope' is not defined"):
        load_settings(environ={}).get("images.nope")
