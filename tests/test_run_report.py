"""run report: one HTML page from whatever the work directory holds; absent pieces say "not run",
broken ones say why, and every string is escaped."""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest

from museum_typology import run_report
from museum_typology.run_report import Piece, build_run_report, prediction_summary, render_html

PNG = b"\x89PNG\r\n\x1a\nnot really a picture"
TEXT_VERSION = "20260101T000000Z-aaaaaaaa"


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def _work_dir(tmp_path: Path) -> Path:
    """Ingest, the text model and predictions present; image, clean, evaluate, submission absent."""
    work = tmp_path / "work"
    _write(work / "ingest" / "summary.json", json.dumps({"input_rows": 5164, "dataset_rows": 153, "manifest_rows": 5164, "reconciled": True, "status_counts": {"ok": 153, "no_image": 5011}, "input_rows_per_file": {"train.csv": 3788}, "seconds": 27.26}))
    bundle = work / "models" / "text" / TEXT_VERSION
    _write(work / "models" / "text" / "latest", TEXT_VERSION)
    metrics = {
        "macro_f1": {"baseline": 0.6218, "final": 0.6273, "bilstm": 0.5181},
        "ece": {"before_calibration": 0.0585, "after_calibration": 0.0369},
        "confidence_0_7": {"threshold": 0.7, "share_above": 0.6436, "accuracy_above": 0.8907},
        "per_class": [{"class": "скульптура", "support": 16, "baseline_f1": 0.2667, "f1": 0.2712, "precision": 0.29, "recall": 0.25}],
        "rows": 3808,
        "folds": 5,
    }
    _write(bundle / "metrics.json", json.dumps(metrics, ensure_ascii=False))
    _write(bundle / "report" / "confusion.png", PNG)
    _write(bundle / "report" / "report.md", "# text")
    _write(
        work / "predictions" / "test.csv",
        "guid,typology,confidence,source,model_version,note\n"
        "g1,графика,0.9,text,v,\ng2,графика,0.7,image,v,\ng3,фотографии и негативы,0.0,default,v,no description\ng4,документы,0.5,text,v,\n",
    )
    return work


