"""evaluate: metrics on tiny tables with F1s worked out by hand, coverage of the guid join, clear
errors, and the CLI job writing its files."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from museum_typology import cli
from museum_typology.catalogue import CsvError
from museum_typology.evaluate import NO_PREDICTION, PRED_COLUMNS, TRUTH_COLUMNS, EvaluateError, evaluate, read_table
from museum_typology.schema import CLASSES

A, B, C = CLASSES[0], CLASSES[1], CLASSES[2]  # графика, документы, живопись


def _truth() -> pd.DataFrame:
    return pd.DataFrame({"guid": ["g1", "g2", "g3", "g4", "g5"], "typology": [A, A, B, B, C]})


def _pred() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "guid": ["g1", "g2", "g3", "g4", "g5"],
            "typology": [A, B, B, B, A],
            "confidence": ["0.9", "0.6", "0.8", "0.7", "0.0"],
            "source": ["text", "text", "image", "image", "default"],
        }
    )


def _by_source(metrics: dict) -> dict[str, dict]:
    return {row["source"]: row for row in metrics["by_source"]}


def test_macro_f1_per_class_and_accuracy_by_hand():
    m = evaluate(_truth(), _pred())
    # A: TP 1 (g1), FP 1 (g5), FN 1 (g2) -> P 1/2, R 1/2, F1 1/2
    # B: TP 2 (g3, g4), FP 1 (g2), FN 0  -> P 2/3, R 1,   F1 4/5
    # C: TP 0, FN 1 (g5)                  -> F1 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["classes_scored"] == [A, B, C]
    table = {row["class"]: row for row in m["per_class"]}
    assert len(table) == 15
    assert table[A] == pytest.approx({"class": A, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2})
    assert table[B]["precision"] == pytest.approx(2 / 3) and table[B]["recall"] == 1.0 and table[B]["f1"] == pytest.approx(0.8)
    assert table[C]["f1"] == 0.0 and table[C]["support"] == 1 and table[C]["predicted"] == 0
    # A class nobody has and nobody predicts has no F1 (0 there made the table's mean disagree
    # with macro-F1, which leaves such classes out).
    assert table[CLASSES[5]] == {"class": CLASSES[5], "precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
    assert m["confusion"][0][:3] == [1, 1, 0] and m["confusion"][1][:3] == [0, 2, 0] and m["confusion"][2][:3] == [1, 0, 0]
    assert m["coverage"]["missing_from_pred"]["count"] == 0 and m["macro_f1_matched"] == pytest.approx(m["macro_f1"])


def test_by_source_rows_accuracy_and_macro_f1():
    by = _by_source(evaluate(_truth(), _pred()))
    assert list(by) == ["default", "image", "text"]
    # text: g1 A->A, g2 A->B. A: P 1, R 1/2, F1 2/3; B: FP only, F1 0 -> macro 1/3.
    assert by["text"]["rows"] == 2 and by["text"]["accuracy"] == 0.5 and by["text"]["macro_f1"] == pytest.approx(1 / 3)
    assert by["image"]["rows"] == 2 and by["image"]["accuracy"] == 1.0 and by["image"]["macro_f1"] == 1.0
    assert by["default"]["rows"] == 1 and by["default"]["accuracy"] == 0.0 and by["default"]["macro_f1"] == 0.0
    assert sum(row["share"] for row in by.values()) == pytest.approx(1.0)


def test_missing_extra_duplicate_and_guidless_rows_are_reported_not_dropped():
    truth = pd.concat([_truth(), pd.DataFrame({"guid": ["g1"], "typology": [A]})], ignore_index=True)
    pred = _pred()
    pred = pred[pred["guid"] != "g5"]
    pred = pd.concat(
        [
            pred,
            pd.DataFrame(
                {"guid": ["g2", "gX", ""], "typology": [A, A, C], "confidence": ["1", "1", "0"], "source": ["image", "text", "default"]}
            ),
        ],
        ignore_index=True,
    )
    m = evaluate(truth, pred)
    cov = m["coverage"]
    assert cov["truth_rows"] == 6 and cov["pred_rows"] == 7 and cov["scored_rows"] == 5 and cov["matched"] == 4
    assert cov["missing_from_pred"] == {"count": 1, "examples": ["g5"]}
    assert cov["not_in_truth"] == {"count": 1, "examples": ["gX"]}
    assert cov["duplicate_truth"] == {"guids": 1, "extra_rows": 1, "conflicting": 0, "examples": ["g1"]}
    assert cov["duplicate_pred"] == {"guids": 1, "extra_rows": 1, "conflicting": 1, "examples": ["g2"]}
    assert cov["pred_rows_without_guid"] == 1 and cov["truth_rows_without_guid"] == 0
    # g2's first prediction (B) is scored; g5 has none and counts as wrong: it lowers C's recall
    # (and nothing's precision). A: P 1, R 1/2 -> 2/3; B: 4/5; C: 0.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1_matched"] == pytest.approx((2 / 3 + 0.8) / 2)
    # g5 (class C) has no prediction: its row of the confusion counts says so, and sums to C's support
    from museum_typology import report

    assert m["no_prediction"] == [0, 0, 1] + [0] * (len(CLASSES) - 3)
    truth_first = [0, 0, 1, 1, 2]
    matrix, columns = report.confusion_counts(truth_first, [0, 1, 1, 1, -1])
    assert columns[-1] == report.NO_PREDICTION_COLUMN and matrix.shape == (len(CLASSES), len(CLASSES) + 1)
    assert matrix[2].sum() == 1 and matrix[2, -1] == 1 and matrix.sum(axis=1)[:3].tolist() == [2, 2, 1]
    assert report.confusion_counts([0, 1], [0, 1])[0].shape == (len(CLASSES), len(CLASSES))  # no column when all have one
    by = _by_source(m)
    assert by[NO_PREDICTION]["rows"] == 1 and by[NO_PREDICTION]["accuracy"] == 0.0
    assert sum(row["rows"] for row in by.values()) == m["rows"] == 5


def test_predictions_without_a_source_column_can_be_evaluated():
    m = evaluate(_truth(), _pred()[["guid", "typology"]])
    assert m["macro_f1"] == pytest.approx(1.3 / 3)
    assert [row["rows"] for row in m["by_source"]] == [5] and m["coverage"]["has_source"] is False


def test_whitespace_around_values_is_ignored():
    pred = _pred().assign(guid=lambda f: " " + f["guid"] + " ", typology=lambda f: f["typology"] + "  ")
    assert evaluate(_truth(), pred)["macro_f1"] == pytest.approx(1.3 / 3)


def test_unknown_class_names_the_table_row_guid_and_value():
    pred = _pred()
    pred.loc[1, "typology"] = "картина"
    with pytest.raises(EvaluateError, match=r"^predictions p\.csv: unknown typology 'картина' in 1 row\(s\) \(first: row 2, guid g2\); expected one of the 15 classes"):
        evaluate(_truth(), pred, pred_name="predictions p.csv")
    truth = _truth()
    truth.loc[4, "typology"] = ""
    with pytest.raises(EvaluateError, match=r"^truth t\.csv: unknown typology '' in 1 row\(s\) \(first: row 5, guid g5\)"):
        evaluate(truth, _pred(), truth_name="truth t.csv")


def test_an_unknown_class_in_a_csv_names_the_line_a_quoted_newline_moved(tmp_path):
    """evaluate said "row 3" where score and ingest say "row 3 (line 5)": with a title over two
    lines the row number alone sends the reader to the wrong line."""
    (tmp_path / "t.csv").write_text('guid,typology,note\ng1,графика,"две\nстроки"\n\ng2,графика,\ng3,Живопись,\n', encoding="utf-8")
    truth = read_table(str(tmp_path / "t.csv"), ("guid", "typology"), "truth")
    with pytest.raises(EvaluateError, match=r"unknown typology 'Живопись' in 1 row\(s\) \(first: row 3 \(line 6\), guid g3\)"):
        evaluate(truth, _pred(), truth_name="truth t.csv")


def test_missing_column_is_an_error():
    with pytest.raises(EvaluateError, match=r"^truth: missing column\(s\) typology \(found: guid, label\)"):
        evaluate(pd.DataFrame({"guid": ["g1"], "label": [A]}), _pred())


def test_read_table_csv_parquet_and_errors(tmp_path):
    csv_path = tmp_path / "pred.csv"
    csv_path.write_text("\ufeffGUID, Typology ,source\n001,\"" + CLASSES[9] + "\",text\nNA,графика,image\n", encoding="utf-8")
    frame = read_table(str(csv_path), ("guid", "typology"), "predictions")
    assert frame["guid"].tolist() == ["001", "NA"] and frame["typology"].tolist() == [CLASSES[9], A]
    parquet_path = tmp_path / "pred.parquet"
    _pred().to_parquet(parquet_path)
    assert read_table(str(parquet_path), ("guid", "typology"), "predictions")["source"].tolist() == _pred()["source"].tolist()

    with pytest.raises(EvaluateError, match=r"^truth .*nowhere\.csv: no such file$"):
        read_table(str(tmp_path / "nowhere.csv"), ("guid",), "truth")
    (tmp_path / "pred.txt").write_text("guid\n")
    with pytest.raises(EvaluateError, match=r"pred\.txt: unknown file type \(expected \.csv or \.parquet\)"):
        read_table(str(tmp_path / "pred.txt"), ("guid",), "predictions")
    with pytest.raises(EvaluateError, match=r"^predictions .*pred\.csv: missing column\(s\) confidence \(found: guid, typology, source\)$"):
        read_table(str(csv_path), ("guid", "confidence"), "predictions")
    (tmp_path / "bad.csv").write_bytes(b"guid,typology\n\xff,x\n")
    with pytest.raises(CsvError, match=r"^truth .*bad\.csv, line 2: not UTF-8"):
        read_table(str(tmp_path / "bad.csv"), ("guid",), "truth")


def test_a_record_with_an_extra_field_is_named_by_its_line_not_read_shifted(tmp_path):
    # pandas took the first record's extra field for an index column and shifted every column:
    # the error then blamed other rows, or every guid became the second field.
    path = tmp_path / "truth.csv"
    path.write_text(f"guid,description,typology\nt1,Монета, медь,{CLASSES[7]}\nt2,Сабля,{CLASSES[3]}\n", encoding="utf-8")
    with pytest.raises(EvaluateError, match=r"^truth .*truth\.csv, line 2: 4 fields, the header has 3$"):
        read_table(str(path), TRUTH_COLUMNS, "truth")
    path.write_text("guid,typology\nt1,x\n\n  \nt2,y\n", encoding="utf-8")  # blank lines are skipped
    assert read_table(str(path), TRUTH_COLUMNS, "truth")["guid"].tolist() == ["t1", "t2"]
    path.write_text("guid,typology\n", encoding="utf-8")
    assert read_table(str(path), TRUTH_COLUMNS, "truth").empty
    path.write_text("guid,typology,source,source\nt1,x,text,y\n", encoding="utf-8")
    with pytest.raises(EvaluateError, match=r"truth\.csv, line 1: column\(s\) source appear more than once in the header$"):
        read_table(str(path), TRUTH_COLUMNS, "truth")


def test_integer_parquet_guids_with_a_null_read_as_score_writes_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pred.parquet"
    pq.write_table(pa.table({"guid": pa.array([1, 2, None], pa.int64()), "typology": [A, A, A]}), path)
    # not "1.0" / "2.0" / "nan": an integer column with a null became floats in pandas
    assert read_table(str(path), PRED_COLUMNS, "predictions")["guid"].tolist() == ["1", "2", ""]


def test_parquet_category_columns_are_text_and_a_column_named_twice_is_refused(tmp_path):
    """pandas writes a category column as a Parquet dictionary and reads it back as a category,
    on which fillna("") raised; "guid" next to "GUID" raised an AttributeError."""
    path = tmp_path / "pred.parquet"
    pd.DataFrame({"guid": pd.Categorical(["a", "b"]), "typology": pd.Categorical([A, None])}).to_parquet(path)
    assert read_table(str(path), PRED_COLUMNS, "predictions")["typology"].tolist() == [A, ""]
    for columns, repeated in ((["guid", "GUID", "typology"], "guid"), (["guid", "typology", "source", "Source "], "source")):
        pd.DataFrame([["a", A, "text"][: len(columns) - 1] + ["b"]], columns=columns).to_parquet(path)
        with pytest.raises(EvaluateError, match=f"pred.parquet: column\\(s\\) {repeated} appear more than once \\(compared without case"):
            read_table(str(path), PRED_COLUMNS, "predictions")


def test_a_parquet_guid_column_that_cannot_be_text_is_one_error(tmp_path):
    """A decimal guid column: pyarrow's ArrowNotImplementedError (neither OSError nor ValueError) was a traceback."""
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"guid": pa.array([Decimal("1.5")], pa.decimal128(4, 1)), "typology": [A]}), tmp_path / "p.parquet")
    with pytest.raises(EvaluateError, match="p.parquet: not a readable Parquet file"):
        read_table(str(tmp_path / "p.parquet"), PRED_COLUMNS, "predictions")


