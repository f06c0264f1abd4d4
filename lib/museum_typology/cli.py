"""The one console script: ``museum-typology <job> [options]``.

``jobs/<job>.py`` (what spark-submit runs) calls ``main`` with the same arguments, so a job runs
the same way in-process on local Spark and on a cluster.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__, storage
from .catalogue import CsvError
from .config import ConfigError, Settings, load_settings
from .log import get_logger, setup_logging

log = get_logger("museum_typology")

# Errors that mean "bad input or settings": one clear line, exit code 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CsvError, ConfigError, storage.StorageError)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", metavar="FILE", help="settings file (TOML) over conf/default.toml")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help="override one setting, e.g. images.max_side=384 (repeatable)"
    )
    parser.add_argument("--data", metavar="DIR", help="input data directory or s3:// prefix (default: paths.data, $MUSEUM_DATA)")
    parser.add_argument("--work-dir", metavar="DIR", help="root of outputs (default: paths.work_dir, $MUSEUM_WORK_DIR)")
    parser.add_argument("--master", help="Spark master (default: spark.master, or spark-submit's)")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.conf, args.overrides)
    if args.data:
        settings = settings.set(["paths", "data"], args.data, "--data")
    if args.work_dir:
        settings = settings.set(["paths", "work_dir"], args.work_dir, "--work-dir")
    return settings


def _spark(settings: Settings, args: argparse.Namespace, job: str):
    from .session import build_spark

    return build_spark(settings, job, master=args.master)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import ingest

    output = args.output or storage.join(settings.get("paths.work_dir"), "ingest")
    spark = _spark(settings, args, "ingest")
    summary = ingest.run(spark, settings, settings.get("paths.data"), output)
    print(f"ingest: {summary['dataset_rows']} images decoded; manifest rows {summary['manifest_rows']} = input rows {summary['input_rows']} ({_counts(summary)})")
    print(f"  dataset:  {storage.join(output, 'dataset')}")
    print(f"  manifest: {storage.join(output, 'manifest.parquet')}")
    print(f"  summary:  {storage.join(output, 'summary.json')}")
    return summary


def cmd_crawl(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import crawl

    output = args.output or storage.join(settings.get("paths.work_dir"), "crawl")
    spark = _spark(settings, args, "crawl")
    if args.plan_only:
        plan = crawl.describe_plan(settings, args.input, spark.sparkContext.defaultParallelism)
        print(json.dumps(plan, ensure_ascii=False, indent=2))
        return plan
    summary = crawl.run(spark, settings, args.input, output, resume=args.resume)
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
    parser.add_argument("--resume", action="store_true", help="finish an interrupted crawl into the same --output, fetching only what is not stored yet")
    parser.add_argument("--plan-only", action="store_true", help="print the plan (rows, distinct URLs, partitions, chunks, per-task limits) and fetch nothing")


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Every stage that exists, end to end; prints where each output went."""
    from . import ingest, score, train_image, train_text

    work_dir = settings.get("paths.work_dir")
    spark = _spark(settings, args, "pipeline")
    outputs: dict[str, dict[str, str]] = {}
    ingest_dir = storage.join(work_dir, "ingest")
    summary = ingest.run(spark, settings, settings.get("paths.data"), ingest_dir)
    outputs["ingest"] = {
        "dataset": storage.join(ingest_dir, "dataset"),
        "manifest": storage.join(ingest_dir, "manifest.parquet"),
        "summary": storage.join(ingest_dir, "summary.json"),
    }
    image = train_image.run(spark, settings, outputs["ingest"]["dataset"], _models_dir(settings, "image"), storage.join(work_dir, "oof", "image.parquet"))
    outputs["train-image"] = {name: image[name] for name in ("bundle", "oof", "report") if name in image}
    text = train_text.run(settings, settings.get("paths.data"), _models_dir(settings, "text"), storage.join(work_dir, "oof", "text.parquet"))
    outputs["train-text"] = {"bundle": text["bundle"], "oof": text["oof"], "report": text["report"]}
    test_csv = storage.join(settings.get("paths.data"), settings.get("ingest.test_csv"))
    predictions = storage.join(work_dir, "predictions", "test_text.csv")
    scored = score.run(settings, test_csv, predictions, _models_dir(settings, "text"))
    outputs["score"] = {"test": predictions}
    print(
        f"pipeline finished. ingest: {summary['dataset_rows']} images decoded, {summary['input_rows']} rows reconciled ({_counts(summary)}); "
        f"image folds out-of-fold macro-F1 {image['metrics']['macro_f1']:.3f}; "
        f"text model out-of-fold macro-F1 {text['metrics']['macro_f1']['final']:.3f} (baseline {text['metrics']['macro_f1']['baseline']:.3f}); "
        f"{scored['rows']} test rows scored"
    )
    print("outputs:")
    for stage, paths in outputs.items():
        for name, path in paths.items():
            print(f"  {stage:11s} {name:9s} {path}")
    return outputs


def _print_paths(result: dict[str, Any], names: tuple[str, ...] = ("bundle", "oof", "report")) -> None:
    for name in names:
        if name in result:
            print(f"  {name + ':':8s} {result[name]}")


def _models_dir(settings: Settings, kind: str) -> str:
    return storage.join(settings.get("paths.work_dir"), "models", kind)