def _text(page: str) -> str:
    """The page's visible text, one space between cells."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.S)).split()))


def test_present_pieces_are_shown_and_absent_ones_say_not_run(tmp_path):
    work = _work_dir(tmp_path)
    url = build_run_report(str(work), {"ingest": 27.3, "train-text": 941.8}, {"score": {"test": str(work / "predictions" / "test.csv")}})
    assert url == str(work / "report" / "index.html")
    page = (work / "report" / "index.html").read_text(encoding="utf-8")
    text = _text(page)
    assert "input rows / images stored 5164 / 153" in text
    assert "text model: out-of-fold macro-F1 0.627" in text and "the model (calibrated) 0.627" in text and "baseline: char+word TF-IDF + LinearSVC 0.622" in text
    assert "скульптура 16 0.267 0.271" in text and "rows with confidence ≥ 0.7 64.4%" in text
    assert "ingest 27.3 0.5 2.8% train-text 941.8 15.7 97.2% total 969.1" in text
    assert "test.csv: 4 rows" in text and "text 2 50.0% 0.700" in text and "default 1 25.0% 0.000" in text
    for section in ("Image model", "Label cleaning", "Evaluation", "Submission"):
        assert re.search(rf"<h2>{section}</h2>\s*<p class=\"missing\">not run", page), section
    assert "image model: out-of-fold macro-F1 not run" in text and "submission: rows not run" in text
    # The text model's PNG is copied next to the page and shown from there.
    assert (work / "report" / "text-confusion.png").read_bytes() == PNG
    # after train-image --final its bundle is latest: its figure is a validation one, said so
    image = work / "models" / "image" / "20260101T000000Z-bbbbbbbb-final"
    _write(work / "models" / "image" / "latest", image.name)
    _write(image / "metrics.json", json.dumps({"mode": "final", "validation_macro_f1": 0.412, "rows": 153}))
    build_run_report(str(work), {}, {})
    text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    assert "image model (--final): validation macro-F1 0.412" in text and "image model: out-of-fold" not in text
    assert 'src="text-confusion.png"' in page
    assert sorted(p.name for p in (work / "report").iterdir()) == ["_SUCCESS", "index.html", "text-confusion.png"]


def test_clean_evaluate_and_submission_when_present(tmp_path):
    work = _work_dir(tmp_path)
    _write(work / "clean" / "review" / "index.html", "<html>review</html>")
    clean_summary = {
        "rows": 3808,
        "actions": {"keep": 3700, "relabel": 80, "drop": 28},
        "suspected": 150,
        "per_class": [{"class": "графика", "rows": 282, "suspected": 12, "kept": 270, "relabelled": 9, "dropped": 3, "relabelled_into": 4}],
        "suspicious_clusters": [{"scope": "text", "cluster": 7, "size": 30, "dominant_predicted": "документы", "purity": 0.9}],
    }
    _write(work / "clean" / "summary.json", json.dumps(clean_summary, ensure_ascii=False))
    _write(work / "evaluate" / "metrics.json", json.dumps({"macro_f1": 0.5123, "accuracy": 0.7, "rows": 10, "by_source": [{"source": "blend", "rows": 4, "share": 0.4, "accuracy": 0.75, "macro_f1": 0.6}], "coverage": {"missing_from_pred": {"count": 2}}}))
    _write(work / "evaluate" / "confusion.png", PNG)
    _write(work / "submission.csv", "guid,typology\ng1,графика\ng2,документы\n")
    build_run_report(str(work), {}, {})
    page = (work / "report" / "index.html").read_text(encoding="utf-8")
    text = _text(page)
    assert '<a href="../clean/review/index.html">' in page
    assert "action: relabel 80" in text and "suspicious clusters 1" in text
    assert "графика 282 12 270 9 3 4" in text and "text 7 30 документы 0.900" in text
    assert "evaluation: macro-F1 0.512" in text and "blend 4 40.0% 0.750 0.600" in text and "(scored as wrong) 2" in text
    assert (work / "report" / "evaluate-confusion.png").is_file()
    assert '<a href="../submission.csv">' in page and "submission: rows 2" in text
    assert "no stage timings recorded" in text and "no outputs reported" in text


def test_an_earlier_evaluation_of_other_predictions_is_marked_in_a_pipeline_report(tmp_path):
    """The pipeline does not evaluate; an evaluation left by a manual run of other predictions
    must not pass for this run's (its own predictions, or a report outside the pipeline: shown)."""
    work = _work_dir(tmp_path)
    _write(work / "evaluate" / "metrics.json", json.dumps({"macro_f1": 0.91, "pred": "old/predictions.csv", "rows": 5}))
    build_run_report(str(work), {}, {"score": {"output": str(work / "predictions" / "test.csv")}})
    text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    assert "evaluation: macro-F1 0.910 (an earlier run's, not of this run's predictions)" in text
    assert "from an earlier evaluate run, of old/predictions.csv" in text
    # Of this run's predictions file, or a report outside the pipeline: shown as it is.
    predictions = work / "predictions" / "test.csv"
    _write(predictions, "guid,typology\n")
    os.utime(predictions, (1_000_000_000, 1_000_000_000))  # written before the evaluation
    _write(work / "evaluate" / "metrics.json", json.dumps({"macro_f1": 0.91, "pred": str(predictions), "rows": 5}))
    for outputs in ({"score": {"test": str(predictions)}}, {}):
        build_run_report(str(work), {}, outputs)
        text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
        assert "evaluation: macro-F1 0.910 " in text + " " and "an earlier run's" not in text and "earlier evaluate run" not in text
    # The pipeline rewrote that file after the evaluation: stale again.
    os.utime(predictions, None)
    os.utime(work / "evaluate" / "metrics.json", (1_000_000_000, 1_000_000_000))
    build_run_report(str(work), {}, {"score": {"test": str(predictions)}})
    assert "not of this run's predictions" in _text((work / "report" / "index.html").read_text(encoding="utf-8"))