def test_a_parquet_directory_is_read_file_by_file(tmp_path):
    """Read as one dataset, a later file's "GUID" came in as empty guids (its rows counted as
    unpredicted, with no error), and a file without a typology column joined as empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pred"
    folder.mkdir()
    pq.write_table(pa.table({"guid": ["g1", "g2"], "typology": [A, B], "source": ["text", "text"]}), folder / "part-0.parquet")
    # another writer's spelling, an integer guid and an all-empty column stored as Arrow's null type
    pq.write_table(pa.table({" GUID": pa.array([3], pa.int64()), "Typology": [C], "confidence": pa.array([None], pa.null())}), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    frame = read_table(str(folder), PRED_COLUMNS, "predictions").sort_values("guid")
    assert frame["guid"].tolist() == ["3", "g1", "g2"] and frame["typology"].tolist() == [C, A, B]
    assert frame["source"].tolist() == ["", "text", "text"]

    pq.write_table(pa.table({"guid": ["g4"], "label": [A]}), folder / "part-2.parquet")
    with pytest.raises(EvaluateError, match=r"^predictions .*pred: its file part-2\.parquet: missing column\(s\) typology \(found: guid, label\); every Parquet file"):
        read_table(str(folder), PRED_COLUMNS, "predictions")
    pq.write_table(pa.table({"guid": ["g4"], "Guid": ["g5"], "typology": [A]}), folder / "part-2.parquet")
    with pytest.raises(EvaluateError, match=r"its file part-2\.parquet: column\(s\) guid appear more than once"):
        read_table(str(folder), PRED_COLUMNS, "predictions")
    (folder / "part-2.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(EvaluateError, match=r"^predictions .*pred: "):
        read_table(str(folder), PRED_COLUMNS, "predictions")
    for part in folder.glob("part-*"):
        part.unlink()
    with pytest.raises(EvaluateError, match=r"^predictions .*pred: a directory without Parquet files$"):
        read_table(str(folder), PRED_COLUMNS, "predictions")


def test_a_hive_partitioned_directory_gives_its_files_their_partition_columns(tmp_path):
    """Spark's or pyarrow's partitionBy keeps the column out of the files, in the folder names;
    read file by file, every file lacked it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_to_dataset(pa.table({"guid": ["001", "g2", "g3"], "typology": [A, B, A]}), str(tmp_path / "by_class"), partition_cols=["typology"])
    frame = read_table(str(tmp_path / "by_class"), TRUTH_COLUMNS, "truth").sort_values("guid")
    assert frame["guid"].tolist() == ["001", "g2", "g3"] and frame["typology"].tolist() == [A, B, A]
    pq.write_to_dataset(pa.table({"guid": ["001", "g2"], "typology": [A, None]}), str(tmp_path / "by_guid"), partition_cols=["guid"])
    frame = read_table(str(tmp_path / "by_guid"), TRUTH_COLUMNS, "truth").sort_values("guid")
    assert frame["guid"].tolist() == ["001", "g2"] and frame["typology"].tolist() == [A, ""]  # "001", not the number 1


