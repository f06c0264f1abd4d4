"""Settings layering: defaults <- environment <- --conf file <- --set overrides."""
from __future__ import annotations

import json
import re

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
        ('spark.conf."spark.x.flag"=true', ["spark", "conf", "spark.x.flag"], True),
    ],
)
def test_parse_override(assignment, keys, value):
    assert parse_override(assignment) == (keys, value)


def test_a_setting_the_defaults_do_not_define_is_refused_with_the_nearest_name(tmp_path):
    """A typo (image.batchsize) passed as a new setting that nothing read, and the job ran with
    the default; in a --conf file too. Inside spark.conf any key goes: Spark has hundreds."""
    with pytest.raises(ConfigError, match=r"--set 'image.batchsize=64': no setting image.batchsize .*did you mean image.batch_size\?"):
        load_settings(overrides=["image.batchsize=64"], environ={})
    with pytest.raises(ConfigError, match=r"no setting scor.image_views .*did you mean score.image_views\?"):
        load_settings(overrides=["scor.image_views=whole"], environ={})
    with pytest.raises(ConfigError, match=r"no setting nothing.like.this in conf/default.toml, which lists every one$"):
        load_settings(overrides=["nothing.like.this=1"], environ={})
    conf = tmp_path / "site.toml"
    conf.write_text('[paths]\nwork_dri = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"--conf {re.escape(str(conf))}: no setting paths.work_dri .*did you mean paths.work_dir\?"):
        load_settings(conf, environ={})
    conf.write_text('[spark.conf]\n"spark.executor.cores" = "4"\n', encoding="utf-8")
    assert load_settings(conf, ["spark.conf.\"spark.task.cpus\"=2"], environ={}).get("spark.conf")["spark.executor.cores"] == "4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a non-empty string is true; in a file only TOML's true and false (not --set's yes/no)
        ('[image]\ntta_flip = "false"\n', r"image.tta_flip expects a boolean \(true or false\) .* got 'false'"),
        ("[images]\nmax_side = true\n", r"images.max_side expects an integer .* got True"),
        ("[paths]\nwork_dir = 2024-05-01\n", r"paths.work_dir expects a string"),
        ("[cascade]\ndefault_class = 3\n", r"cascade.default_class expects a string"),
        ('images = "x"\n', r"images expects a TOML inline table"),
    ],
)
def test_a_settings_file_value_of_the_wrong_type_is_refused(tmp_path, text, expected):
    conf = tmp_path / "site.toml"
    conf.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected):
        load_settings(conf, environ={})


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


def test_a_bad_key_or_file_is_one_error_not_a_traceback(tmp_path):
    """'#x' read as a TOML comment left no key (a ValueError from unpacking); a file that is not
    UTF-8 was a UnicodeDecodeError; an empty --conf (an unset variable) ran on the defaults."""
    with pytest.raises(ConfigError, match=r"--set '#x=1': bad key \(no key before '='"):
        parse_override("#x=1")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[images]\n")
    with pytest.raises(ConfigError, match=r"binary\.toml: not UTF-8 text \(byte 0\)"):
        load_settings(binary, environ={})
    with pytest.raises(ConfigError, match=r"--conf '': an empty path"):
        load_settings("", environ={})


@pytest.mark.parametrize(
    ("where", "text", "expected"),
    [
        # unquoted in a file: a table "spark" that Spark got as one setting named "spark", ignored
        ("file", '[spark.conf]\nspark.driver.memory = "8g"\n', r'spark\.conf\.spark is a table, not a Spark setting; quote the whole key, as in "spark\.driver\.memory" = '),
        ("file", '[spark.conf]\n"spark.jars.packages" = ["a", "b"]\n', r"spark\.conf\.spark\.jars\.packages is a list"),
        ("set", "spark.conf.spark.executor.memory=8g", r'spark\.executor\.memory reads as nested keys; quote a Spark setting whole: spark\.conf\."spark\.executor\.memory"'),
        ("set", 'spark.conf."spark.x"={a = 1}', r"spark\.conf\.spark\.x is a table"),
        ("set", 'spark.conf."spark.x"={}', r"spark\.conf\.spark\.x is an empty table; a Spark setting is a string"),
        ("set", "spark.conf={spark = {driver = {memory = '8g'}}}", r"spark\.conf\.spark is a table"),
    ],
)
def test_a_spark_setting_must_be_one_quoted_key_with_a_plain_value(tmp_path, where, text, expected):
    with pytest.raises(ConfigError, match=expected):
        if where == "file":
            conf = tmp_path / "site.toml"
            conf.write_text(text, encoding="utf-8")
            load_settings(conf, environ={})
        else:
            load_settings(overrides=[text], environ={})
    quoted = load_settings(overrides=['spark.conf."spark.executor.memory"=8g'], environ={})
    assert quoted.get("spark.conf")["spark.executor.memory"] == "8g"


