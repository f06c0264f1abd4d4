"""The console script as a user meets it: help per job, clear errors without tracebacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("museum-typology")


def _run(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUSEUM_NO_PROGRESS": "1"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


from museum_typology.cli import JOBS


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_per_job(job):
    result = _run(job, "--help")
    assert result.returncode == 0
    assert f"usage: museum-typology {job}" in result.stdout
    assert "--conf" in result.stdout and "--set" in result.stdout


def test_show_conf_applies_overrides(tmp_path):
    result = _run("show-conf", "--set", "images.max_side=99", "--data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"max_side": 99' in result.stdout and str(tmp_path) in result.stdout


def test_a_setting_outside_its_choices_is_one_line_not_a_traceback(tmp_path):
    """text.lstm_pooling was checked when the first network was built: a traceback minutes in."""
    result = _run("train-text", "--set", "text.lstm_pooling=avg", "--data", str(tmp_path), "--set", f"paths.work_dir={tmp_path / 'work'}")
    assert result.returncode == 2, result.stderr
    assert "text.lstm_pooling: 'avg' is none of max_avg, max_attention" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["clean.label_k=[1]", "text.lstm_pooling=avg", "image.view_mode=all", "cascade.folds=1", "cascade.w_text=2.0", "score.image_views=all", "score.image_threads=-1", "image.class_weight=balance", "image.mixed_precision=of", "image.variant=efficientnet-b6",
                                     # counts and ranges: lstm_seeds 0 trained a bundle whose text probabilities were all NaN
                                     "text.lstm_seeds=0", "text.folds=1", "text.folds=5.5", "text.dropout=1.0", "text.blend_grid=[]", "text.blend_grid=[1.5]",
                                     "image.folds=1", "image.head_lr=0", "image.patience=0", "image.batch_size=2.5",
                                     # images.codec "foo" failed in an executor, "jpg" stored through OpenCV's JPEG, ignoring jpeg_quality
                                     "images.codec=jpg", "images.jpeg_quality=101", "images.max_side=0",
                                     # each grid point becomes a cascade: a weight of 1.5 failed after both trainings, named w_text
                                     "cascade.weight_grid=[0.5, 1.5]", "cascade.threshold_grid=[0.7, nan]", "cascade.t_text=nan"])
def test_the_pipeline_checks_every_stages_settings_before_it_starts(tmp_path, monkeypatch, capsys, setting):
    """A value the clean, cascade, score or image stage cannot use failed the pipeline after ingest and both
    trainings; clean's own job checked its settings only after Spark had started."""
    from museum_typology import cli

    monkeypatch.setattr(cli, "_spark", lambda *a: pytest.fail("Spark started before the settings were checked"))
    for job in (["pipeline"], ["clean"]) if setting.startswith("clean.") else (["pipeline"],):
        assert cli.main([*job, "--set", setting, "--set", f"paths.work_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert setting.split("=")[0].split(".")[1] in err and "Traceback" not in err, err


def test_the_pipeline_needs_its_test_file_before_it_starts(tmp_path, monkeypatch, capsys):
    """ingest takes a missing test.csv for "no test rows"; the pipeline failed on it at its end."""
    from museum_typology import cli

    monkeypatch.setattr(cli, "_spark", lambda *a: pytest.fail("Spark started before the inputs were checked"))
    (tmp_path / "train.csv").write_text("guid,description,typology\n", encoding="utf-8")
    assert cli.main(["pipeline", "--data", str(tmp_path), "--set", f"paths.work_dir={tmp_path / 'work'}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'test.csv'}: no such file (the rows the pipeline scores at its end; set --data or ingest.test_csv)" in err and "Traceback" not in err


@pytest.mark.parametrize("module,error", [("train_image", "TrainImageError"), ("train_text", "TrainTextError")])
def test_a_training_the_data_or_settings_cannot_support_exits_2_like_bad_input(monkeypatch, capsys, module, error):
    """train-image's "only 7 labelled images; need at least 10" exited 1 ("the job failed: a bug
    to report") where train-text's same refusal exits 2: both say what to change (--folds, data)."""
    import importlib

    from museum_typology import cli

    def refused(args):
        raise getattr(importlib.import_module(f"museum_typology.{module}"), error)("ds: only 7 labelled images; need at least 10")

    monkeypatch.setattr(cli, "_settings", refused)
    assert cli.main(["show-conf"]) == 2
    assert capsys.readouterr().err == "museum-typology show-conf: error: ds: only 7 labelled images; need at least 10\n"


@pytest.mark.parametrize("job", ["train-text", "train-image"])
def test_a_fold_count_below_two_is_refused_on_the_command_line(job, capsys):
    """`--folds 0` was taken as "not given" (the conf's count), `--folds 1` failed late."""
    from museum_typology import cli

    for value, why in (("0", "must be at least 2, not 0"), ("1", "must be at least 2, not 1"), ("x", "expected a whole number, got 'x'")):
        with pytest.raises(SystemExit) as caught:
            cli.main([job, "--folds", value])
        assert caught.value.code == 2 and why in capsys.readouterr().err


def test_a_job_whose_check_of_its_own_work_fails_says_failed_and_exits_1(monkeypatch, capsys):
    """score, rescore and clean reported a broken invariant (rows lost between planning and output)
    as a user error (exit 2), or a bare RuntimeError traceback; a scheduler must tell "fix your
    input" (2) from "the job failed" (1)."""
    from museum_typology import cli
    from museum_typology.errors import InternalError

    def broken(args):
        raise InternalError("score: 5 rows planned, 4 scored")

    monkeypatch.setattr(cli, "_settings", broken)
    assert cli.main(["show-conf"]) == 1
    assert capsys.readouterr().err == "museum-typology show-conf: failed: score: 5 rows planned, 4 scored\n"


def test_an_option_a_final_run_would_ignore_is_refused(tmp_path):
    result = _run("train-image", "--final", "--oof", str(tmp_path / "x.parquet"), "--set", f"paths.work_dir={tmp_path}")
    assert result.returncode == 2 and "--oof: a --final run writes no out-of-fold file" in result.stderr, result.stderr


def test_an_unreachable_s3_store_is_one_line_not_a_traceback(tmp_path):
    """pyarrow's S3 errors (no bucket, no endpoint, access denied) are OSErrors that the CLI let
    through as a traceback, exit 1."""
    result = _run("evaluate", "--truth", "s3://nobucket/t.csv", "--pred", "s3://nobucket/p.csv", "--set", "s3.endpoint_url=http://127.0.0.1:1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "museum-typology evaluate: error: S3: " in result.stderr and "bucket 'nobucket'" in result.stderr


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(b"guid,description,typology\nx,\xff\xfe broken,\n")
    result = _run("ingest", "--data", str(data), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.csv, line 2: not UTF-8 text" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_log_level_or_master_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """A mistyped $MUSEUM_LOG_LEVEL was logging's traceback, $MUSEUM_SPARK_LOG_LEVEL Spark's once
    it had started, and a master Spark does not know a Py4J traceback after the JVM's line."""
    from museum_typology import cli

    for name, value in (("MUSEUM_LOG_LEVEL", "bogus"), ("MUSEUM_SPARK_LOG_LEVEL", "verbose")):
        monkeypatch.setenv(name, value)
        assert cli.main(["show-conf"]) == 2
        assert f"error: ${name}='{value}': not a log level (one of " in capsys.readouterr().err
        monkeypatch.delenv(name)
    for level in ("warn", "FATAL", "notset"):  # logging's own aliases, in either case
        monkeypatch.setenv("MUSEUM_LOG_LEVEL", level)
        assert cli.main(["show-conf"]) == 0
    capsys.readouterr()
    for args, where in ((["--set", "spark.master=bogus"], "spark.master"), (["--master", "local[0]"], "--master")):
        code = cli.main(["crawl", "--input", str(tmp_path / "urls.csv"), "--plan-only", *args])
        err = capsys.readouterr().err
        assert code == 2 and f"{where} = " in err and "not a Spark master; use local, local[N]" in err, err


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local[02]", "local[1 , 1]", "local[*,3]", "local-cluster[ 2 , 1 , 1024 ]", "yarn", "spark://h:7077", "k8s://https://k:443", "mesos://m:5050"])
def test_every_master_spark_takes_passes_the_check(master):
    from museum_typology.session import check_master

    check_master(master)  # Spark 3.5's own patterns


def test_an_abbreviated_option_is_refused():
    """argparse took "--con FILE" for --conf, which spark-submit.sh (matching --conf) did not
    ship with --files: on a cluster the driver then ran without the file."""
    from museum_typology import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["show-conf", "--con", "site.toml"])
    assert cli.build_parser().parse_args(["show-conf", "--conf", "site.toml"]).conf == "site.toml"


def test_missing_data_dir_names_the_setting(tmp_path):
    result = _run("ingest", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "train.csv: no such file" in result.stderr and "--data" in result.stderr


def test_unknown_setting_file(tmp_path):
    result = _run("ingest", "--conf", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml: no such file" in result.stderr


def test_data_and_master_are_options_only_of_the_jobs_that_use_them():
    """An option accepted and then ignored looks like it did something."""
    from museum_typology import cli

    parser = cli.build_parser()
    for name, job in cli.JOBS.items():
        options = {o for action in parser._subparsers._group_actions[0].choices[name]._actions for o in action.option_strings}
        assert ("--data" in options) == job.reads_data and ("--master" in options) == job.uses_spark, name
    assert {n for n, j in cli.JOBS.items() if j.uses_spark} == {"ingest", "crawl", "score", "rescore", "train-image", "clean", "pipeline"}
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--truth", "t.csv", "--pred", "p.csv", "--master", "local[2]"])


def test_local_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    """Executors resolve a relative path in Spark's work folder, not the submitter's directory:
    on a standalone cluster ingest --data data failed to open work/app-*/0/data/images.zip."""
    import dataclasses

    from museum_typology import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MUSEUM_DATA", raising=False)
    monkeypatch.delenv("MUSEUM_WORK_DIR", raising=False)
    seen = {}
    monkeypatch.setitem(cli.JOBS, "evaluate", dataclasses.replace(cli.JOBS["evaluate"], run=lambda args, settings: seen.update(args=args, settings=settings)))
    assert cli.main(["evaluate", "--truth", "t.csv", "--pred", "s3://bucket/p.csv", "--work-dir", "out"]) == 0
    args, settings = seen["args"], seen["settings"]
    assert args.truth == str(tmp_path / "t.csv") and args.pred == "s3://bucket/p.csv"
    assert settings.get("paths.work_dir") == str(tmp_path / "out")
    # the defaults' relative paths too ("../shared/data", "var"), and each of clean's --oof files
    parsed = cli.build_parser().parse_args(["clean", "--oof", "a.parquet,s3://b/c.parquet"])
    settings = cli._settings(parsed)
    assert parsed.oof == f"{tmp_path / 'a.parquet'},s3://b/c.parquet"
    assert settings.get("paths.work_dir") == str(tmp_path / "var") and settings.get("paths.data") == str(tmp_path.parent / "shared" / "data")


def test_a_trial_model_dir_keeps_its_out_of_fold_file_beside_its_bundles(tmp_path):
    """train-text --model-dir X wrote WORK_DIR/oof/text.parquet, and the next tune-cascade fitted
    the cascade score uses to the trial's model."""
    from museum_typology import cli

    work = str(tmp_path / "work")
    for job, kind in (("train-text", "text"), ("train-image", "image")):
        def oof(*extra: str) -> str:
            args = cli.build_parser().parse_args([job, "--work-dir", work, *extra])
            return cli._oof_url(args, cli._settings(args), kind)

        assert oof() == f"{work}/oof/{kind}.parquet"
        assert oof("--model-dir", f"{work}/models/{kind}/") == f"{work}/oof/{kind}.parquet"
        assert oof("--model-dir", str(tmp_path / "trial")) == str(tmp_path / "trial" / "oof.parquet")
        assert oof("--model-dir", str(tmp_path / "trial"), "--oof", str(tmp_path / "o.parquet")) == str(tmp_path / "o.parquet")


def test_the_pipeline_scores_the_test_rows_with_the_images_ingest_stored(tmp_path, monkeypatch):
    """Ingest stores every row's image, test rows' too; the pipeline's scoring stage must read them
    from that dataset (it scored the test file from its text alone). Every stage but the wiring is
    a stand-in here: each job has its own tests."""
    from museum_typology import clean, cli, ingest, run_report, score, submission, train_image, train_text, tune_cascade
    from museum_typology.cascade import CascadeParams

    calls: dict[str, dict] = {}
    monkeypatch.setattr(cli, "_spark", lambda settings, args, job: "spark")
    monkeypatch.setattr(ingest, "run", lambda spark, settings, data, out, force=False: {"dataset_rows": 1, "input_rows": 1, "status_counts": {"ok": 1}})
    monkeypatch.setattr(train_image, "run", lambda *a, **k: {"bundle": "b", "oof": "o", "report": "r", "metrics": {"macro_f1": 0.5}})
    monkeypatch.setattr(train_text, "run", lambda *a, **k: {"bundle": "b", "oof": "o", "report": "r", "metrics": {"macro_f1": {"final": 0.5, "baseline": 0.4}}})
    monkeypatch.setattr(clean, "run", lambda *a, **k: {"actions": {"keep": 1, "relabel": 0, "drop": 0}})
    monkeypatch.setattr(tune_cascade, "run", lambda *a, **k: {"bundle": "c", "params": CascadeParams(0.9, 0.5, 0.5)})
    monkeypatch.setattr(score, "resolve_models", lambda settings, models: "spec")
    monkeypatch.setattr(score, "run", lambda spark, settings, input_url, output_url, spec, **kwargs: calls.setdefault("score", kwargs) and {"rows": 1, "sources": {"image": 1}})
    monkeypatch.setattr(submission, "run", lambda *a, **k: {"output": "s"})
    monkeypatch.setattr(run_report, "build_run_report", lambda *a, **k: "report")
    (tmp_path / "data").mkdir()
    for name in ("train.csv", "test.csv"):  # the pipeline checks that they are there before it starts
        (tmp_path / "data" / name).write_text("guid,description,typology\n", encoding="utf-8")
    args = cli.build_parser().parse_args(["pipeline", "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data")])
    cli.JOBS["pipeline"].run(args, cli._settings(args))
    assert calls["score"] == {"image_dataset": str(tmp_path / "work" / "ingest" / "dataset")}


def test_a_pipeline_whose_stage_fails_writes_a_report_that_says_so(tmp_path, monkeypatch):
    """The previous run's report stayed in place after a failed stage, read as this run's. The
    report of the stopped run must not hide the stage's error, even when it cannot be written."""
    from museum_typology import cli, ingest, run_report, train_image, train_text

    monkeypatch.setattr(cli, "_spark", lambda settings, args, job: "spark")
    monkeypatch.setattr(ingest, "run", lambda *a, **k: {"dataset_rows": 1, "input_rows": 1, "status_counts": {"ok": 1}})
    monkeypatch.setattr(train_image, "run", lambda *a, **k: {"bundle": "b", "oof": "o", "report": "r", "metrics": {"macro_f1": 0.5}})
    monkeypatch.setattr(train_text, "run", lambda *a, **k: (_ for _ in ()).throw(train_text.TrainTextError("only 3 labelled rows\n with a description")))
    reports: list[dict] = []
    monkeypatch.setattr(run_report, "build_run_report", lambda work_dir, timings, outputs, s3, stopped=None: reports.append({"stages": list(outputs), "timed": list(timings), "stopped": stopped}) or "r")
    (tmp_path / "data").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "data" / name).write_text("guid,description,typology\n", encoding="utf-8")
    args = cli.build_parser().parse_args(["pipeline", "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data")])
    with pytest.raises(train_text.TrainTextError, match="only 3 labelled rows"):
        cli.JOBS["pipeline"].run(args, cli._settings(args))
    assert reports == [{"stages": ["ingest", "train-image"], "timed": ["ingest", "train-image", "train-text"], "stopped": "its train-text stage failed: only 3 labelled rows with a description"}]

    def unwritable(*a, **k):
        raise OSError("read-only file system")

    monkeypatch.setattr(run_report, "build_run_report", unwritable)
    with pytest.raises(train_text.TrainTextError, match="only 3 labelled rows"):
        cli.JOBS["pipeline"].run(args, cli._settings(args))


def test_a_signal_stops_the_job_with_one_line_and_the_pipeline_report_says_so(tmp_path, monkeypatch, capsys):
    """SIGTERM killed the process with no word (exit 143, a pipeline's last report left as if it
    were this run's), and after Horovod had run it was ignored altogether; Ctrl-C printed
    tracebacks. Now: the job stops where it is, one line, exit 128 + the signal, the pipeline's
    report says which stage was interrupted, and the signal handlers are as they were."""
    import os
    import signal
    import time

    from museum_typology import cli, ingest, run_report, train_image

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives first
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setattr(cli, "_spark", lambda settings, args, job: "spark")
    monkeypatch.setattr(ingest, "run", lambda *a, **k: {"dataset_rows": 1, "input_rows": 1, "status_counts": {"ok": 1}})
    monkeypatch.setattr(train_image, "run", killed)
    reports: list[str | None] = []
    monkeypatch.setattr(run_report, "build_run_report", lambda work_dir, timings, outputs, s3, stopped=None: reports.append(stopped) or "r")
    (tmp_path / "data").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "data" / name).write_text("guid,description,typology\n", encoding="utf-8")
    code = cli.main(["pipeline", "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and reports == ["its train-image stage failed: interrupted by SIGTERM"]
    assert "museum-typology pipeline: interrupted by SIGTERM; what was committed stays" in err and "Traceback" not in err
    assert {sig: signal.getsignal(sig) for sig in before} == before

    def ctrl_c_then_py4j(*a, **k):  # the JVM got the Ctrl-C too: what Python sees next is a Py4J error
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        finally:
            raise RuntimeError("An error occurred while calling o102.getResult")

    monkeypatch.setattr(train_image, "run", ctrl_c_then_py4j)
    assert cli.main(["pipeline", "--work-dir", str(tmp_path / "work"), "--data", str(tmp_path / "data")]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "interrupted by SIGINT (Ctrl-C)" in err and "Traceback" not in err
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_py4js_own_retry_notice_is_not_shown_but_its_failures_are():
    """py4j logs a command it sends again (the JVM closed a pooled connection) at INFO on the root
    logger with the closed socket's traceback: in every make run log, though nothing failed."""
    code = (
        "import logging\n"
        "from museum_typology.log import setup_logging\n"
        "setup_logging()\n"
        "try:\n    raise ConnectionResetError(104, 'Connection reset by peer')\n"
        "except ConnectionResetError:\n"
        "    logging.info('Exception while sending command.', exc_info=True)\n"
        "    logging.exception('Exception while sending command.')\n"
        "try:\n    raise KeyboardInterrupt\n"
        "except KeyboardInterrupt:\n"
        "    logging.exception('KeyboardInterrupt while sending command.')\n"  # the CLI says 'interrupted' in one line
        "logging.warning('%d rows', 'x')\n"  # a bad log call: logging's own error report, not an exception here
        "logging.info('something else')\n"
        "import os\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(" ", 1)[1] for line in lines if " root: " in line] == ["ERROR root: Exception while sending command.", "INFO root: something else"]
    assert result.stderr.count("Traceback") == 2 and result.stderr.count("--- Logging error ---") == 1  # the kept ERROR, the bad call's report
    assert result.stdout == "1\n"  # TensorFlow's C++ INFO lines off, for the processes it starts too


def test_the_legacy_local_filesystem_petastorm_needs_warns_nobody():
    """Called in every Spark task that writes or reads the dataset, where the driver's warning
    filters do not reach: its FutureWarning was printed twice into every make run log."""
    import warnings

    from museum_typology import petastorm_io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        petastorm_io.legacy_filesystem("/tmp")
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
