"""The nightly rescore job on Spark with stand-in models: night 1 scores everything, a later night
only what changed (with the reason), a model change everything, a re-run of the same night
changes nothing; clear errors for unusable arguments.

The stand-in models (keyword and colour rules, as in test_score.py) are shipped to the executors
by value with cloudpickle."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark import cloudpickle

from museum_typology import cli, rescore, score, storage
from museum_typology.catalogue import InputRow
from museum_typology.schema import CLASSES

K = len(CLASSES)
COIN, SWORD, PAINTING, BOOK = CLASSES.index("предметы нумизматики"), CLASSES.index("оружие"), CLASSES.index("живопись"), CLASSES.index("редкие книги")


def _proba(label: int, top: float) -> list[float]:
    row = [(1.0 - top) / (K - 1)] * K
    row[label] = top
    return row


class KeywordText:
    """монета -> нумизматика (0.9), сабля -> оружие (0.9), anything else -> редкие книги (0.5)."""

    def predict_proba(self, texts, batch_size=0):
        return [_proba(COIN, 0.9) if "монета" in t else _proba(SWORD, 0.9) if "сабля" in t else _proba(BOOK, 0.5) for t in texts]


class ColourImage:
    """Red images -> живопись (0.95), others -> редкие книги (0.65)."""

    def predict_proba(self, images, batch_size=0):
        return [_proba(PAINTING, 0.95) if p[..., 0].mean() > p[..., 2].mean() + 50 else _proba(BOOK, 0.65) for p in images]


def stand_in(spec):
    return score.Scorer(spec, KeywordText(), ColourImage())


def must_not_score(spec):
    raise AssertionError("nothing should be scored")


cloudpickle.register_pickle_by_value(sys.modules[__name__])


def spec(text="models/text/v1") -> score.ScorerSpec:
    cascade = {"t_text": 0.7, "t_image": 0.7, "w_text": 0.5, "default_class": CLASSES[14]}
    return score.ScorerSpec(text, "models/image/v2", tuple(sorted(cascade.items())), "conf")


RED, BLUE = (220, 10, 10), (10, 10, 220)


def jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def write_catalogue(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("guid", "description", "typology"))
        writer.writerows(rows)


NIGHT1 = [
    ("a", "Монета. Копейка 1799 г.", ""),  # text, red image
    ("b", "Сабля казачья", ""),  # text only
    ("c", "", ""),  # image only (blue)
    ("d", "Книга", ""),  # text only
    ("", "без guid", ""),  # not scored: empty guid
    ("a", "Монета вторая", ""),  # not scored: duplicate guid
]


@pytest.fixture
def night1(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(RED))
    (images / "c").write_bytes(jpeg(BLUE))
    write_catalogue(tmp_path / "catalogue.csv", NIGHT1)
    return tmp_path


def run(spark, settings, root, date, factory=stand_in, model=None, **kwargs):
    return rescore.run(
        spark, settings, str(root / "catalogue.csv"), str(root / "predictions"), model or spec(), date=date,
        images_dir=str(root / "images"), factory=factory, **kwargs,
    )


def partition(root, date) -> pd.DataFrame:
    return pd.read_parquet(root / "predictions" / f"date={date}" / rescore.PART_FILE)


def snapshot(directory):
    return {name: ((directory / name).read_bytes(), os.stat(directory / name).st_mtime_ns) for name in sorted(os.listdir(directory))}


def test_nights_score_only_what_changed_and_a_rerun_changes_nothing(spark, settings, night1):
    root = night1
    first = run(spark, settings, root, "2026-03-01")
    got = partition(root, "2026-03-01")
    assert list(got.columns) == list(rescore.PARTITION_COLUMNS)
    assert list(got["guid"]) == ["a", "b", "c", "d"] and set(got["reason"]) == {"new"}
    assert list(got["typology"]) == [CLASSES[COIN], CLASSES[SWORD], CLASSES[BOOK], CLASSES[BOOK]]
    assert got.loc[0, "image_sha256"] is not None and got.loc[1, "image_sha256"] is None
    assert first["rows"] == 6 and first["rescored"] == 4 and first["unchanged"] == 0
    assert first["not_scored"] == {"empty guid": 1, "unusable guid": 0, "duplicate guid": 1}
    assert "catalogue.csv row 6: duplicate guid a (first at catalogue.csv row 1)" in first["not_scored_examples"]
    # every row not scored is recorded with why, not just counted (the summary keeps 20 examples)
    skipped = pd.read_parquet(root / "predictions" / "date=2026-03-01" / rescore.NOT_SCORED_FILE)
    assert skipped.to_dict("records") == [
        {"source_file": "catalogue.csv", "source_row": 5, "guid": None, "kind": "empty guid", "message": "catalogue.csv row 5 (line 6): empty guid"},
        {"source_file": "catalogue.csv", "source_row": 6, "guid": "a", "kind": "duplicate guid", "message": "catalogue.csv row 6: duplicate guid a (first at catalogue.csv row 1)"},
    ]
    assert storage.is_committed(str(root / "predictions" / "date=2026-03-01"))

    # Night 2: b's description changes, c's image changes, f is new. a's description changes only
    # in case and spacing, and a's image is rewritten with the same bytes (a new mtime): unchanged.
    night2 = [("a", "МОНЕТА.   копейка 1799 г.", ""), ("b", "Монета серебряная", ""), ("c", "", ""), ("d", "Книга", ""), ("f", "Сабля", ""), ("", "без guid", "")]
    write_catalogue(root / "catalogue.csv", night2)
    (root / "images" / "c").write_bytes(jpeg(RED))
    (root / "images" / "a.jpg").write_bytes(jpeg(RED))
    second = run(spark, settings, root, "2026-03-02")
    got = partition(root, "2026-03-02")
    assert list(zip(got["guid"], got["reason"])) == [("b", "description"), ("c", "image"), ("f", "new")]
    assert second["reasons"] == {"new": 1, "description": 1, "model": 0, "image": 1}
    assert second["unchanged"] == 2 and second["not_scored"] == {"empty guid": 1, "unusable guid": 0, "duplicate guid": 0}
    assert second["rows"] == 6 == second["rescored"] + second["unchanged"] + sum(second["not_scored"].values())
    assert second["state_partitions"] == ["2026-03-01"]

    current = rescore.current_predictions(str(root / "predictions"))
    assert list(current["guid"]) == ["a", "b", "c", "d", "f"]
    assert list(current["date"]) == ["2026-03-01", "2026-03-02", "2026-03-02", "2026-03-01", "2026-03-02"]
    assert current.set_index("guid").loc["b", "typology"] == CLASSES[COIN]
    assert current.set_index("guid").loc["c", "typology"] == CLASSES[PAINTING]

    # The same night again: the partition is complete for these inputs, nothing is scored or written.
    before = snapshot(root / "predictions" / "date=2026-03-02")
    again = run(spark, settings, root, "2026-03-02", factory=must_not_score)
    assert again["already_complete"] and again["scored"] == 0 and again["reasons"] == second["reasons"]
    assert snapshot(root / "predictions" / "date=2026-03-02") == before
    # Forced, it scores the same delta again and writes the same content.
    forced = run(spark, settings, root, "2026-03-02", force=True)
    assert not forced["already_complete"] and forced["scored"] == 3
    after = snapshot(root / "predictions" / "date=2026-03-02")
    assert {name: data for name, (data, _) in after.items()} == {name: data for name, (data, _) in before.items()}

    # A night with nothing changed scores nothing and writes an empty partition with its summary.
    third = run(spark, settings, root, "2026-03-03", factory=must_not_score)
    assert third["rescored"] == 0 and third["unchanged"] == 5 and third["scored"] == 0
    empty = partition(root, "2026-03-03")
    assert len(empty) == 0 and list(empty.columns) == list(rescore.PARTITION_COLUMNS)
    summary = json.loads((root / "predictions" / "date=2026-03-03" / rescore.SUMMARY_FILE).read_text())
    assert summary["state_partitions"] == ["2026-03-01", "2026-03-02"] and summary["unchanged"] == 5
    assert rescore.current_predictions(str(root / "predictions")).equals(current)

    # A new model version rescores every guid; a guid gone from the catalogue keeps its prediction.
    write_catalogue(root / "catalogue.csv", [r for r in night2 if r[0] != "d"])
    fourth = run(spark, settings, root, "2026-03-04", model=spec("models/text/v9"))
    got = partition(root, "2026-03-04")
    assert list(got["guid"]) == ["a", "b", "c", "f"] and set(got["reason"]) == {"model"}
    assert set(got["model_version"]) == {"text=v9;image=v2@512px,80000000pixels,50000000bytes,jpeg92;cascade=conf"}
    assert fourth["absent_from_catalogue"] == 1 and fourth["absent_examples"] == ["d"]
    assert len(rescore.current_predictions(str(root / "predictions"))) == 5

    # The PySpark way to read the current state gives the same rows.
    from pyspark.sql import Window, functions as F

    # An interrupted night (its partition written, no _SUCCESS) must not count.
    import shutil

    shutil.copytree(root / "predictions" / "date=2026-03-04", root / "predictions" / "date=2026-03-05")
    (root / "predictions" / "date=2026-03-05" / "_SUCCESS").unlink()
    predictions = str(root / "predictions")
    paths = [url for _, url in rescore.committed_partitions(predictions)]  # as in the README
    current = (spark.read.option("basePath", predictions).parquet(*paths)
               .withColumn("n", F.row_number().over(Window.partitionBy("guid").orderBy(F.desc("date")))).filter("n = 1").drop("n"))
    frame = current.toPandas().sort_values("guid").reset_index(drop=True)
    expected = rescore.current_predictions(predictions)
    assert list(frame["guid"]) == list(expected["guid"]) and list(frame["typology"]) == list(expected["typology"])
    assert [str(d) for d in frame["date"]] == list(expected["date"])


def test_a_rerun_whose_rows_not_scored_moved_past_the_summarys_examples_lists_them_anew(spark, settings, night1):
    """The summary keeps the first 20 rows not scored: a re-run of the night on a catalogue whose
    21st-and-later rejected rows moved was taken as complete, and _not_scored.parquet named a row
    that had been scored."""
    root = night1
    rows = [("a", "Монета", "")] + [("", f"без guid {i}", "") for i in range(rescore.EXAMPLES)] + [("b", "Книга", ""), ("a", "Монета вторая", "")]
    write_catalogue(root / "catalogue.csv", rows)
    first = run(spark, settings, root, "2026-03-01")
    write_catalogue(root / "catalogue.csv", rows[:-2] + rows[-1:] + rows[-2:-1])  # the last two swapped
    again = run(spark, settings, root, "2026-03-01")
    assert first["not_scored_examples"] == again["not_scored_examples"] and not again["already_complete"]
    skipped = pd.read_parquet(root / "predictions" / "date=2026-03-01" / rescore.NOT_SCORED_FILE)
    assert skipped["source_row"].tolist()[-1] == len(rows) - 1 and skipped["guid"].tolist()[-1] == "a"
    assert run(spark, settings, root, "2026-03-01", factory=must_not_score)["already_complete"]


def test_a_plan_that_loses_a_row_is_an_internal_error_not_a_user_error(spark, settings, night1, monkeypatch):
    """Every catalogue row is rescored, unchanged or not scored; a plan that lost one is the job's
    bug (exit 1, "failed:"), not the user's input (it was a RescoreError, exit 2)."""
    from museum_typology.errors import InternalError

    real = rescore.plan_rescore
    monkeypatch.setattr(rescore, "plan_rescore", lambda *a, **k: dataclasses.replace(plan := real(*a, **k), not_scored=plan.not_scored[:-1]))
    with pytest.raises(InternalError, match="rescore: 6 catalogue rows, 5 accounted for"):
        run(spark, settings, night1, "2026-03-01", factory=must_not_score)
    assert not (night1 / "predictions").exists()