def test_cli_evaluate_writes_metrics_table_png_and_report(tmp_path, capsys):
    truth, pred = tmp_path / "truth.csv", tmp_path / "pred.parquet"
    _truth().to_csv(truth, index=False)
    _pred().to_parquet(pred)
    assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--work-dir", str(tmp_path / "work")]) == 0
    out = tmp_path / "work" / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "confusion.png", "metrics.json", "per_class.csv", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["macro_f1"] == pytest.approx(1.3 / 3) and metrics["truth"] == str(truth) and metrics["pred"] == str(pred)
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class.columns.tolist() == ["class", "precision", "recall", "f1", "support", "predicted"] and len(per_class) == 15
    assert per_class["f1"].notna().sum() == 3 and per_class["f1"].mean() == pytest.approx(metrics["macro_f1"])  # empty where no F1
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "**macro-F1 0.433**" in report and "| image | 2 |" in report and f"| {CLASSES[5]} | 0 | 0 | – | – | – |" in report and "![confusion](confusion.png)" in report
    stdout = capsys.readouterr().out
    assert "evaluate: macro-F1 0.433, accuracy 0.600 on 5 truth guids; by source" in stdout and "metrics.json" in stdout


def test_cli_evaluate_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    truth, pred = tmp_path / "truth.csv", tmp_path / "pred.csv"
    _truth().to_csv(truth, index=False)
    _pred().rename(columns={"typology": "label"}).to_csv(pred, index=False)
    out = tmp_path / "out"
    assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"evaluate: error: predictions {pred}: missing column(s) typology" in err
    assert not out.exists()


