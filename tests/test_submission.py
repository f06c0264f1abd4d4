"""submission: the sample's guid order kept, every guid exactly once, never filled in silently."""
from __future__ import annotations

import pandas as pd
import pytest

from museum_typology.config import load_settings
from museum_typology.submission import SubmissionError, build_submission, run, to_csv

A, B, C = "графика", "документы", "предметы прикладного искусства, быта и этнографии"


def _pred(guids, classes) -> pd.DataFrame:
    return pd.DataFrame({"guid": guids, "typology": classes, "confidence": 0.5, "source": "text"})


def test_order_of_the_sample_is_kept_and_extra_columns_and_rows_left_out():
    pred = _pred(["g3", "g1", "x9", "g2", ""], [C, A, B, B, A])
    frame = build_submission(pred, ["g1", "g2", "g3"])
    assert frame.columns.tolist() == ["guid", "typology"]
    assert frame.values.tolist() == [["g1", A], ["g2", B], ["g3", C]]


def test_a_repeated_prediction_with_the_same_class_is_fine():
    frame = build_submission(_pred(["g1", "g1", " g2 "], [A, A, B]), ["g2", "g1"])
    assert frame.values.tolist() == [["g2", B], ["g1", A]]


def test_missing_guids_are_an_error_with_a_count_and_examples():
    pred = _pred(["g1"], [A])
    order = ["g1"] + [f"m{i}" for i in range(7)]
    with pytest.raises(SubmissionError, match=r"^predictions: 7 of the 8 guids of the sample submission have no prediction, e\.g\. m0, m1, m2, m3, m4 …$"):
        build_submission(pred, order)


def test_conflicting_unknown_and_duplicate_order_are_errors():
    with pytest.raises(SubmissionError, match=r"1 guid\(s\) predicted twice with different classes, e\.g\. g1"):
        build_submission(_pred(["g1", "g1"], [A, B]), ["g1"])
    with pytest.raises(SubmissionError, match=r"1 prediction\(s\) with a class outside the 15, e\.g\. g1: 'empty'"):
        build_submission(_pred(["g1"], ["empty"]), ["g1"])
    with pytest.raises(SubmissionError, match=r"1 prediction\(s\) with a class outside the 15, e\.g\. g9: 'empty'"):  # outside the order too
        build_submission(_pred(["g1", "g9"], [A, "empty"]), ["g1"])
    with pytest.raises(SubmissionError, match=r"^sample submission: 1 guid\(s\) listed more than once, e\.g\. g1$"):
        build_submission(_pred(["g1"], [A]), ["g1", "g1"])
    with pytest.raises(SubmissionError, match=r"^sample submission: 1 row\(s\) without a guid$"):
        build_submission(_pred(["g1"], [A]), ["g1", " "])


def test_a_guid_the_score_job_scored_twice_takes_its_row_of_record():
    """test.csv with a guid twice under two titles: score scores both rows and notes the repeat
    (evaluate reads the row of record); the submission refused the guid as predicted twice with
    different classes, failing the pipeline at its last step."""
    pred = _pred(["g1", "g2", "g1", "g1"], [B, A, A, C]).assign(note=["duplicate guid (first at row 2)", "", "", "duplicate guid (first at row 2)"])
    assert build_submission(pred, ["g1", "g2"]).values.tolist() == [["g1", A], ["g2", A]]
    # without the score job's notes, or between rows it did not mark, a conflict is still an error
    with pytest.raises(SubmissionError, match="predicted twice with different classes"):
        build_submission(pred.drop(columns="note"), ["g1", "g2"])
    with pytest.raises(SubmissionError, match="predicted twice with different classes"):
        build_submission(pd.concat([pred, pred.assign(typology=C)]), ["g1", "g2"])


def test_csv_quotes_a_class_with_a_comma():
    assert to_csv(build_submission(_pred(["g1", "g2"], [A, C]), ["g1", "g2"])).decode("utf-8") == f'guid,typology\ng1,{A}\ng2,"{C}"\n'


def test_run_uses_the_sample_order_or_test_csv_when_there_is_no_sample(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.csv").write_text("guid,description,typology\ng2,x,\ng1,,\n", encoding="utf-8")
    predictions = tmp_path / "pred.csv"
    predictions.write_text(f"guid,typology,confidence,source,model_version,note\ng1,{A},0.9,text,v,\ng2,{B},0.0,default,v,no description\ng9,{A},1,text,v,\n", encoding="utf-8")
    settings = load_settings(overrides=[f"paths.data={data}"], environ={})

    result = run(settings, str(predictions), str(tmp_path / "out" / "submission.csv"))
    assert result["order_from"] == str(data / "test.csv") and result["rows"] == 2 and result["predictions_not_in_order"] == 1
    assert (tmp_path / "out" / "submission.csv").read_text(encoding="utf-8") == f"guid,typology\ng2,{B}\ng1,{A}\n"

    (data / "sample_submission.csv").write_text("guid,typology\ng1,empty\ng2,empty\n", encoding="utf-8")
    result = run(settings, str(predictions), str(tmp_path / "out" / "submission.csv"))
    assert result["order_from"] == str(data / "sample_submission.csv")
    assert (tmp_path / "out" / "submission.csv").read_text(encoding="utf-8") == f"guid,typology\ng1,{A}\ng2,{B}\n"

    (data / "sample_submission.csv").write_text("guid,typology\ng1,empty\ng2,empty\ng3,empty\n", encoding="utf-8")
    with pytest.raises(SubmissionError, match=r"1 of the 3 guids of the guid order .*sample_submission\.csv have no prediction, e\.g\. g3"):
        run(settings, str(predictions), str(tmp_path / "out" / "submission.csv"))
    # The failed run left the previous submission as it was.
    assert (tmp_path / "out" / "submission.csv").read_text(encoding="utf-8") == f"guid,typology\ng1,{A}\ng2,{B}\n"


def test_a_submission_never_overwrites_its_inputs_and_is_a_csv(tmp_path):
    """run(settings, "p.csv", "p.csv") rewrote the predictions as guid,typology (their other
    columns and rows gone), and an output named .parquet held CSV text."""
    predictions, order = tmp_path / "pred.csv", tmp_path / "order.csv"
    predictions.write_text(f"guid,typology,confidence,source,model_version,note\ng1,{A},0.9,text,v,\n", encoding="utf-8")
    order.write_text("guid\ng1\n", encoding="utf-8")
    settings = load_settings(overrides=[f"paths.data={tmp_path}"], environ={})
    before = {path: path.read_bytes() for path in (predictions, order)}
    for output, message in ((predictions, "overwrite its predictions file"), (order, "overwrite its guid order file"), (tmp_path / "out.parquet", "a submission is a CSV file")):
        with pytest.raises(SubmissionError, match=message):
            run(settings, str(predictions), str(output), str(order))
    assert {path: path.read_bytes() for path in (predictions, order)} == before and not (tmp_path / "out.parquet").exists()


def test_shared_sample_submission_with_every_guid(shared_data, tmp_path):
    """The shared sample and test.csv list the same 1,223 guids: a prediction for each makes a
    complete submission in the sample's order."""
    sample = pd.read_csv(shared_data / "sample_submission.csv", dtype=str)
    test = pd.read_csv(shared_data / "test.csv", dtype=str, keep_default_na=False)
    assert len(sample) == 1223 and set(sample["guid"]) == set(test["guid"])
    frame = build_submission(_pred(test["guid"][::-1].tolist(), [A] * len(test)), sample["guid"].tolist())
    assert frame["guid"].tolist() == sample["guid"].tolist()