def test_a_stopped_runs_report_says_so_and_marks_the_stages_it_did_not_finish(tmp_path):
    """A pipeline whose train-text failed left the previous run's report in place, read as this
    run's; and the work directory still holds an earlier run's text model and predictions."""
    work = _work_dir(tmp_path)
    outputs = {"ingest": {"summary": str(work / "ingest" / "summary.json")}, "train-image": {"bundle": "b"}}
    build_run_report(str(work), {"ingest": 1.0, "train-image": 2.0, "train-text": 3.0}, outputs, stopped="its train-text stage failed: <no labelled rows>")
    page = (work / "report" / "index.html").read_text(encoding="utf-8")
    text = _text(page)
    assert "This run stopped: its train-text stage failed: <no labelled rows>." in text and "&lt;no labelled rows&gt;" in page
    assert "input rows / images stored 5164 / 153" in text and "input rows / images stored 5164 / 153 (an earlier run's)" not in text
    assert "text model: out-of-fold macro-F1 0.627 (an earlier run's)" in text
    assert "from an earlier run: this run stopped before its train-text stage finished" in text
    assert "from an earlier run: this run stopped before its score stage finished" in text
    assert "image model: out-of-fold macro-F1 not run" in text  # nothing found is not marked
    # A finished run's report says none of it.
    build_run_report(str(work), {}, outputs)
    text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    assert "This run stopped" not in text and "earlier run" not in text


def test_a_broken_piece_says_why_and_the_rest_is_still_written(tmp_path):
    work = _work_dir(tmp_path)
    _write(work / "ingest" / "summary.json", "{not json")
    build_run_report(str(work), {"score": 1.0}, {})
    text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    assert "could not be read:" in text and "summary.json: not valid JSON" in text
    assert "text model: out-of-fold macro-F1 0.627" in text


def test_a_rerun_replaces_the_report_whole(tmp_path):
    work = _work_dir(tmp_path)
    build_run_report(str(work), {}, {})
    (work / "models" / "text" / "latest").unlink()
    build_run_report(str(work), {}, {})
    assert not (work / "report" / "text-confusion.png").exists()
    assert "text model: out-of-fold macro-F1 not run" in _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    (work / "models" / "text" / "latest").write_bytes(b"\xff\xfe")  # damaged: was a UnicodeDecodeError, and no report
    build_run_report(str(work), {}, {})
    assert "latest: damaged (it should hold the name of a bundle folder beside it)" in _text((work / "report" / "index.html").read_text(encoding="utf-8"))


def test_an_unknown_clean_summary_shape_is_shown_generically(tmp_path):
    work = _work_dir(tmp_path)
    _write(work / "clean" / "summary.json", json.dumps({"rows": 12, "by_class": {"графика": {"keep": 10, "drop": 2}}, "notes": ["a", "b"]}, ensure_ascii=False))
    build_run_report(str(work), {}, {})
    text = _text((work / "report" / "index.html").read_text(encoding="utf-8"))
    assert "no review page" in text and "rows 12" in text and "by_class keep drop графика 10 2" in text and '["a", "b"]' in text