def test_output_directory_holding_something_else_is_refused_untouched(tmp_path, capsys):
    """evaluate replaces its output directory whole: `--output var` must not wipe a work dir."""
    truth, pred = tmp_path / "truth.csv", tmp_path / "pred.csv"
    _truth().to_csv(truth, index=False)
    _pred().to_csv(pred, index=False)
    work = tmp_path / "var"
    (work / "predictions").mkdir(parents=True)
    (work / "submission.csv").write_text("keep me")
    assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--output", str(work)]) == 2
    err = capsys.readouterr().err
    assert "not empty and not an output of evaluate" in err and "submission.csv" in err and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == ["predictions", "submission.csv"]
    out = tmp_path / "evaluation"
    for _ in range(2):  # a new directory, then its own earlier output: replaced
        assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--output", str(out)]) == 0
    assert (out / "metrics.json").exists()
    # A model bundle holds a metrics.json too: its _SUCCESS names its job now, and one written
    # before that (an empty _SUCCESS) holds files evaluate never writes. Both were wiped.
    for owner in ("train-text", ""):
        bundle = tmp_path / f"bundle-{owner or 'old'}"
        bundle.mkdir()
        for name in ("metrics.json", "calibration.json", "tfidf_folds.pkl"):
            (bundle / name).write_text("{}")
        (bundle / "_SUCCESS").write_text(owner)
        assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--output", str(bundle)]) == 2
        err = capsys.readouterr().err
        assert ("the committed output of train-text" if owner else "not an output of evaluate (it holds calibration.json, tfidf_folds.pkl") in err, err
        assert sorted(p.name for p in bundle.iterdir()) == ["_SUCCESS", "calibration.json", "metrics.json", "tfidf_folds.pkl"]
    # An input inside the output directory would be deleted with it.
    inside = out / "mine.csv"
    inside.write_bytes(pred.read_bytes())
    assert cli.main(["evaluate", "--truth", str(truth), "--pred", str(inside), "--output", str(out)]) == 2
    assert "--pred is inside the --output directory" in capsys.readouterr().err and inside.exists()


