"""The one console script: ``museum-typology <job> [options]``.

``jobs/<job>.py`` (what spark-submit runs) calls ``main`` with the same arguments, so a job runs
the same way in-process on local Spark and on a cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__, bundles, storage
from .catalogue import CsvError
from .config import ConfigError, Settings, count_argument, load_settings
from .errors import Interrupted
from .log import get_logger, log_level_problem, setup_logging

log = get_logger("museum_typology")

CTRL_C = "SIGINT (Ctrl-C)"
_on_signal: Callable[[int, Any], None] | None = None  # interruptible()'s handler while a job runs

# Errors that mean "bad input or settings": one clear line, exit code 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CsvError, ConfigError, storage.StorageError)


def _common(parser: argparse.ArgumentParser, job: Job) -> None:
    """The options every job has, plus --data and --master for the jobs that use them (an option
    accepted and then ignored would look like it did something)."""
    parser.add_argument("--conf", metavar="FILE", help="settings file (TOML) over conf/default.toml")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help="override one setting, e.g. images.max_side=384 (repeatable)"
    )
    if job.reads_data:
        parser.add_argument("--data", metavar="DIR", help="input data directory or s3:// prefix (default: paths.data, $MUSEUM_DATA)")
    parser.add_argument("--work-dir", metavar="DIR", help="root of outputs (default: paths.work_dir, $MUSEUM_WORK_DIR)")
    if job.uses_spark:
        parser.add_argument("--master", help="Spark master (default: spark.master, or spark-submit's)")


# Options that name files or directories (each job has some of them); clean's --oof is a list.
# --data and --work-dir become paths.data and paths.work_dir, made absolute with the settings.
PATH_OPTIONS = (
    "input", "output", "images", "image_dataset", "model", "text_model", "image_model", "model_dir",
    "dataset", "manifest", "oof", "text_oof", "image_oof", "pred", "truth", "predictions", "catalogue",
)


def _absolute_paths(args: argparse.Namespace) -> None:
    """Local paths made absolute before any job uses them: Spark executors (and Horovod ranks)
    would read a relative path from their own working directory, not the submitter's."""
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            setattr(args, name, ",".join(storage.absolute(part.strip()) if part.strip() else part for part in value.split(",")) if name == "oof" else storage.absolute(value))


def _settings(args: argparse.Namespace) -> Settings:
    _absolute_paths(args)
    settings = load_settings(args.conf, args.overrides)
    if getattr(args, "data", None):
        settings = settings.set(["paths", "data"], args.data, "--data")
    if args.work_dir:
        settings = settings.set(["paths", "work_dir"], args.work_dir, "--work-dir")
    for key in ("data", "work_dir"):  # the defaults ("../shared/data", "var") and conf files' too
        value = settings.get(f"paths.{key}")
        if isinstance(value, str) and value and storage.absolute(value) != value:
            settings = settings.set(["paths", key], storage.absolute(value), f"paths.{key} made absolute")
    return settings


def _spark(settings: Settings, args: argparse.Namespace, job: str):
    from .session import build_spark

    spark = build_spark(settings, job, master=args.master)
    # pyspark's SparkContext puts in its own SIGINT handler, which cancels the Spark jobs over
    # Py4J from inside the handler: a Ctrl-C landing while the driver waited on Py4J failed with
    # "reentrant call" Py4J errors, five tracebacks and exit 1. The job's own handler is put back
    # (the Spark jobs stop with the SparkContext as the job ends).
    if _on_signal is not None and signal.getsignal(signal.SIGINT) is not _on_signal:
        signal.signal(signal.SIGINT, _on_signal)
    return spark


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import ingest

    output = args.output or ingest.default_output(settings.get("paths.work_dir"))
    spark = _spark(settings, args, "ingest")
    summary = ingest.run(spark, settings, settings.get("paths.data"), output, force=args.force)
    if summary.get("reused"):
        print(f"ingest: {output} was made from these rows, image files and settings: reused, nothing decoded again (--force decodes anyway)")
    print(f"ingest: {summary['dataset_rows']} images in the dataset; manifest rows {summary['manifest_rows']} = input rows {summary['input_rows']} ({_counts(summary)})")
    print(f"  dataset:  {storage.join(output, 'dataset')}")
    print(f"  manifest: {storage.join(output, 'manifest.parquet')}")
    print(f"  summary:  {storage.join(output, 'summary.json')}")
    return summary