@pytest.mark.parametrize(
    ("assignment", "value"),
    [
        # Booleans: a bare False must not become the (truthy) string 'False'.
        ("crawl.labelled=False", False),
        ("crawl.labelled=FALSE", False),
        ("text.use_navec=no", False),
        ("crawl.robots_txt=0", False),
        ("crawl.robots_txt=Yes", True),
        ("crawl.labelled=true", True),
        ("crawl.labelled=1", True),
        # Strings keep the text as written: a number or a date stays a string.
        ("ingest.train_csv=2021", "2021"),
        ("paths.work_dir=2024-05-01", "2024-05-01"),
        ("ingest.train_csv='2021.csv'", "2021.csv"),
        ("images.codec=nan", "nan"),
        ('spark.conf."spark.sql.shuffle.partitions"=2', "2"),  # Spark conf values are strings
        # Numbers: a float setting takes an int; an int default takes a float too, because
        # float knobs are written as whole numbers in the defaults (crawl.host_rate = 0).
        ("text.learning_rate=1", 1.0),
        ("crawl.host_rate=0.5", 0.5),
        ("images.max_side=1_024", 1024),
        # Arrays and tables as TOML.
        ("clean.overall_k=[3, 4]", [3, 4]),
        ('spark.conf={"spark.driver.memory" = "1g"}', {"spark.driver.memory": "1g"}),
        # A key the defaults don't have (only inside spark.conf): a TOML literal, or the text; a
        # date is kept as text.
        ('spark.conf."spark.x.when"=2024-05-01', "2024-05-01"),
        ('spark.conf."spark.x.n"=7', 7),
    ],
)
def test_override_values_take_the_type_of_the_default(assignment, value):
    keys, parsed = parse_override(assignment)
    assert parsed == value and type(parsed) is type(value)
    settings = load_settings(overrides=[assignment], environ={})
    node = settings.values
    for key in keys:  # not Settings.get: a quoted key holds dots
        node = node[key]
    assert node == value or (isinstance(value, dict) and node.items() >= value.items())  # tables merge
    json.dumps(settings.values)  # what every job writes to conf.json at its end


def test_bool_override_reaches_the_settings_as_a_bool():
    assert load_settings(overrides=["crawl.labelled=False"], environ={}).get("crawl.labelled") is False


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("crawl.labelled=maybe", "crawl.labelled expects a boolean"),
        ('crawl.labelled="False"', "crawl.labelled expects a boolean"),
        ("images.max_side=true", "images.max_side expects an integer"),
        ("images.max_side=big", "images.max_side expects an integer"),
        ("images.max_side=", "images.max_side expects an integer"),
        ("text.learning_rate=2024-05-01", "text.learning_rate expects a number"),
        ("clean.overall_k=5", "clean.overall_k expects a TOML array"),
        ("clean.overall_k=[2024-05-01]", "clean.overall_k expects a TOML array"),
        ("spark.conf=8g", "spark.conf expects a TOML inline table"),
        ("images.max_side.x=1", "images.max_side is an integer setting, not a table"),
        ('spark.conf."spark.x.when"=[2024-05-01]', "dates are not supported"),
        # a whole table is checked key by key, as a settings file's is
        ("text={foldz=3}", "no setting text.foldz in conf/default.toml, which lists every one; did you mean text.folds?"),
        ("text={folds='x'}", "text.folds expects an integer"),
    ],
)
def test_override_of_the_wrong_type_is_refused_naming_key_value_and_type(assignment, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_settings(overrides=[assignment], environ={})
    assert repr(assignment) in str(caught.value)  # the key and the value as given


def test_typed_values_from_code_are_kept_as_given():
    # Settings.set is how code (the CLI's --data, train_*'s --folds) passes values it has typed.
    settings = load_settings(environ={"MUSEUM_DATA": "2021"})
    assert settings.get("paths.data") == "2021"
    settings = settings.set(["text", "folds"], 3, "--folds").set(["cascade", "t_text"], 0.5, "test")
    assert (settings.get("text.folds"), settings.get("cascade.t_text")) == (3, 0.5)


def test_spark_submit_conf_beats_the_packaged_defaults_but_not_explicit_settings():
    """Under spark-submit, `--conf spark.sql.shuffle.partitions=64` was overridden by
    conf/default.toml's [spark.conf]; a conf file or --set value still wins over it."""
    from museum_typology.session import spark_conf_to_set

    packaged = {"spark.sql.shuffle.partitions": 8, "spark.driver.memory": "4g", "spark.ui.enabled": False}
    submitted = {"spark.master": "yarn", "spark.sql.shuffle.partitions": "64", "spark.driver.memory": "1g"}
    assert spark_conf_to_set(packaged, packaged, submitted) == {"spark.ui.enabled": "False"}
    explicit = {**packaged, "spark.sql.shuffle.partitions": 200}  # from --conf FILE or --set
    assert spark_conf_to_set(explicit, packaged, submitted)["spark.sql.shuffle.partitions"] == "200"
    assert "spark.driver.memory" not in spark_conf_to_set({**packaged, "spark.driver.memory": "8g"}, packaged, submitted)  # fixed before Python ran
    assert spark_conf_to_set(packaged, packaged, {}) == {"spark.sql.shuffle.partitions": "8", "spark.driver.memory": "4g", "spark.ui.enabled": "False"}  # no spark-submit


def test_settings_dataclasses_default_to_the_packaged_conf():
    """FetchSettings and CleanSettings carry defaults for code that builds them directly; they had
    drifted from conf/default.toml (16 connections per host against 48, 4 parallel fits against 2)."""
    from museum_typology import clean
    from museum_typology.fetcher import FetchSettings

    settings = load_settings(environ={})
    assert FetchSettings.from_settings(settings.section("crawl"), int(settings.get("crawl.max_bytes"))) == FetchSettings()
    assert clean.CleanSettings.from_settings(settings) == clean.CleanSettings()