def test_rescore_history_is_read_as_each_guids_current_prediction(tmp_path):
    """Pointed at rescore's predictions/ (one partition per night), evaluate scores each guid's
    newest committed prediction, not every night's row (nor an uncommitted night)."""
    from museum_typology import rescore

    history = tmp_path / "predictions"

    def night(date: str, rows: list[tuple[str, str]], committed: bool = True) -> None:
        part = history / f"date={date}"
        part.mkdir(parents=True)
        frame = pd.DataFrame({name: [None] * len(rows) for name in rescore.PARTITION_COLUMNS})
        frame["guid"], frame["typology"] = [g for g, _ in rows], [t for _, t in rows]
        frame["source"], frame["confidence"] = "text", 0.9
        frame.astype({"guid": object}).to_parquet(part / rescore.PART_FILE)
        if committed:
            (part / "_SUCCESS").write_text("")

    night("2026-03-01", [("g1", B), ("g2", A)])
    night("2026-03-02", [("g1", A)])
    night("2026-03-03", [("g2", C)], committed=False)
    frame = read_table(str(history), ["guid", "typology"], "predictions")
    assert sorted(zip(frame["guid"], frame["typology"])) == [("g1", A), ("g2", A)]
    assert set(frame["source"]) == {"text"} and list(frame["confidence"]) == ["0.9", "0.9"]
    # Only interrupted nights: an error, not every guid scored as unpredicted.
    history = tmp_path / "interrupted"
    night("2026-03-01", [("g1", B)], committed=False)
    with pytest.raises(EvaluateError, match="none of them committed"):
        read_table(str(history), ["guid", "typology"], "predictions")


def test_of_a_repeated_guid_the_row_score_kept_as_the_one_of_record_is_scored():
    """score scores every row of a repeated guid and notes which are not the guid's row of record:
    a malformed first row (its text cut) must not be the one evaluated."""
    truth = _truth()
    pred = _pred().assign(note="")
    cut = pd.DataFrame({"guid": ["g2"], "typology": [C], "confidence": ["0.9"], "source": ["text"],
                        "note": ["in.csv row 2 (line 3): 3 fields, header has 2; duplicate guid (read without error at row 3)"]})
    pred = pd.concat([cut, pred.assign(typology=[A, A, B, B, C])], ignore_index=True)  # every row of record right
    m = evaluate(truth, pred)
    assert m["accuracy"] == 1.0 and m["coverage"]["duplicate_pred"]["conflicting"] == 1
    # without score's notes the first row is still the one scored
    assert evaluate(truth, pred.drop(columns="note"))["accuracy"] == pytest.approx(4 / 5)