def test_html_is_escaped(tmp_path):
    work = _work_dir(tmp_path)
    _write(work / "clean" / "summary.json", json.dumps({"note": "<b>bold</b> & <script>alert(2)</script>"}))
    build_run_report(str(work), {"<img src=x onerror=alert(3)>": 1.0}, {"score": {"<i>": "a\"b<c"}}, title="<script>alert(1)</script> run")
    page = (work / "report" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page and "<i>" not in page
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt; run</title>" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "a&quot;b&lt;c" in page


def test_render_is_pure_and_handles_no_pieces_at_all():
    page = render_html("run", {}, {}, {}, "var", "2026-01-01 00:00:00 UTC")
    assert page.count('class="missing">not run') == 7
    assert page == render_html("run", {}, {}, {}, "var", "2026-01-01 00:00:00 UTC")
    assert "generated 2026-01-01 00:00:00 UTC" in page


def test_piece_errors_render_without_data():
    page = render_html("run", {"image": Piece("x", error="boom <here>")}, {}, {}, "var", "now")
    assert "could not be read: boom &lt;here&gt;" in page


def test_prediction_summary_counts_sources_and_classes():
    import pandas as pd

    frame = pd.DataFrame({"guid": ["a", "b", "c"], "typology": ["графика", "графика", "документы"], "confidence": ["0.5", "x", "1.0"], "source": ["text", "text", "blend"]})
    summary = prediction_summary(frame)
    assert summary["rows"] == 3
    assert summary["by_source"] == [
        {"source": "blend", "rows": 1, "share": pytest.approx(1 / 3), "mean_confidence": 1.0},
        {"source": "text", "rows": 2, "share": pytest.approx(2 / 3), "mean_confidence": 0.5},
    ]
    assert summary["by_class"] == [{"typology": "графика", "rows": 2}, {"typology": "документы", "rows": 1}]
    assert run_report.prediction_summary(frame[["guid", "typology"]])["by_source"][0]["source"] == "(no source column)"


@pytest.fixture
def s3_bucket(fresh_bucket, moto_endpoint):
    """A moto S3 server on 127.0.0.1 with an empty bucket; fake credentials for this test only."""
    client, _bucket = fresh_bucket
    return client, moto_endpoint


def test_evaluate_submission_and_report_on_s3(s3_bucket, tmp_path):
    """The three run on an s3:// work directory: inputs read through storage, outputs committed."""
    from museum_typology import evaluate, submission
    from museum_typology.config import load_settings

    client, endpoint = s3_bucket
    local = _work_dir(tmp_path)
    for path in local.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="museum", Key="work/" + path.relative_to(local).as_posix(), Body=path.read_bytes())
    client.put_object(Bucket="museum", Key="data/sample_submission.csv", Body=b"guid,typology\ng4,empty\ng1,empty\ng2,empty\ng3,empty\n")
    client.put_object(Bucket="museum", Key="truth.csv", Body="guid,typology\ng1,графика\ng2,документы\ng3,фотографии и негативы\n".encode())
    settings = load_settings(overrides=[f"s3.endpoint_url={endpoint}", "paths.data=s3://museum/data"], environ={})
    work = "s3://museum/work"

    result = evaluate.run(settings, "s3://museum/truth.csv", f"{work}/predictions/test.csv", f"{work}/evaluate")
    assert result["metrics"]["accuracy"] == pytest.approx(2 / 3) and result["metrics"]["coverage"]["not_in_truth"]["count"] == 1
    sub = submission.run(settings, f"{work}/predictions/test.csv", f"{work}/submission.csv")
    assert sub["rows"] == 4 and sub["order_from"] == "s3://museum/data/sample_submission.csv"
    from museum_typology.storage import S3Options

    url = build_run_report(work, {"score": 2.0}, {"score": {"test": f"{work}/predictions/test.csv"}}, S3Options.from_settings(settings.section("s3")))
    assert url == f"{work}/report/index.html"

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="museum", Prefix="work/")["Contents"])
    assert {"work/evaluate/metrics.json", "work/evaluate/confusion.png", "work/evaluate/_SUCCESS", "work/report/index.html", "work/report/_SUCCESS", "work/report/evaluate-confusion.png", "work/report/text-confusion.png"} <= set(keys)
    assert [k for k in keys if ".tmp-" in k] == []
    page = client.get_object(Bucket="museum", Key="work/report/index.html")["Body"].read().decode()
    assert "evaluation: macro-F1" in _text(page) and "submission: rows 4" in _text(page) and '<a href="../submission.csv">' in page
    assert client.get_object(Bucket="museum", Key="work/submission.csv")["Body"].read().decode().splitlines()[1] == "g4,документы"