def cmd_crawl(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import crawl

    output = args.output or storage.join(settings.get("paths.work_dir"), "crawl")
    crawl.crawl_settings(settings)  # a value it cannot use fails here, before Spark starts
    spark = _spark(settings, args, "crawl")
    if args.plan_only:
        plan = crawl.describe_plan(settings, args.input, spark.sparkContext.defaultParallelism)
        print(json.dumps(plan, ensure_ascii=False, indent=2))
        return plan
    summary = crawl.run(spark, settings, args.input, output, resume=args.resume, restart=args.restart)
    if summary.get("already_complete"):
        print(f"crawl: {output} is already complete for this input; nothing to do")
    print(
        f"crawl: {summary['dataset_rows']} images stored; manifest rows {summary['manifest_rows']} = input rows {summary['input_rows']} "
        f"({_counts(summary)}); {summary['urls_fetched_this_run']} URLs fetched this run ({summary['urls_per_second']}/s)"
    )
    print(f"  dataset:  {storage.join(output, 'dataset')}")
    print(f"  manifest: {storage.join(output, 'manifest.parquet')}")
    print(f"  summary:  {storage.join(output, 'summary.json')}")
    return summary


def _crawl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="CSV", help="URL CSV with columns guid,description,typology,url (local or s3://)")
    parser.add_argument("--output", metavar="DIR", help="output directory (default: WORK_DIR/crawl)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="finish an interrupted crawl into the same --output, fetching only what is not stored yet")
    how.add_argument("--restart", action="store_true", help="discard an interrupted crawl's stored chunks in --output and start over (without --resume or --restart, such a crawl is an error)")
    how.add_argument("--plan-only", action="store_true", help="print the plan (rows, distinct URLs, partitions, chunks, per-task limits) and fetch nothing")


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Every stage end to end: ingest -> image folds -> text model -> label-noise review (clean) ->
    cascade tuning -> score the test file -> submission -> the run's HTML report. Prints where
    each output went. An ingest output made from the same rows, image files and settings is kept
    (``--reingest`` decodes again). A training stage whose bundle (the one its out-of-fold file
    names) was trained on the same data and settings reuses it (``--retrain`` trains anyway): a
    re-run after a later stage failed, or on unchanged data, skips the slow part."""
    from . import clean, ingest, run_report, score, submission, train_image, train_text, tune_cascade

    work_dir = settings.get("paths.work_dir")
    data = settings.get("paths.data")
    _check_stage_settings(settings)
    _check_pipeline_inputs(data, settings)
    spark = _spark(settings, args, "pipeline")
    outputs: dict[str, dict[str, str]] = {}
    timings: dict[str, float] = {}

    s3 = storage.S3Options.from_settings(settings.section("s3"))

    def stage(name: str, run: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            result = run()
        except (Exception, KeyboardInterrupt) as error:
            timings[name] = time.monotonic() - started
            if isinstance(error, KeyboardInterrupt):
                message = f"interrupted by {error.name if isinstance(error, Interrupted) else CTRL_C}"
            else:
                message = " ".join(str(error).split()) or type(error).__name__
            _report_stopped_run(work_dir, timings, outputs, s3, f"its {name} stage failed: {message[:1000]}{'…' if len(message) > 1000 else ''}")
            raise
        timings[name] = time.monotonic() - started
        return result

    ingest_dir = ingest.default_output(work_dir)
    summary = stage("ingest", lambda: ingest.run(spark, settings, data, ingest_dir, force=args.reingest))
    outputs["ingest"] = {"dataset": ingest.dataset_of(ingest_dir), **{name: storage.join(ingest_dir, path) for name, path in (("manifest", "manifest.parquet"), ("summary", "summary.json"))}}
    oof = {kind: bundles.oof_file(work_dir, kind) for kind in ("image", "text")}
    image = stage("train-image", lambda: train_image.run(spark, settings, outputs["ingest"]["dataset"], _models_dir(settings, "image"), oof["image"], retrain=args.retrain))
    outputs["train-image"] = {name: image[name] for name in ("bundle", "oof", "report") if name in image}
    text = stage("train-text", lambda: train_text.run(settings, data, _models_dir(settings, "text"), oof["text"], retrain=args.retrain))
    outputs["train-text"] = {"bundle": text["bundle"], "oof": text["oof"], "report": text["report"]}
    cleaned = stage("clean", lambda: clean.run(spark, settings, [oof["text"], oof["image"]], storage.join(work_dir, "clean"), dataset_url=outputs["ingest"]["dataset"]))
    outputs["clean"] = {name: cleaned[name] for name in ("manifest", "manifest_csv", "review") if name in cleaned}
    cascade = stage("tune-cascade", lambda: tune_cascade.run(settings, oof["text"], oof["image"], _models_dir(settings, "cascade")))
    outputs["tune-cascade"] = {"bundle": cascade["bundle"]}
    predictions = storage.join(work_dir, "predictions", "test.csv")
    # The test rows' images are in ingest's dataset (it stores every row's image, test rows too).
    scored = stage("score", lambda: score.run(spark, settings, storage.under(data, settings.get("ingest.test_csv")), predictions, score.resolve_models(settings, _models_dir(settings)), image_dataset=outputs["ingest"]["dataset"]))
    outputs["score"] = {"test": predictions}
    submitted = stage("submission", lambda: submission.run(settings, predictions, storage.join(work_dir, "submission.csv")))
    outputs["submission"] = {"csv": submitted["output"]}
    outputs["report"] = {"html": run_report.build_run_report(work_dir, timings, outputs, s3)}
    print(
        f"pipeline finished. ingest: {summary['dataset_rows']} images in the dataset, {summary['input_rows']} rows reconciled ({_counts(summary)}){' (output reused)' if summary.get('reused') else ''}; "
        f"image folds out-of-fold macro-F1 {image['metrics']['macro_f1']:.3f}{_reused_mark(image)}; "
        f"text model out-of-fold macro-F1 {text['metrics']['macro_f1']['final']:.3f} (baseline {text['metrics']['macro_f1']['baseline']:.3f}){_reused_mark(text)}; "
        f"clean: kept {cleaned['actions']['keep']}, relabelled {cleaned['actions']['relabel']}, dropped {cleaned['actions']['drop']}; cascade {cascade['params'].t_text}/{cascade['params'].t_image}/{cascade['params'].w_text}{_reused_mark(cascade)}; "
        f"{scored['rows']} test rows scored ({_source_counts(scored['sources'])}); {sum(timings.values()) / 60:.1f} min"
    )
    print("outputs:")
    for stage_name, paths in outputs.items():
        for name, path in paths.items():
            print(f"  {stage_name:12s} {name:9s} {path}")
    return outputs


def _report_stopped_run(work_dir: str, timings: dict[str, float], outputs: dict[str, dict[str, str]], s3: storage.S3Options, why: str) -> None:
    """The run report of a pipeline whose stage failed: an earlier run's report left in place
    read as this run's. Writing it never hides the stage's own error."""
    from . import run_report

    try:
        url = run_report.build_run_report(work_dir, timings, outputs, s3, stopped=why)
    except Exception as error:  # the stage's error is the one to see
        log.warning("run report of the stopped run not written: %s", error)
    else:
        log.info("the stopped run's report: %s", url)


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    _retrain_argument(parser)
    parser.add_argument("--reingest", action="store_true", help="decode the images again even when the ingest output was made from the same rows, image files and settings (by default it is reused)")


def _check_pipeline_inputs(data: str, settings: Settings) -> None:
    """The two files the pipeline cannot do without, before Spark starts: ingest alone takes a
    missing test file for "no test rows", but the pipeline scores it at its end, after both
    trainings."""
    from .catalogue import CsvError

    s3 = storage.S3Options.from_settings(settings.section("s3"))
    for key, why in (("ingest.train_csv", "the labelled rows every model learns from"), ("ingest.test_csv", "the rows the pipeline scores at its end")):
        url = storage.under(data, settings.get(key))
        if not storage.exists(url, s3):
            raise CsvError(f"{url}: no such file ({why}; set --data or {key})")


def _check_stage_settings(settings: Settings) -> None:
    """Every stage's settings, read as each stage reads them, before the first one starts: a
    value a late stage cannot use must not fail it after ingest and both trainings."""
    from . import clean, image_model, score, text_model, tune_cascade
    from .cascade import CascadeParams
    from .ingest import DecodeSettings

    DecodeSettings.from_settings(settings)
    text_model.TextSettings.from_settings(settings)
    image_model.ImageSettings.from_settings(settings)
    clean.CleanSettings.from_settings(settings)
    tune_cascade.check_conf(settings.section("cascade"))
    CascadeParams.from_dict(settings.section("cascade"))
    score.check_settings(settings)


def _reused_mark(result: dict[str, Any]) -> str:
    return " (bundle reused)" if result.get("reused") else ""


def _print_reused(job: str, result: dict[str, Any]) -> None:
    if result.get("reused"):
        print(f"{job}: {result['bundle']} was trained on these data and settings: reused, not trained again (--retrain trains anyway)")


def _print_paths(result: dict[str, Any], names: tuple[str, ...] = ("bundle", "oof", "report")) -> None:
    for name in names:
        if name in result:
            print(f"  {name + ':':8s} {result[name]}")


def _models_dir(settings: Settings, kind: str = "") -> str:
    """WORK_DIR/models, or one kind's directory below it."""
    return bundles.models_dir(settings.get("paths.work_dir"), kind)


def _oof_url(args: argparse.Namespace, settings: Settings, kind: str) -> str:
    """--oof, else WORK_DIR/oof/<kind>.parquet (what clean and tune-cascade read) for bundles in
    WORK_DIR/models/<kind>, else oof.parquet beside the bundles of another --model-dir: a trial
    run into its own directory must not replace the out-of-fold file of the bundles score uses
    (tune-cascade would then fit the cascade to the trial's model)."""
    if args.oof:
        return args.oof
    if args.model_dir and args.model_dir.rstrip("/") != _models_dir(settings, kind).rstrip("/"):
        return storage.join(args.model_dir, "oof.parquet")
    return bundles.oof_file(settings.get("paths.work_dir"), kind)


def cmd_train_text(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import train_text

    result = train_text.run(
        settings,
        settings.get("paths.data"),
        args.model_dir or _models_dir(settings, "text"),
        _oof_url(args, settings, "text"),
        folds=args.folds,
        manifest=args.manifest,
        retrain=args.retrain,
    )
    macro = result["metrics"]["macro_f1"]
    _print_reused("train-text", result)
    print(f"train-text: out-of-fold macro-F1 {macro['final']:.3f} (baseline {macro['baseline']:.3f}, tfidf {macro['tfidf']:.3f}, bilstm {macro['bilstm']:.3f})")
    _print_paths(result)
    return result


def _train_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", metavar="DIR", help="where bundles go (default: WORK_DIR/models/text)")
    parser.add_argument("--oof", metavar="FILE", help="out-of-fold probabilities (default: WORK_DIR/oof/text.parquet, or DIR/oof.parquet with another --model-dir)")
    parser.add_argument("--folds", type=count_argument(2), metavar="K", help="number of folds, at least 2 (default: text.folds)")
    parser.add_argument("--manifest", metavar="PARQUET", help="cleaned manifest from the clean job: relabelled rows train on their new label, dropped rows are left out")
    _retrain_argument(parser)


def _retrain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retrain", action="store_true", help="train even when a bundle was trained on the same data and settings (by default it is reused)")


def cmd_score(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import score

    s3 = storage.S3Options.from_settings(settings.section("s3"))
    score.check_image_sources(args.images, args.image_dataset, s3)  # before Spark starts
    score.check_output(args.input, args.output, s3)
    spec = _scorer_spec(args, settings)
    spark = _spark(settings, args, "score")
    result = score.run(spark, settings, args.input, args.output, spec, images_dir=args.images, image_dataset=args.image_dataset)
    print(f"score: {result['rows']} rows ({_source_counts(result['sources'])}) with {result['model_version']} -> {result['output']}")
    return result


def _source_counts(sources: dict[str, int]) -> str:
    return _name_counts(dict(sorted(sources.items())))


def _name_counts(counts: dict[str, int]) -> str:
    """``{"new": 3, "image": 1}`` -> ``new 3, image 1`` (in the mapping's order)."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of score and rescore (resolved by ``_scorer_spec``)."""
    parser.add_argument("--model", metavar="DIR", help="models root with text/, image/, cascade/ (default: WORK_DIR/models), or one bundle")
    parser.add_argument("--text-model", metavar="DIR", help="a text bundle or text models directory (overrides --model's)")
    parser.add_argument("--image-model", metavar="DIR", help="an image bundle or image models directory (overrides --model's)")


def _scorer_spec(args: argparse.Namespace, settings: Settings):
    from . import score

    return score.resolve_models(settings, args.model or _models_dir(settings), args.text_model, args.image_model)


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="CSV|PARQUET", help="rows to score: guid,description[,...] (either may be empty)")
    parser.add_argument("--output", required=True, metavar="CSV|PARQUET", help="guid,typology,confidence,source,model_version,note (Parquet adds confidences and input hashes)")
    parser.add_argument("--images", metavar="DIR", help="images as DIR/<guid> with any or no extension (given with --image-dataset: a guid's file here is its image, the dataset only for guids without one)")
    parser.add_argument("--image-dataset", metavar="DIR", help="images from a petastorm dataset written by ingest or crawl")
    _model_arguments(parser)


def cmd_rescore(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Nightly incremental scoring: only new or changed catalogue rows, into predictions/date=DAY/."""
    from . import rescore, score

    work_dir = settings.get("paths.work_dir")
    predictions = args.predictions or storage.join(work_dir, "predictions")
    s3 = storage.S3Options.from_settings(settings.section("s3"))
    date = rescore.check_arguments(args.catalogue, predictions, args.date, s3)  # before Spark starts
    score.check_image_sources(args.images, args.image_dataset, s3)
    spec = _scorer_spec(args, settings)
    spark = _spark(settings, args, "rescore")
    result = rescore.run(spark, settings, args.catalogue, predictions, spec, date=date, images_dir=args.images, image_dataset=args.image_dataset, force=args.force)
    reasons, not_scored = _name_counts(result["reasons"]), _name_counts(result["not_scored"])
    if result["already_complete"]:
        print(f"rescore {date}: {result['partition']} already holds this night's {result['rescored']} rows for this catalogue and these models; nothing scored")
    else:
        print(
            f"rescore {date}: {result['rows']} catalogue rows -> {result['rescored']} scored ({reasons}), {result['unchanged']} unchanged, "
            f"{sum(result['not_scored'].values())} not scored ({not_scored}); {result['absent_from_catalogue']} predicted guids no longer in the catalogue; "
            f"model {result['model_version']}"
        )
    print(f"  partition: {result['partition']}")
    return result


def _rescore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalogue", required=True, metavar="FILE|DIR", help="guid,description rows: a CSV or Parquet file, or a directory of them")
    parser.add_argument("--predictions", metavar="DIR", help="the dated partitions, date=YYYY-MM-DD/ (default: WORK_DIR/predictions)")
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="the night's partition (default: today, UTC); pass it explicitly from a scheduler so a retry writes the same one")
    parser.add_argument("--force", action="store_true", help="score the night's delta again even when its partition is already complete")
    parser.add_argument("--images", metavar="DIR", help="images as DIR/<guid> with any or no extension (hashed every night to see changes; given with --image-dataset, a guid's file here is its image, the dataset only for guids without one)")
    parser.add_argument("--image-dataset", metavar="DIR", help="images from a petastorm dataset written by ingest or crawl (its sha256 column says what changed)")
    _model_arguments(parser)


def cmd_tune_cascade(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import tune_cascade

    work_dir = settings.get("paths.work_dir")
    result = tune_cascade.run(
        settings,
        args.text_oof or bundles.oof_file(work_dir, "text"),
        args.image_oof or bundles.oof_file(work_dir, "image"),
        args.model_dir or _models_dir(settings, "cascade"),
    )
    f1 = result["metrics"]["paired_macro_f1"]
    print(
        f"tune-cascade: {result['params']} paired macro-F1 {f1['tuned_cross_fitted']:.3f} cross-fitted, {f1['tuned']:.3f} in-sample "
        f"(baseline thresholds {f1['baseline']:.3f}, text alone {f1['text_only']:.3f}, image alone {f1['image_only']:.3f}){_reused_mark(result)}"
    )
    _print_paths(result, ("bundle",))
    return result


def _tune_cascade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-oof", metavar="FILE", help="default: WORK_DIR/oof/text.parquet")
    parser.add_argument("--image-oof", metavar="FILE", help="default: WORK_DIR/oof/image.parquet")
    parser.add_argument("--model-dir", metavar="DIR", help="where cascade bundles go (default: WORK_DIR/models/cascade)")


def cmd_clean(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Label noise: keep / relabel / drop per out-of-fold row, a cleaned manifest and a review page."""
    from . import clean

    work_dir = settings.get("paths.work_dir")
    oof = [u.strip() for u in args.oof.split(",") if u.strip()] if args.oof else [bundles.oof_file(work_dir, kind) for kind in ("text", "image")]
    output = args.output or storage.join(work_dir, "clean")
    s3 = storage.S3Options.from_settings(settings.section("s3"))
    # [clean]'s values, and a missing or malformed out-of-fold file, fail here, before Spark starts
    clean.CleanSettings.from_settings(settings)
    clean.check_oof_urls(oof)
    for url in oof:
        clean.read_oof(url, s3)
    spark = _spark(settings, args, "clean")
    summary = clean.run(spark, settings, oof, output, dataset_url=args.dataset)
    actions = summary["actions"]
    print(
        f"clean: {summary['rows']} rows -> kept {actions['keep']}, relabelled {actions['relabel']}, dropped {actions['drop']} "
        f"({summary['suspected']} suspected; {len(summary['suspicious_clusters'])} suspicious clusters)"
    )
    _print_paths(summary, ("manifest", "manifest_csv", "review"))
    return summary


def _clean_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--oof", metavar="FILE[,FILE]", help="out-of-fold probabilities, comma-separated (default: WORK_DIR/oof/text.parquet,WORK_DIR/oof/image.parquet)")
    parser.add_argument("--output", metavar="DIR", help="output directory (default: WORK_DIR/clean)")
    parser.add_argument("--dataset", metavar="DIR", help="petastorm dataset with the images for the review page (default: WORK_DIR/ingest/dataset)")


def cmd_show_conf(args: argparse.Namespace, settings: Settings) -> None:
    print(json.dumps(settings.values, ensure_ascii=False, indent=2))


def _counts(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items()))


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR", help="output directory (default: WORK_DIR/ingest)")
    parser.add_argument("--force", action="store_true", help="decode again even when the output was made from the same rows, image files and settings (by default it is kept)")


def cmd_train_image(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Image model with Horovod on Spark: K fold models + out-of-fold probabilities, or --final."""
    from . import ingest, train_image

    work_dir = settings.get("paths.work_dir")
    if args.final and args.oof:  # an option taken and then ignored would look like it did something
        raise ConfigError("--oof: a --final run writes no out-of-fold file (fold runs do)")
    spark = _spark(settings, args, "train-image")
    result = train_image.run(
        spark,
        settings,
        args.dataset or ingest.dataset_of(ingest.default_output(work_dir)),
        args.model_dir or _models_dir(settings, "image"),
        _oof_url(args, settings, "image"),
        folds=args.folds,
        num_proc=args.num_proc,
        final=args.final,
        manifest=args.manifest,
        retrain=args.retrain,
    )
    metrics = result["metrics"]
    _print_reused("train-image", result)
    if args.final:
        print(f"train-image --final: validation macro-F1 {metrics['validation_macro_f1']:.3f} (best epoch {metrics['best_epoch'] + 1} of {metrics['epochs_run']}, {metrics['processes']} processes)")
    else:
        print(f"train-image: out-of-fold macro-F1 {metrics['macro_f1']:.3f} on {metrics['rows']} labelled images ({metrics['folds']} folds, {metrics['processes']} processes)")
    _print_paths(result)
    return result


def _train_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", metavar="DIR", help="petastorm dataset (default: WORK_DIR/ingest/dataset)")
    parser.add_argument("--model-dir", metavar="DIR", help="where bundles go (default: WORK_DIR/models/image)")
    parser.add_argument("--oof", metavar="FILE", help="out-of-fold probabilities of a fold run (default: WORK_DIR/oof/image.parquet, or DIR/oof.parquet with another --model-dir); not with --final")
    parser.add_argument("--folds", type=count_argument(2), metavar="K", help="number of stratified folds, at least 2 (default: image.folds)")
    parser.add_argument("--num-proc", type=count_argument(0), metavar="N", help="Horovod processes, one Spark task each (default: image.num_proc, 0 = Spark's parallelism)")
    parser.add_argument("--final", action="store_true", help="fine-tune the upper blocks on the labelled images but one stratified fold (about 1/K of them), which validates and picks the best epoch")
    parser.add_argument("--manifest", metavar="PARQUET", help="cleaned manifest from the clean job (guid, new_label, action; or guid, typology[, keep]): its labels replace the dataset's, dropped rows are left out")
    _retrain_argument(parser)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Predictions against known labels (on the driver: pandas, no Spark)."""
    from . import evaluate

    output = args.output or storage.join(settings.get("paths.work_dir"), "evaluate")
    result = evaluate.run(settings, args.truth, args.pred, output)
    m = result["metrics"]
    missing = m["coverage"]["missing_from_pred"]["count"]
    by_source = ", ".join(f"{r['source']} {r['macro_f1']:.3f} ({r['rows']})" for r in m["by_source"])
    print(
        f"evaluate: macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f} on {m['rows']} truth guids"
        + (f" ({missing} without a prediction, scored as wrong)" if missing else "")
        + f"; by source (macro-F1, rows): {by_source}"
    )
    for name, url in result["files"].items():
        print(f"  {name + ':':14s} {url}")
    return result


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, metavar="CSV|PARQUET", help="known labels: guid,typology (local or s3://)")
    parser.add_argument("--pred", required=True, metavar="CSV|PARQUET", help="predictions: guid,typology[,source,...] (the score job's output, or a submission)")
    parser.add_argument("--output", metavar="DIR", help="where metrics.json, per_class.csv, confusion.png, report.md go (default: WORK_DIR/evaluate)")


@dataclass(frozen=True)
class Job:
    """One subcommand: its help line, its own options, and what it runs (args, settings)."""

    help: str
    run: Callable[[argparse.Namespace, Settings], Any]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    reads_data: bool = False  # reads paths.data: takes --data
    uses_spark: bool = False  # starts Spark: takes --master


# The jobs, in pipeline order. A new job adds one entry here and one file in jobs/.
JOBS: dict[str, Job] = {
    "ingest": Job("CSVs + images -> petastorm dataset and manifest", cmd_ingest, _ingest_arguments, reads_data=True, uses_spark=True),
    "crawl": Job("URL CSV -> fetched images as a petastorm dataset and manifest (resumable)", cmd_crawl, _crawl_arguments, uses_spark=True),
    "train-text": Job("cross-validated text model: bundle, out-of-fold probabilities, report", cmd_train_text, _train_text_arguments, reads_data=True),
    "tune-cascade": Job("fit the cascade's thresholds and blend weight on out-of-fold predictions", cmd_tune_cascade, _tune_cascade_arguments),
    "score": Job("the text/image cascade over a CSV or Parquet of rows (Spark)", cmd_score, _score_arguments, uses_spark=True),
    "rescore": Job("nightly: score only new or changed catalogue rows into predictions/date=YYYY-MM-DD/ (Spark)", cmd_rescore, _rescore_arguments, uses_spark=True),
    "train-image": Job("image model with Horovod on Spark: fold models + out-of-fold probabilities, or --final", cmd_train_image, _train_image_arguments, uses_spark=True),
    "clean": Job("label noise: keep / relabel / drop per out-of-fold row, cleaned manifest and review page", cmd_clean, _clean_arguments, reads_data=True, uses_spark=True),
    "evaluate": Job("predictions against known labels: macro-F1, per-class table, confusion matrix, by source", cmd_evaluate, _evaluate_arguments),
    "pipeline": Job("run every stage end to end on the configured data", cmd_pipeline, _pipeline_arguments, reads_data=True, uses_spark=True),
    "show-conf": Job("print the resolved settings as JSON", cmd_show_conf, reads_data=True),
}


def build_parser() -> argparse.ArgumentParser:
    # No abbreviated options: spark-submit.sh ships the file of --conf, not of "--con".
    parser = argparse.ArgumentParser(prog="museum-typology", description="Sort Goskatalog items into their 15 typologies with Spark jobs.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, job in JOBS.items():
        job_parser = sub.add_parser(name, help=job.help, description=job.help, allow_abbrev=False)
        _common(job_parser, job)
        job.add_arguments(job_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    problem = log_level_problem(os.environ)
    if problem:
        print(f"museum-typology: error: {problem}", file=sys.stderr)
        return 2
    setup_logging()
    args = build_parser().parse_args(argv)
    with interruptible() as interruptions:
        try:
            JOBS[args.job].run(args, _settings(args))
            return 0
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and not interruptions:  # raised by other code than ours
                interruptions.append(Interrupted(signal.SIGINT, CTRL_C))
            if interruptions:  # whatever the signal left behind (Spark's JVM gone too: Py4J errors) is not the job's error
                first = interruptions[0]
                print(f"museum-typology {args.job}: interrupted by {first.name}; what was committed stays, nothing half-written is read: run the same command again to go on", file=sys.stderr)
                return 128 + first.signum
            return _exit_code(args.job)


def _exit_code(job: str) -> int:
    """For the exception being handled: one line and 2 for the user's errors, 1 for a job that
    could not finish; anything else is raised on, with its traceback (a bug)."""
    exc = sys.exc_info()[1]
    if isinstance(exc, USER_ERRORS + _input_errors()):
        print(f"museum-typology {job}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, _job_errors()):
        print(f"museum-typology {job}: failed: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError) and storage.is_s3_error(exc):
        # pyarrow says which key, bucket and AWS error; the traceback adds nothing for a user
        print(f"museum-typology {job}: error: S3: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    raise


@contextlib.contextmanager
def interruptible() -> Iterator[list[Interrupted]]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the job (listed in the yielded list), so that it
    stops where it is, its unfinished outputs are cleaned up by their own ``finally`` blocks and
    the pipeline's run report says it was stopped; SIGTERM's default killed the process with no
    word. (``_spark`` puts SIGINT's back after pyspark's SparkContext set its own; a plain
    KeyboardInterrupt counts as SIGINT too.) The handlers before are put back after. Outside the
    main thread (signals cannot be handled there) nothing changes."""
    interruptions: list[Interrupted] = []
    if threading.current_thread() is not threading.main_thread():
        yield interruptions
        return

    def on_signal(signum: int, frame: Any) -> None:
        interruptions.append(Interrupted(signum, CTRL_C if signum == signal.SIGINT else signal.Signals(signum).name))
        raise interruptions[-1]

    global _on_signal
    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _on_signal = on_signal
    try:
        yield interruptions
    finally:
        _on_signal = None
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _input_errors() -> tuple[type[BaseException], ...]:
    """User errors of the jobs' own modules (imported late: they pull in pandas and pyarrow)."""
    from .score import ScoreError
    from .train_image import TrainImageError
    from .train_text import TrainTextError
    from .tune_cascade import TuneError

    return (ScoreError, TrainImageError, TrainTextError, TuneError)


def _job_errors() -> tuple[type[BaseException], ...]:
    from .errors import InternalError
    from .ingest import IngestError

    return (IngestError, InternalError)


def main_submitted(job: str, argv: Sequence[str]) -> int:
    """What ``jobs/<job>.py`` runs under spark-submit: the job, then Spark stopped here rather
    than in the JVM's shutdown hook, so a cluster records the application as finished and frees
    its executors before spark-submit returns."""
    try:
        return main([job, *argv])
    finally:
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()


if __name__ == "__main__":
    sys.exit(main())