def cmd_train_text(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import train_text

    result = train_text.run(
        settings,
        settings.get("paths.data"),
        args.model_dir or _models_dir(settings, "text"),
        args.oof or storage.join(settings.get("paths.work_dir"), "oof", "text.parquet"),
        folds=args.folds,
    )
    macro = result["metrics"]["macro_f1"]
    print(f"train-text: out-of-fold macro-F1 {macro['final']:.3f} (baseline {macro['baseline']:.3f}, tfidf {macro['tfidf']:.3f}, bilstm {macro['bilstm']:.3f})")
    _print_paths(result)
    return result


def _train_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", metavar="DIR", help="where bundles go (default: WORK_DIR/models/text)")
    parser.add_argument("--oof", metavar="FILE", help="out-of-fold probabilities (default: WORK_DIR/oof/text.parquet)")
    parser.add_argument("--folds", type=int, metavar="K", help="number of folds (default: text.folds)")


def cmd_score(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from . import score

    result = score.run(settings, args.input, args.output, args.model or _models_dir(settings, "text"))
    print(f"score: {result['rows']} rows scored with text bundle {result['model_version']} ({result['sources']}) -> {result['output']}")
    return result


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="CSV", help="rows to score: guid,description[,...]")
    parser.add_argument("--output", required=True, metavar="CSV", help="guid,typology,confidence,source,model_version,note")
    parser.add_argument("--model", metavar="DIR", help="a bundle, or a models directory whose newest bundle is used (default: WORK_DIR/models/text)")


def cmd_show_conf(args: argparse.Namespace, settings: Settings) -> None:
    print(json.dumps(settings.values, ensure_ascii=False, indent=2))


def _counts(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items()))


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR", help="output directory (default: WORK_DIR/ingest)")


def cmd_train_image(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Image model with Horovod on Spark: K fold models + out-of-fold probabilities, or --final."""
    from . import train_image

    work_dir = settings.get("paths.work_dir")
    spark = _spark(settings, args, "train-image")
    result = train_image.run(
        spark,
        settings,
        args.dataset or storage.join(work_dir, "ingest", "dataset"),
        args.model_dir or storage.join(work_dir, "models", "image"),
        storage.join(work_dir, "oof", "image.parquet"),
        folds=args.folds,
        num_proc=args.num_proc,
        final=args.final,
        manifest=args.manifest,
    )
    metrics = result["metrics"]
    if args.final:
        print(f"train-image --final: validation macro-F1 {metrics['validation_macro_f1']:.3f} (best epoch {metrics['best_epoch'] + 1} of {metrics['epochs_run']}, {metrics['processes']} processes)")
    else:
        print(f"train-image: out-of-fold macro-F1 {metrics['macro_f1']:.3f} on {metrics['rows']} labelled images ({metrics['folds']} folds, {metrics['processes']} processes)")
    _print_paths(result)
    return result


def _train_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", metavar="DIR", help="petastorm dataset (default: WORK_DIR/ingest/dataset)")
    parser.add_argument("--model-dir", metavar="DIR", help="where bundles go (default: WORK_DIR/models/image)")
    parser.add_argument("--folds", type=int, metavar="K", help="number of stratified folds (default: image.folds)")
    parser.add_argument("--num-proc", type=int, metavar="N", help="Horovod processes, one Spark task each (default: image.num_proc, 0 = Spark's parallelism)")
    parser.add_argument("--final", action="store_true", help="fine-tune the upper blocks on all labelled images (a stratified fold validates)")
    parser.add_argument("--manifest", metavar="PARQUET", help="cleaned manifest (guid, typology[, keep]) whose labels replace the dataset's")


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


# The jobs, in pipeline order. A new job adds one entry here and one file in jobs/.
JOBS: dict[str, Job] = {
    "ingest": Job("CSVs + images -> petastorm dataset and manifest", cmd_ingest, _ingest_arguments),
    "crawl": Job("URL CSV -> fetched images as a petastorm dataset and manifest (resumable)", cmd_crawl, _crawl_arguments),
    "train-text": Job("cross-validated text model: bundle, out-of-fold probabilities, report", cmd_train_text, _train_text_arguments),
    "score": Job("classify the rows of a CSV with the newest text bundle", cmd_score, _score_arguments),
    "train-image": Job("image model with Horovod on Spark: fold models + out-of-fold probabilities, or --final", cmd_train_image, _train_image_arguments),
    "evaluate": Job("predictions against known labels: macro-F1, per-class table, confusion matrix, by source", cmd_evaluate, _evaluate_arguments),
    "pipeline": Job("run every stage end to end on the configured data", cmd_pipeline),
    "show-conf": Job("print the resolved settings as JSON", cmd_show_conf),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="museum-typology", description="Sort Goskatalog items into their 15 typologies with Spark jobs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, job in JOBS.items():
        job_parser = sub.add_parser(name, help=job.help, description=job.help)
        _common(job_parser)
        job.add_arguments(job_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        JOBS[args.job].run(args, _settings(args))
        return 0
    except USER_ERRORS as exc:
        print(f"museum-typology {args.job}: error: {exc}", file=sys.stderr)
        return 2
    except _job_errors() as exc:
        print(f"museum-typology {args.job}: failed: {exc}", file=sys.stderr)
        return 1


def _job_errors() -> tuple[type[BaseException], ...]:
    from .ingest import IngestError
    from .train_image import TrainImageError

    return (IngestError, TrainImageError)


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