def test_an_image_over_the_byte_cap_is_not_rescored_every_night(spark, settings, night1):
    """Score refuses a file over images.max_bytes unread and records no hash; rescore must not
    hash the file it refused (the row would look changed, and be re-scored, every night)."""
    capped = dataclasses.replace(spec(), max_bytes=100)  # both test JPEGs are larger
    first = run(spark, settings, night1, "2026-03-01", model=capped)
    got = partition(night1, "2026-03-01").set_index("guid")
    assert first["rescored"] == 4 and got.loc["c", "source"] == "default" and got["image_sha256"].isna().all()
    assert "images.max_bytes=100 (not read)" in got.loc["a", "note"]
    second = run(spark, settings, night1, "2026-03-02", model=capped, factory=must_not_score)
    assert second["rescored"] == 0 and second["unchanged"] == 4


def test_a_guid_that_looks_like_a_name_and_extension_is_hashed_and_scored_with_its_image(spark, settings, night1):
    """Image file MS.A of row MS.A was taken for guid MS with extension "a": no image, no hash."""
    (night1 / "images" / "MS.A").write_bytes(jpeg(BLUE))
    write_catalogue(night1 / "catalogue.csv", [*NIGHT1, ("MS.A", "", "")])
    run(spark, settings, night1, "2026-03-01")
    got = partition(night1, "2026-03-01").set_index("guid")
    assert got.loc["MS.A", "image_sha256"] == hashlib.sha256(jpeg(BLUE)).hexdigest() and got.loc["MS.A", "source"] == "image"


def test_dataset_images_are_compared_by_their_sha256_column(spark, settings, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()

    def write_dataset(rows):
        guids, images, shas = zip(*rows)
        pq.write_table(pa.table({"guid": list(guids), "image": list(images), "sha256": list(shas)}), dataset / "part-0.parquet")

    write_dataset([("p1", jpeg(RED), "orig-1"), ("p2", jpeg(RED), "orig-2"), ("p3", jpeg(RED), None)])
    write_catalogue(tmp_path / "catalogue.csv", [("p1", "", ""), ("p2", "", ""), ("p3", "", "")])
    args = (spark, settings, str(tmp_path / "catalogue.csv"), str(tmp_path / "predictions"), spec())
    rescore.run(*args, date="2026-03-01", image_dataset=str(dataset), factory=stand_in)
    got = partition(tmp_path, "2026-03-01")
    assert list(got["image_sha256"][:2]) == ["orig-1", "orig-2"]
    # p1: re-encoded stored bytes, same original file -> unchanged; p2: another original file;
    # p3: no sha256 in the dataset -> the stored bytes' hash, unchanged here.
    write_dataset([("p1", jpeg(BLUE), "orig-1"), ("p2", jpeg(BLUE), "orig-2b"), ("p3", jpeg(RED), None)])
    second = rescore.run(*args, date="2026-03-02", image_dataset=str(dataset), factory=stand_in)
    got = partition(tmp_path, "2026-03-02")
    assert list(zip(got["guid"], got["reason"], got["image_sha256"])) == [("p2", "image", "orig-2b")]
    assert second["unchanged"] == 2


def test_plan_is_pure_and_asks_for_image_hashes_only_where_needed():
    rows = [
        InputRow("x", "score", "c.csv", 1, 2, "Монета", None),
        InputRow("y", "score", "c.csv", 2, 3, "Сабля", None),
        InputRow("z", "score", "c.csv", 3, 4, "Ваза", None),
        InputRow(None, "score", "c.csv", 4, 5, "Без guid", None, rejected_reason="c.csv row 4 (line 5): empty guid"),
        # the reader's reason is the message: this row's guid is missing because its fields are
        InputRow(None, "score", "c.csv", 5, 6, None, None, rejected_reason="c.csv row 5 (line 6): 1 fields, header has 2"),
        # CSV tools cut a field at a control character: no later join would find this guid
        InputRow("g\x01x", "score", "c.csv", 6, 7, "Ваза", None, rejected_reason="c.csv row 6 (line 7): guid 'g\\x01x' holds a control character"),
    ]
    state = {
        "x": {"model_version": "v1", "description_hash": rescore.normalised_hash("монета"), "image_sha256": None},
        "y": {"model_version": "v0", "description_hash": rescore.normalised_hash("Сабля"), "image_sha256": None},
        "gone": {"model_version": "v1", "description_hash": None, "image_sha256": None},
    }
    asked = []
    plan = rescore.plan_rescore(rows, state, "v1", lambda guids: asked.extend(guids) or {"x": "new-image"})
    assert asked == ["x"]  # y (model) and z (new) are scored anyway
    assert plan.rescore == [(0, "image"), (1, "model"), (2, "new")] and plan.unchanged == 0
    assert plan.not_scored == [
        (3, "empty guid", "c.csv row 4 (line 5): empty guid"),
        (4, "empty guid", "c.csv row 5 (line 6): 1 fields, header has 2"),
        (5, "unusable guid", "c.csv row 6 (line 7): guid 'g\\x01x' holds a control character"),
    ]
    assert plan.absent == ["gone"]
    assert plan.counts()["not_scored"] == {"empty guid": 2, "unusable guid": 1, "duplicate guid": 0}


def test_a_malformed_row_does_not_push_aside_a_sound_row_of_its_guid():
    """G1's first row has a comma too many (its text cut to "Картина"), the second is sound: the
    sound row is scored, the malformed one is the duplicate. A guid with malformed rows only is
    scored from its first."""
    malformed = "c.csv row 1 (line 2): 3 fields, the header has 2"
    rows = [
        InputRow("G1", "score", "c.csv", 1, 2, "Картина", None, rejected_reason=malformed),
        InputRow("G1", "score", "c.csv", 2, 3, "Картина, холст", None),
        InputRow("G2", "score", "c.csv", 3, 4, "Ваза", None, rejected_reason="c.csv row 3 (line 4): 3 fields, the header has 2"),
        InputRow("G2", "score", "c.csv", 4, 5, "Ваза, фарфор", None, rejected_reason="c.csv row 4 (line 5): 3 fields, the header has 2"),
        InputRow("G1", "score", "c.csv", 5, 6, "Картина", None),
    ]
    plan = rescore.plan_rescore(rows, {}, "v1", lambda guids: {})
    assert plan.rescore == [(1, "new"), (2, "new")]
    assert plan.not_scored == [
        (0, "duplicate guid", "c.csv row 1: duplicate guid G1 (read without error at c.csv row 2)"),
        (3, "duplicate guid", "c.csv row 4: duplicate guid G2 (first at c.csv row 3)"),
        (4, "duplicate guid", "c.csv row 5: duplicate guid G1 (first at c.csv row 2)"),
    ]
    # score keeps every row, and the duplicate note goes on the malformed one
    notes = score.plan_tasks(rows, {}, {})["note"].tolist()
    assert notes[0] == f"{malformed}; duplicate guid (read without error at row 2)" and notes[1] == ""
    assert notes[4] == "duplicate guid (first at row 2)" and "duplicate guid (first at row 3)" in notes[3]


def test_a_partition_a_crash_left_set_aside_is_put_back_by_the_next_night(spark, settings, night1):
    """A local commit over a re-run night renames the old partition aside, then the new one in: a
    crash between the two left no date=X, and the next night read the history without it."""
    root = night1
    run(spark, settings, root, "2026-03-01")
    predictions = root / "predictions"
    os.rename(predictions / "date=2026-03-01", predictions / ".date=2026-03-01.old-0123abcd")
    second = run(spark, settings, root, "2026-03-02")
    assert second["state_partitions"] == ["2026-03-01"] and second["rescored"] == 0 and second["unchanged"] == 4
    assert storage.is_committed(str(predictions / "date=2026-03-01")) and not (predictions / ".date=2026-03-01.old-0123abcd").exists()


def test_the_current_state_folds_the_history_as_it_reads_and_keeps_each_guids_newest_row(tmp_path, monkeypatch):
    """Every night a model changes adds the whole catalogue to the history; reading a year of
    nights whole held them all at once (3.9 GB for 366 nights of a 1M-row catalogue). The rows
    read are folded to one per guid as they go; the answer must be the plain one's."""
    import numpy as np

    rng = np.random.default_rng(7)
    predictions = tmp_path / "predictions"
    schema = rescore.PARTITION_SCHEMA
    for night in range(12):
        guids = rng.choice([f"g{i:03d}" for i in range(60)], size=int(rng.integers(0, 40)), replace=False)
        table = pa.table({name: pa.nulls(len(guids), schema.field(name).type) for name in schema.names}, schema=schema)
        table = table.set_column(0, "guid", pa.array(guids, pa.string())).set_column(schema.get_field_index("reason"), "reason", pa.array([f"night {night}"] * len(guids)))
        directory = predictions / f"date=2026-03-{night + 1:02d}"
        directory.mkdir(parents=True)
        pq.write_table(table, directory / rescore.PART_FILE)
        (directory / "_SUCCESS").write_bytes(b"")
    plain = rescore.current_predictions(str(predictions), compact_above=10**9)
    folds = []
    fold = rescore.newest_per_guid
    monkeypatch.setattr(rescore, "newest_per_guid", lambda table: folds.append(table.num_rows) or fold(table))
    folded = rescore.current_predictions(str(predictions), compact_above=5)
    assert len(folds) >= 3 and max(folds) <= 3 * 60  # folded several times, never more than ~3 catalogues held
    assert plain.equals(folded) and len(folded) == folded["guid"].nunique() > 40
    last_night = {}
    for night in range(12):
        for guid in pq.read_table(predictions / f"date=2026-03-{night + 1:02d}" / rescore.PART_FILE).column("guid").to_pylist():
            last_night[guid] = f"night {night}"
    assert dict(zip(folded["guid"], folded["reason"])) == last_night
    early = rescore.current_predictions(str(predictions), before="2026-03-07", compact_above=5)
    assert set(early["date"]) <= {f"2026-03-{d:02d}" for d in range(1, 7)}


def test_a_night_another_rescore_commits_meanwhile_stops_this_ones_commit(spark, settings, night1, monkeypatch):
    """Two scheduled rescores overlapping: a later night committed first and the earlier one
    committed after it (nights move forward only), or an earlier night committed while a later
    one ran, whose changes the later one then never saw. Both are refused at the commit."""
    root = night1
    run(spark, settings, root, "2026-03-01")
    score_tasks = rescore.score_tasks

    def meanwhile(date):
        def scoring(*args, **kwargs):
            monkeypatch.setattr(rescore, "score_tasks", score_tasks)
            write_catalogue(root / "catalogue.csv", [*NIGHT1, ("e", "Сабля", "")])  # a row the other night scores
            run(spark, settings, root, date)  # the other rescore, committing its night now
            return score_tasks(*args, **kwargs)
        return scoring

    write_catalogue(root / "catalogue.csv", [*NIGHT1, ("f", "Монета", "")])
    monkeypatch.setattr(rescore, "score_tasks", meanwhile("2026-03-03"))
    with pytest.raises(rescore.RescoreError, match=r"night 2026-03-03 was committed by another rescore while this one ran; not committing date=2026-03-02"):
        run(spark, settings, root, "2026-03-02")
    assert [d for d, _ in rescore.committed_partitions(str(root / "predictions"))] == ["2026-03-01", "2026-03-03"]

    write_catalogue(root / "catalogue.csv", [*NIGHT1, ("f", "Монета", "")])
    monkeypatch.setattr(rescore, "score_tasks", meanwhile("2026-03-04"))
    with pytest.raises(rescore.RescoreError, match=r"night\(s\) 2026-03-04 committed by another rescore while this one ran; not committing date=2026-03-05, .*run it again"):
        run(spark, settings, root, "2026-03-05")
    write_catalogue(root / "catalogue.csv", [*NIGHT1, ("f", "Монета", "")])
    again = run(spark, settings, root, "2026-03-05")
    assert again["state_partitions"] == ["2026-03-01", "2026-03-03", "2026-03-04"]
    current = rescore.current_predictions(str(root / "predictions"))
    assert set(current["guid"]) == {"a", "b", "c", "d", "e", "f"}


def test_catalogue_directory_of_csv_and_parquet(tmp_path):
    directory = tmp_path / "catalogue"
    (directory / "sub").mkdir(parents=True)
    write_catalogue(directory / "a.csv", [("g1", "Монета", "")])
    pd.DataFrame({"guid": ["g2"], "description": ["Сабля"]}).to_parquet(directory / "sub" / "b.parquet")
    (directory / "_SUCCESS").write_bytes(b"")
    (directory / "notes.txt").write_text("ignored")
    rows = rescore.read_catalogue(str(directory))
    assert [row.guid for row in rows] == ["g1", "g2"]
    # named by their path under the catalogue: two museums' items.csv were both "items.csv"
    assert [row.source_file for row in rows] == ["a.csv", "sub/b.parquet"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(rescore.RescoreError, match="no .csv or .parquet files"):
        rescore.read_catalogue(str(tmp_path / "empty"))


def test_clear_errors(spark, settings, night1, capsys, monkeypatch):
    root = night1
    with pytest.raises(storage.StorageError, match="nowhere.csv: no such file or directory \\(--catalogue\\)"):
        rescore.run(spark, settings, str(root / "nowhere.csv"), str(root / "predictions"), spec(), date="2026-03-01")
    (root / "not_a_dir").write_text("x")
    with pytest.raises(rescore.RescoreError, match="not_a_dir: --predictions must be a directory"):
        rescore.run(spark, settings, str(root / "catalogue.csv"), str(root / "not_a_dir"), spec(), date="2026-03-01")
    with pytest.raises(rescore.RescoreError, match="--date must be a date as YYYY-MM-DD, got '2026-3-1'"):
        rescore.run_date("2026-3-1")
    # A date in the future (a typo) would have made a partition that refused every night before it.
    today = dt.date(2026, 3, 10)
    assert rescore.run_date("2026-03-11", today) == "2026-03-11" and rescore.run_date(None, today) == "2026-03-10"
    with pytest.raises(rescore.RescoreError, match="--date 2036-03-03 is in the future \\(today is 2026-03-10 UTC\\)"):
        rescore.run_date("2036-03-03", today)
    # Predictions inside a catalogue directory would be read back as catalogue rows the next night.
    (root / "catalogue_dir").mkdir()
    with pytest.raises(rescore.RescoreError, match="--predictions is inside the --catalogue directory"):
        rescore.check_arguments(str(root / "catalogue_dir"), str(root / "catalogue_dir" / "predictions"), "2026-03-01")
    with pytest.raises(rescore.RescoreError, match="--predictions is the --catalogue directory"):
        rescore.check_arguments(str(root / "catalogue_dir"), str(root / "catalogue_dir"), "2026-03-01")
    # ... but not a folder the catalogue reader skips, nor beside a catalogue file
    for predictions in (root / "catalogue_dir" / "_predictions", root / "catalogue_dir" / "sub" / ".predictions"):
        assert rescore.check_arguments(str(root / "catalogue_dir"), str(predictions), "2026-03-01") == "2026-03-01"
    assert rescore.check_arguments(str(root / "catalogue.csv"), str(root / "predictions"), "2026-03-01") == "2026-03-01"
    # An interrupted write (no _SUCCESS) is ignored; a committed partition newer than --date is refused.
    (root / "predictions" / "date=2026-03-09").mkdir(parents=True)
    assert rescore.committed_partitions(str(root / "predictions")) == []
    run(spark, settings, root, "2026-03-05")
    with pytest.raises(rescore.RescoreError, match="date=2026-03-05 is newer than --date 2026-03-04"):
        run(spark, settings, root, "2026-03-04")
    # Through the CLI: one line, exit code 2, before Spark or the models are needed.
    base = ["rescore", "--predictions", str(root / "predictions"), "--model", str(root / "no-models")]
    assert cli.main([*base, "--catalogue", str(root / "nowhere.csv")]) == 2
    assert "rescore: error: " in capsys.readouterr().err
    assert cli.main(["rescore", "--catalogue", str(root / "catalogue.csv"), "--predictions", str(root / "not_a_dir")]) == 2
    assert "--predictions must be a directory" in capsys.readouterr().err
    assert cli.main([*base, "--catalogue", str(root / "catalogue.csv"), "--date", "tomorrow"]) == 2
    assert "--date must be a date" in capsys.readouterr().err
    assert cli.main([*base, "--catalogue", str(root / "catalogue.csv")]) == 2
    assert "no text or image model bundle" in capsys.readouterr().err
    # A missing --image-dataset: one line before Spark starts (it was pyarrow's traceback, after).
    monkeypatch.setattr(cli, "_spark", lambda *a: pytest.fail("Spark started before the arguments were checked"))
    for job in (["rescore", "--catalogue", str(root / "catalogue.csv"), "--predictions", str(root / "predictions")], ["score", "--input", str(root / "catalogue.csv"), "--output", str(root / "out.csv")]):
        assert cli.main([*job, "--image-dataset", str(root / "no-dataset")]) == 2
        err = capsys.readouterr().err
        assert "no-dataset: --image-dataset must be a dataset directory" in err and "Traceback" not in err
    with pytest.raises(storage.StorageError, match="--image-dataset must be a dataset directory"):
        rescore.run(spark, settings, str(root / "catalogue.csv"), str(root / "predictions"), spec(), date="2026-03-06", image_dataset=str(root / "no-dataset"))
    # the job's folder rather than its dataset/: its manifest.parquet is no image part file (the
    # executors failed on a missing "image" field, with a Spark traceback)
    (root / "ingest").mkdir()
    pd.DataFrame({"guid": ["a"], "status": ["ok"]}).to_parquet(root / "ingest" / "manifest.parquet")
    with pytest.raises(storage.StorageError, match=r"manifest.parquet has no image column: --image-dataset must be the dataset/ folder"):
        score.find_dataset_images(str(root / "ingest"))


def test_abandoned_writes_are_removed_and_a_set_aside_night_is_said(tmp_path, caplog):
    """A night killed mid-write and never re-run (a newer night committed since, so it cannot be)
    left its temporary folder for good; a night a crash set aside between a commit's two renames
    was silently not read; a predictions path with a typo read as "no predictions yet"."""
    predictions = tmp_path / "predictions"
    for name in ("date=2026-11-10", ".date=2026-11-09.tmp-1a2b3c4d", ".date=2026-11-12.tmp-5e6f7a8b", ".date=2026-11-11.old-0123abcd"):
        (predictions / name).mkdir(parents=True)
    (predictions / "date=2026-11-10" / "_SUCCESS").write_text("")
    with caplog.at_level("WARNING"):
        partitions = rescore.committed_partitions(str(predictions))
    assert [d for d, _ in partitions] == ["2026-11-10"]
    assert "night date=2026-11-11 was set aside by a crash" in caplog.text and "the next rescore run puts it back" in caplog.text
    rescore.remove_abandoned_writes(str(predictions), partitions)
    assert sorted(p.name for p in predictions.iterdir()) == [".date=2026-11-11.old-0123abcd", ".date=2026-11-12.tmp-5e6f7a8b", "date=2026-11-10"]  # a newer night's write may still be running
    with pytest.raises(rescore.RescoreError, match="no_such: no such predictions directory"):
        rescore.current_predictions(str(tmp_path / "no_such"))
