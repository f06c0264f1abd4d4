"""The clean job: confident-learning evidence and decisions on tiny hand-made rows, a synthetic
catalogue with a known share of flipped labels (the job against cleanlab on the same
probabilities), the job end to end on local Spark (manifest, CSV, review page), the cleaned
manifest read back by the training jobs, and clear errors on bad OOF files."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from museum_typology import clean, review
from museum_typology.schema import CLASS_INDEX, CLASSES

A, B, C = 0, 1, 2  # class indices used by the tiny cases (графика, документы, живопись)


def _proba(rows: list[dict[int, float]]) -> np.ndarray:
    """Probability rows from {class: p}, the rest spread evenly over the other classes."""
    out = np.zeros((len(rows), len(CLASSES)))
    for i, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (len(CLASSES) - len(row))
        out[i] = rest
        for j, p in row.items():
            out[i, j] = p
    return out


def write_oof(path, guids, y, proba, fold=None) -> str:
    table = pa.table(
        {
            "guid": pa.array(guids, pa.string()),
            "label": pa.array([CLASSES[i] for i in y], pa.string()),
            "fold": pa.array(list(fold if fold is not None else np.arange(len(guids)) % 5), pa.int32()),
            "proba": pa.array(np.asarray(proba, dtype=np.float32).tolist(), pa.list_(pa.float32())),
            "model_version": pa.array(["test"] * len(guids), pa.string()),
        }
    )
    pq.write_table(table, str(path))
    return str(path)


# ---------------------------------------------------------------- pure parts on tiny rows


def test_thresholds_evidence_and_confident_class():
    y = np.array([A, A, B, B])
    proba = _proba([{A: 0.9}, {A: 0.5, B: 0.4}, {B: 0.8}, {A: 0.7, B: 0.2}])
    t = clean.class_thresholds(proba, y)
    assert t[A] == pytest.approx(0.7) and t[B] == pytest.approx(0.5)
    assert t[C] == 1.0  # no row labelled C: nothing is ever confidently C
    ev = clean.evidence(proba, y, t)
    assert ev["p_given"].tolist() == pytest.approx([0.9, 0.5, 0.8, 0.2])
    assert [CLASSES[j] for j in ev["other"][2:]] == [CLASSES[A], CLASSES[A]]
    assert ev["margin"][3] == pytest.approx(0.5)
    # Row 1: A (0.5) is under t_A (0.7), B (0.4) under t_B (0.5): no confident class.
    # Row 3: A (0.7) reaches t_A: confidently A although labelled B.
    assert ev["confident"].tolist() == [A, -1, B, A]


def test_confident_joint_is_calibrated_to_the_label_counts():
    y = np.array([A, A, A, A, B, B])
    confident = np.array([A, A, B, -1, B, B])  # one A row has no confident class
    joint = clean.confident_joint(y, confident, 3)
    assert joint[A].sum() == 4 and joint[B].sum() == 2
    assert joint[A, B] == 1 and joint[B, A] == 0


def test_noise_rate_picks_the_largest_margins_and_never_a_row_its_model_agrees_with():
    y = np.array([A] * 6 + [B] * 4)
    proba = _proba([{A: 0.9}, {A: 0.85}, {A: 0.8}, {A: 0.6, B: 0.3}, {A: 0.1, B: 0.85}, {A: 0.2, B: 0.7}] + [{B: 0.7}] * 4)
    t = clean.class_thresholds(proba, y)
    ev = clean.evidence(proba, y, t)
    mask = clean.suspects(proba, y, ev, "noise_rate")
    assert np.where(mask)[0].tolist() == [4, 5]


def test_decisions_relabel_drop_keep_each_with_a_reason():
    cs = clean.CleanSettings(relabel_min_proba=0.5, relabel_min_margin=0.3, drop_max_self_confidence=0.1, use_clusters=True)
    y = np.array([A, A, A, A, B, B, B, B])
    proba = _proba([{A: 0.9}, {A: 0.05, B: 0.9}, {A: 0.05, B: 0.1}, {A: 0.3, B: 0.45}, {B: 0.9}, {B: 0.8}, {B: 0.85}, {B: 0.9}])
    t = clean.class_thresholds(proba, y)
    ev = clean.evidence(proba, y, t)
    suspected_cl = np.array([False, True, True, True, False, False, False, False])
    actions, new, reasons, suspected = clean.decide(proba, y, ev, suspected_cl, np.full(8, -1), ["x"] * 8, cs)
    assert actions[:4] == ["keep", "relabel", "drop", "keep"]
    assert new[:4] == [CLASSES[A], CLASSES[B], None, CLASSES[A]]
    assert reasons[0].startswith("label consistent")
    assert "confident learning" in reasons[1] and f"{CLASSES[B]} is confident" in reasons[1] and "p(" in reasons[1]
    assert "no confident other class" in reasons[2]
    assert "weak" in reasons[3]
    assert suspected.tolist() == suspected_cl.tolist()


def test_the_class_of_a_suspects_cluster_backs_a_relabel_as_documented_and_drops_say_why():
    """A confident-learning suspect whose most likely other class is its suspicious cluster's was
    kept when its p_given was just over its threshold (the cluster did not flag it itself); a drop
    whose other class was confident but short of the relabel thresholds said "no confident other
    class"."""
    cs = clean.CleanSettings(relabel_min_proba=0.5, relabel_min_margin=0.3, drop_max_self_confidence=0.1, use_clusters=True)
    y = np.array([A, A, A])
    ev = {  # row 0: cluster class B, p(B) 0.65 not confident; row 1: B confident but p(B) 0.42; row 2: nothing backs B
        "p_given": np.array([0.23, 0.05, 0.05]), "threshold_given": np.array([0.15, 0.15, 0.15]), "other": np.array([B, B, B]),
        "p_other": np.array([0.65, 0.42, 0.4]), "threshold_other": np.array([0.8, 0.4, 0.8]), "margin": np.array([0.42, 0.37, 0.35]),
        "predicted": np.array([B, B, B]), "confident": np.array([-1, B, -1]),
    }
    actions, new, reasons, _ = clean.decide(np.zeros((3, len(CLASSES))), y, ev, np.array([True, True, True]), np.array([B, -1, -1]), ["c4", "x", "x"], cs)
    assert actions == ["relabel", "drop", "drop"] and new == [CLASSES[B], None, None]
    assert f"{CLASSES[B]} is its cluster's class" in reasons[0]
    assert f"{CLASSES[B]} is confident but short of p >= 0.5 and margin >= 0.3, and p({CLASSES[A]}) < 0.1" in reasons[1]
    assert "no confident other class, and p(" in reasons[2]
    # with clusters off they back nothing (row 0: not confident in B either, and p_given over 0.1: kept)
    off = clean.decide(np.zeros((3, len(CLASSES))), y, ev, np.array([True, True, True]), np.array([B, -1, -1]), ["c4", "x", "x"], dataclasses.replace(cs, use_clusters=False))
    assert off[0] == ["keep", "drop", "drop"]


def test_a_suspicious_cluster_adds_suspects_only_with_row_evidence():
    cs = clean.CleanSettings(suspicious_min_size=2, suspicious_min_purity=0.6)
    # Label A: rows 0-2 confidently A, rows 3-5 a group the models call B (one of them only weakly).
    y = np.array([A] * 6 + [B] * 3)
    proba = _proba([{A: 0.9}] * 3 + [{A: 0.1, B: 0.8}, {A: 0.2, B: 0.7}, {A: 0.5, B: 0.45}] + [{B: 0.9}] * 3)
    label_cluster = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])
    table = clean.cluster_table(np.array([CLASSES[i] for i in y], dtype=object), label_cluster, y, proba.argmax(1), cs, per_label=True)
    group = next(c for c in table if c["scope"] == CLASSES[A] and c["cluster"] == 1)
    assert group["suspicious"] and group["dominant_predicted"] == CLASSES[B] and group["purity"] == pytest.approx(2 / 3, abs=1e-3)
    assert not next(c for c in table if c["scope"] == CLASSES[A] and c["cluster"] == 0)["suspicious"]
    cleaned = clean.clean_labels(clean.Oof([f"g{i}" for i in range(9)], y, proba, ["text"] * 9), cs, label_cluster, np.zeros(9, np.int64))
    # Row 5 is in the group but its model still prefers A: no row evidence, not a suspect.
    assert cleaned.suspected.tolist() == [False] * 3 + [True, True, False] + [False] * 3


def test_combine_averages_shared_guids_and_refuses_disagreeing_labels():
    text = clean.Oof(["a", "b"], np.array([A, B]), _proba([{A: 0.8}, {B: 0.6}]), ["text"] * 2, np.array([0, 1]))
    image = clean.Oof(["b", "c"], np.array([B, C]), _proba([{B: 0.2}, {C: 0.9}]), ["image"] * 2, np.array([0, 0]))
    both = clean.combine([text, image])
    assert both.guids == ["a", "b", "c"] and both.sources == ["text", "text+image", "image"]
    assert both.proba[1, B] == pytest.approx(0.4)
    assert np.allclose(both.proba.sum(1), 1)
    image.y[0] = A
    with pytest.raises(clean.OofError, match="disagree on its given label"):
        clean.combine([text, image])


def test_renumber_by_size():
    assert clean.renumber_by_size(np.array([7, 3, 3, 7, 3, 9])).tolist() == [1, 0, 0, 1, 0, 2]


def test_k_candidates_respect_the_minimum_cluster_size():
    assert clean.k_candidates((2, 3, 4, 6), 17, 5) == [2, 3]
    assert clean.k_candidates((2, 3), 9, 5) == []


def test_k_candidates_never_exceed_the_distinct_rows():
    # 30 rows of only 3 distinct probability vectors (identical titles): k = 4 or 6 cannot be fitted.
    assert clean.k_candidates((2, 3, 4, 6), 30, 5, distinct=3) == [2, 3]
    assert clean.k_candidates((2, 3), 10, 2, distinct=1) == []  # one distinct vector: one cluster
    x = np.array([[0.1, 0.9], [0.1, 0.9], [0.5, 0.5]])
    assert clean.distinct_rows(x) == 2 and clean.distinct_rows(np.zeros((0, 2))) == 0


# ---------------------------------------------------------------- bad inputs


def test_missing_or_malformed_oof_is_a_clear_error(tmp_path):
    with pytest.raises(clean.OofError, match="nope.parquet: no such out-of-fold file"):
        clean.read_oof(str(tmp_path / "nope.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(clean.OofError, match="junk.parquet: not a readable Parquet file"):
        clean.read_oof(str(tmp_path / "junk.parquet"))
    short = pa.table({"guid": ["a"], "label": [CLASSES[0]], "fold": [0], "proba": [[1.0, 0.0]]})
    pq.write_table(short, str(tmp_path / "short.parquet"))
    with pytest.raises(clean.OofError, match="length 2, expected 15"):
        clean.read_oof(str(tmp_path / "short.parquet"))
    pq.write_table(pa.table({"guid": ["a"], "proba": [[1 / 15] * 15]}), str(tmp_path / "nolabel.parquet"))
    with pytest.raises(clean.OofError, match="missing column.*label"):
        clean.read_oof(str(tmp_path / "nolabel.parquet"))
    pq.write_table(pa.table({"guid": ["a", "a"], "label": [CLASSES[0]] * 2, "proba": [[1 / 15] * 15] * 2}), str(tmp_path / "dup.parquet"))
    with pytest.raises(clean.OofError, match="more than once"):
        clean.read_oof(str(tmp_path / "dup.parquet"))
    pq.write_table(pa.table({"guid": ["a"], "label": ["картины"], "proba": [[1 / 15] * 15]}), str(tmp_path / "label.parquet"))
    with pytest.raises(clean.OofError, match="unknown label"):
        clean.read_oof(str(tmp_path / "label.parquet"))
    pq.write_table(pa.table({"guid": ["a"], "label": [CLASSES[0]], "proba": [[0.5] * 15]}), str(tmp_path / "sum.parquet"))
    with pytest.raises(clean.OofError, match="sum to 7.5"):
        clean.read_oof(str(tmp_path / "sum.parquet"))
    write_oof(tmp_path / "empty.parquet", [], [], np.zeros((0, len(CLASSES))))
    with pytest.raises(clean.OofError, match="empty.parquet: no rows"):
        clean.read_oof(str(tmp_path / "empty.parquet"))
    pq.write_table(pa.table({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "fold": pa.array([0, None], pa.int32()), "proba": [[1 / 15] * 15] * 2}), str(tmp_path / "fold.parquet"))
    with pytest.raises(clean.OofError, match="fold.parquet: empty fold in 1 row.*guid b"):
        clean.read_oof(str(tmp_path / "fold.parquet"))


def test_odd_fold_and_proba_columns_are_clear_errors(tmp_path, capsys):
    """A fold column of strings or NaN, a proba of plain numbers: tracebacks (exit 1) after the
    checks; the NaN error named no row; a file given twice was averaged in twice."""
    from museum_typology import cli

    even = [1 / 15] * 15
    for name, column, message in (
        ("foldstr", {"fold": ["a", "b"]}, r"foldstr.parquet: fold must hold whole numbers; 2 row\(s\) do not, e.g. guid a: 'a'"),
        ("foldnan", {"fold": [0.0, float("nan")]}, r"foldnan.parquet: fold must hold whole numbers; 1 row\(s\) do not, e.g. guid b: nan"),
        ("scalar", {"proba": [0.5, 0.5]}, r"scalar.parquet: row 0 \(guid a\) has a proba of 0.5, expected a list of 15 probabilities"),
        ("nan", {"proba": [even, [float("nan")] * 15]}, r"nan.parquet: probabilities must be finite and non-negative; 1 row\(s\) are not, e.g. row 1 \(guid b\)"),
    ):
        pq.write_table(pa.table({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "fold": [0, 1], "proba": [even, even], **column}), str(tmp_path / f"{name}.parquet"))
        with pytest.raises(clean.OofError, match=message):
            clean.read_oof(str(tmp_path / f"{name}.parquet"))
        assert cli.main(["clean", "--oof", str(tmp_path / f"{name}.parquet"), "--output", str(tmp_path / "out")]) == 2
        assert "Traceback" not in capsys.readouterr().err
    pq.write_table(pa.table({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "fold": [0.0, 1.0], "proba": [even, even], "source": ["text"] * 2}), str(tmp_path / "text.parquet"))
    assert clean.read_oof(str(tmp_path / "text.parquet")).fold.tolist() == [0, 1]  # whole floats are folds
    pq.write_table(pa.table({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "fold": ["0", " 1"], "proba": [even, even], "source": ["text"] * 2}), str(tmp_path / "text.parquet"))
    assert clean.read_oof(str(tmp_path / "text.parquet")).fold.tolist() == [0, 1]  # and digit strings, as before
    twice = [str(tmp_path / "text.parquet"), str(tmp_path / "." / "text.parquet")]
    with pytest.raises(clean.OofError, match=r"--oof names .*text.parquet more than once; each out-of-fold file counts once"):
        clean.check_oof_urls(twice)
    assert cli.main(["clean", "--oof", ",".join(twice), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, message", [
    ("max_iter=2.5", "clean.max_iter = 2.5: must be a whole number >= 1"), ("max_iter=-1", "clean.max_iter = -1: must be a whole number >= 1"),
    ("seed=1.5", "clean.seed = 1.5: must be a whole number >= 0"), ("review_titles=-1", "clean.review_titles = -1: must be a whole number >= 0"),
    ("relabel_min_proba=2.0", "clean.relabel_min_proba = 2.0: must be a number in \\[0, 1\\]"), ("drop_max_self_confidence=-1", "clean.drop_max_self_confidence = -1: must be a number in \\[0, 1\\]"),
])
def test_clean_settings_out_of_range_are_refused_before_spark(settings, setting, message):
    """2.5 or -1 iterations failed inside Spark's KMeans (exit 1); review_titles = -1 cut the
    page's last title; a relabel threshold of 2 ran without a word."""
    from museum_typology.config import ConfigError

    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=message):
        clean.CleanSettings.from_settings(settings.set(["clean", key], float(value) if "." in value else int(value), "test"))
    assert clean.CleanSettings.from_settings(settings).max_iter == settings.get("clean.max_iter")


def test_oof_guids_must_be_text_and_are_stripped(tmp_path):
    """Integer guids passed the check before Spark, and the job died after KMeans with an Arrow
    traceback; "a " beside "a" passed too, and the manifest it wrote was then refused by
    read_cleaned_labels for a repeated guid."""
    pq.write_table(pa.table({"guid": [1, 2], "label": [CLASSES[0]] * 2, "proba": [[1 / 15] * 15] * 2}), str(tmp_path / "ints.parquet"))
    with pytest.raises(clean.OofError, match=r"ints.parquet: the guid column holds int64, expected text"):
        clean.read_oof(str(tmp_path / "ints.parquet"))
    pq.write_table(pa.table({"guid": ["a ", "a"], "label": [CLASSES[0]] * 2, "proba": [[1 / 15] * 15] * 2}), str(tmp_path / "spaced.parquet"))
    with pytest.raises(clean.OofError, match=r"spaced.parquet: 1 guid\(s\) appear more than once, e.g. a$"):
        clean.read_oof(str(tmp_path / "spaced.parquet"))
    pq.write_table(pa.table({"guid": [" b", "  "], "label": [CLASSES[0]] * 2, "proba": [[1 / 15] * 15] * 2}), str(tmp_path / "blank.parquet"))
    with pytest.raises(clean.OofError, match=r"blank.parquet: empty guid in 1 row\(s\), e.g. data row 2$"):
        clean.read_oof(str(tmp_path / "blank.parquet"))
    pq.write_table(pa.table({"guid": [" b"], "label": [CLASSES[0]], "proba": [[1 / 15] * 15]}), str(tmp_path / "text.parquet"))
    assert clean.read_oof(str(tmp_path / "text.parquet")).guids == ["b"]


def test_which_model_made_an_oof_file_is_read_from_it_not_guessed_from_its_name(tmp_path):
    """train-* with another --model-dir write DIR/oof.parquet: clean took its source to be "oof",
    so the review page showed no images and the labels' lineage named no image fold run."""
    from museum_typology import bundles

    proba = np.full((2, len(CLASSES)), 1 / len(CLASSES))
    bundles.write_oof(str(tmp_path / "oof.parquet"), ["a", "b"], [0, 1], [0, 1], proba, "I1", "image")
    oof = clean.read_oof(str(tmp_path / "oof.parquet"))
    assert oof.sources == ["image", "image"] and oof.model_versions == ("I1",)
    pq.write_table(pa.table({"guid": ["a"], "label": [CLASSES[0]], "proba": [[1 / 15] * 15]}), str(tmp_path / "old.parquet"))
    with pytest.raises(clean.OofError, match=r"old.parquet: does not record whether text or image models made it"):
        clean.read_oof(str(tmp_path / "old.parquet"))
    pq.write_table(pa.table({"guid": ["a"], "label": [CLASSES[0]], "proba": [[1 / 15] * 15]}), str(tmp_path / "image.parquet"))
    assert clean.read_oof(str(tmp_path / "image.parquet")).sources == ["image"]  # an older file named as the jobs name it


def test_cluster_counts_that_cannot_be_used_are_a_settings_error(settings):
    """label_k = ["a"] was a bare ValueError: a traceback after Spark had started."""
    from museum_typology.config import ConfigError

    for value in (["a"], [], [1, 3], [True]):
        with pytest.raises(ConfigError, match=r"clean.label_k = .*expected a non-empty list of whole numbers >= 2"):
            clean.CleanSettings.from_settings(settings.set(["clean", "label_k"], value, "test"))
    assert clean.CleanSettings.from_settings(settings).label_k == tuple(settings.get("clean.label_k"))


def test_combine_of_no_rows_is_an_oof_error():
    with pytest.raises(clean.OofError, match="no rows"):
        clean.combine([clean.Oof([], np.zeros(0, np.int64), np.zeros((0, len(CLASSES))), [])])


def test_cli_reports_a_missing_oof_in_one_line(tmp_path, capsys):
    from museum_typology import cli

    code = cli.main(["clean", "--oof", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "missing.parquet: no such out-of-fold file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()



def test_cli_refuses_an_empty_oof_before_spark_starts(tmp_path, capsys, monkeypatch):
    from museum_typology import cli

    monkeypatch.setattr(cli, "_spark", lambda *a, **k: pytest.fail("Spark started for an unusable OOF file"))
    empty = write_oof(tmp_path / "text.parquet", [], [], np.zeros((0, len(CLASSES))))
    code = cli.main(["clean", "--oof", empty, "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "text.parquet: no rows" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the cleaned manifest, read back


def test_read_cleaned_labels_reads_the_job_format_and_the_hand_made_one(tmp_path):
    job = pa.table({"guid": ["a", "b", "c"], "new_label": [CLASSES[A], CLASSES[C], None], "action": ["keep", "relabel", "drop"]})
    pq.write_table(job, str(tmp_path / "m.parquet"))
    assert clean.read_cleaned_labels(str(tmp_path / "m.parquet")) == {"a": CLASSES[A], "b": CLASSES[C], "c": None}
    pacsv.write_csv(job, str(tmp_path / "m.csv"))
    assert clean.read_cleaned_labels(str(tmp_path / "m.csv")) == {"a": CLASSES[A], "b": CLASSES[C], "c": None}
    hand = pa.table({"guid": ["a", "b"], "typology": [CLASSES[B], CLASSES[A]], "keep": [True, False]})
    pq.write_table(hand, str(tmp_path / "h.parquet"))
    assert clean.read_cleaned_labels(str(tmp_path / "h.parquet")) == {"a": CLASSES[B], "b": None}
    pq.write_table(pa.table({"guid": ["a"], "label": ["x"]}), str(tmp_path / "bad.parquet"))
    with pytest.raises(clean.OofError, match="needs guid, new_label, action"):
        clean.read_cleaned_labels(str(tmp_path / "bad.parquet"))


def test_csv_manifest_guids_are_text_like_in_parquet(tmp_path):
    # Numeric guids stay strings, and "NA" / "null" are guids, not missing values.
    job = pa.table({"guid": ["1001", "1002", "NA", "null"], "new_label": [CLASSES[C], None, CLASSES[B], CLASSES[A]], "action": ["relabel", "drop", "relabel", "keep"]})
    pq.write_table(job, str(tmp_path / "m.parquet"))
    pacsv.write_csv(job, str(tmp_path / "m.csv"))
    expected = {"1001": CLASSES[C], "1002": None, "NA": CLASSES[B], "null": CLASSES[A]}
    assert clean.read_cleaned_labels(str(tmp_path / "m.parquet")) == expected
    assert clean.read_cleaned_labels(str(tmp_path / "m.csv")) == expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_with_empty_or_duplicate_guids_is_refused(tmp_path, suffix):
    def write(name: str, table: pa.Table) -> str:
        path = str(tmp_path / (name + suffix))
        pacsv.write_csv(table, path) if suffix == ".csv" else pq.write_table(table, path)
        return path

    for guids, message in ((["a", None], "empty guid in 1 row"), (["a", ""], "empty guid in 1 row"), (["a", "a"], "1 guid\\(s\\) appear more than once, e.g. a")):
        bad = write("g", pa.table({"guid": pa.array(guids, pa.string()), "new_label": [CLASSES[A]] * 2, "action": ["keep"] * 2}))
        with pytest.raises(clean.OofError, match=message):
            clean.read_cleaned_labels(bad)
    keep_without_label = write("k", pa.table({"guid": ["a"], "new_label": pa.array([None], pa.string()), "action": ["keep"]}))
    with pytest.raises(clean.OofError, match="guid a: action keep with an empty new_label"):
        clean.read_cleaned_labels(keep_without_label)


def test_hand_made_keep_empty_means_not_kept_in_csv_and_parquet(tmp_path):
    hand = pa.table({"guid": ["a", "b", "c", "d", "e"], "typology": [CLASSES[A]] * 5, "keep": pa.array(["true", "", None, "No", " 1 "], pa.string())})
    expected = {"a": CLASSES[A], "b": None, "c": None, "d": None, "e": CLASSES[A]}
    pq.write_table(hand, str(tmp_path / "h.parquet"))
    assert clean.read_cleaned_labels(str(tmp_path / "h.parquet")) == expected
    pacsv.write_csv(hand, str(tmp_path / "h.csv"))  # "" and null both become an empty cell here
    assert clean.read_cleaned_labels(str(tmp_path / "h.csv")) == expected
    (tmp_path / "typed.csv").write_text(f"guid,typology,keep\nx,{CLASSES[B]},\ny,{CLASSES[B]},1\n", encoding="utf-8")  # an empty cell as a spreadsheet writes it
    assert clean.read_cleaned_labels(str(tmp_path / "typed.csv")) == {"x": None, "y": CLASSES[B]}
    pq.write_table(pa.table({"guid": ["a", "b"], "typology": [CLASSES[A]] * 2, "keep": pa.array([True, None], pa.bool_())}), str(tmp_path / "b.parquet"))
    assert clean.read_cleaned_labels(str(tmp_path / "b.parquet")) == {"a": CLASSES[A], "b": None}
    pq.write_table(pa.table({"guid": ["a"], "typology": [CLASSES[A]], "keep": ["maybe"]}), str(tmp_path / "x.parquet"))
    with pytest.raises(clean.OofError, match="guid a: keep = 'maybe' is not a yes/no value"):
        clean.read_cleaned_labels(str(tmp_path / "x.parquet"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_hand_made_manifest_guids_are_stripped_like_the_catalogues(tmp_path, suffix):
    # "abc " named nothing (the training rows' guids are stripped) and the drop was lost silently.
    hand = pa.table({"guid": ["abc ", " def"], "typology": [CLASSES[A], CLASSES[B]], "keep": ["no", "yes"]})
    path = str(tmp_path / ("h" + suffix))
    pacsv.write_csv(hand, path) if suffix == ".csv" else pq.write_table(hand, path)
    assert clean.read_cleaned_labels(path) == {"abc": None, "def": CLASSES[B]}
    twice = pa.table({"guid": ["abc", "abc "], "typology": [CLASSES[A], CLASSES[B]]})
    pq.write_table(twice, str(tmp_path / "t.parquet"))
    with pytest.raises(clean.OofError, match="1 guid\\(s\\) appear more than once, e.g. abc"):
        clean.read_cleaned_labels(str(tmp_path / "t.parquet"))


def test_manifest_guids_outside_the_training_rows_are_warned_about(caplog):
    from museum_typology.text_model import LabelledTexts

    data = LabelledTexts(guids=["a", "b"], texts=["t1", "t2"], y=np.array([A, B]))
    with caplog.at_level("WARNING"):
        cleaned = clean.apply_cleaned_labels(data, {"a": None, "zz": None})
    assert cleaned.guids == ["b"]
    assert "1 manifest guid(s) are not among the 2 labelled titles and change nothing, e.g. ['zz']" in caplog.text


def test_a_manifest_naming_an_unlabelled_image_does_not_make_it_a_training_row(monkeypatch, caplog):
    """train-image added the manifest's label to dataset images that had none (a test row named
    in a hand-made file trained the image model), where train-text leaves such guids out."""
    import pyarrow as pa

    from museum_typology import petastorm_io, train_image

    table = pa.table({"guid": ["a", "b", "test1"], "typology": [CLASSES[A], CLASSES[B], None], "sha256": ["1", "2", "3"]})
    monkeypatch.setattr(petastorm_io, "read_columns", lambda url, columns, s3: table)
    manifest = clean.CleanedManifest(labels={"a": CLASSES[C], "b": None, "test1": CLASSES[A]}, lineage={"url": "by_hand.csv"})
    with caplog.at_level("WARNING"):
        labels, _ = train_image.read_labels("dataset", manifest, None)
    assert labels == {"a": C}
    assert "1 manifest guid(s) are not among the 2 labelled images of dataset and change nothing, e.g. ['test1']" in caplog.text


def test_apply_cleaned_labels_to_the_text_training_rows():
    from museum_typology.text_model import LabelledTexts

    data = LabelledTexts(guids=["a", "b", "c", "d"], texts=["t1", "t2", "t3", "t4"], y=np.array([A, A, B, B]))
    cleaned = clean.apply_cleaned_labels(data, {"a": CLASSES[A], "b": CLASSES[C], "c": None})
    assert cleaned.guids == ["a", "b", "d"] and cleaned.texts == ["t1", "t2", "t4"]
    assert cleaned.y.tolist() == [A, C, B]  # d is not in the manifest: its label stays


# ---------------------------------------------------------------- a known share of flipped labels, against cleanlab


def synthetic_catalogue(seed: int = 0, flip_share: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """15 imbalanced classes (300 down to 20 rows) of overlapping Gaussian blobs; ``flip_share``
    of the labels flipped, half of them to a fixed neighbour class (group noise, like rare books
    filed under documents), half to a random other class. Out-of-fold probabilities of a 5-fold
    logistic regression trained on the noisy labels, as the fold models give them.
    Returns given labels, true labels, the flipped mask, and the probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    sizes = np.array([300, 260, 220, 180, 150, 120, 100, 90, 80, 60, 50, 40, 30, 25, 20])
    y_true = np.repeat(np.arange(len(CLASSES)), sizes)
    x = rng.normal(0, 0.9, (len(CLASSES), 16))[y_true] + rng.normal(0, 1, (len(y_true), 16))
    flipped = np.zeros(len(y_true), dtype=bool)
    flipped[rng.choice(len(y_true), int(flip_share * len(y_true)), replace=False)] = True
    y = y_true.copy()
    for i in np.where(flipped)[0]:
        y[i] = (y_true[i] + 1) % len(CLASSES) if rng.random() < 0.5 else rng.choice([c for c in range(len(CLASSES)) if c != y_true[i]])
    proba = np.zeros((len(y), len(CLASSES)))
    for train, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        proba[held] = LogisticRegression(C=1.0, max_iter=1000).fit(x[train], y[train]).predict_proba(x[held])
    return y, y_true, flipped, proba


def _precision_recall_f1(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    hits = int((found & truth).sum())
    precision = hits / max(int(found.sum()), 1)
    recall = hits / int(truth.sum())
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)


def test_our_noise_rate_suspects_are_cleanlabs():
    """The confident-learning core reimplemented here picks (almost) the rows cleanlab's
    ``find_label_issues(filter_by="prune_by_noise_rate")`` picks on the same probabilities."""
    from cleanlab.filter import find_label_issues

    y, _, _, proba = synthetic_catalogue(seed=1)
    ev = clean.evidence(proba, y, clean.class_thresholds(proba, y))
    ours = clean.suspects(proba, y, ev, "noise_rate")
    theirs = find_label_issues(y, proba, filter_by="prune_by_noise_rate")
    jaccard = (ours & theirs).sum() / (ours | theirs).sum()
    print(f"\nnoise-rate suspects: ours {ours.sum()}, cleanlab {theirs.sum()}, Jaccard {jaccard:.3f}")
    assert jaccard >= 0.9


def test_flipped_labels_found_by_the_job_match_or_beat_cleanlab(spark, settings, tmp_path):
    from cleanlab.filter import find_label_issues

    y, y_true, flipped, proba = synthetic_catalogue(seed=0, flip_share=0.15)
    guids = [f"row-{i:05d}" for i in range(len(y))]
    # One k per scope (no silhouette passes) keeps the 16 KMeans fits of this test short.
    oof = write_oof(tmp_path / "text.parquet", guids, y, proba)
    settings = settings.with_values({"clean": {"overall_k": [15], "label_k": [2], "max_iter": 10}}, "test")
    summary = clean.run(spark, settings, [oof], str(tmp_path / "clean"), data_dir=str(tmp_path / "no-data"))
    manifest = pq.read_table(str(tmp_path / "clean" / "cleaned_manifest.parquet")).to_pandas().set_index("guid").loc[guids]
    changed = (manifest["action"] != "keep").to_numpy()
    ours = _precision_recall_f1(changed, flipped)
    cleanlab = _precision_recall_f1(find_label_issues(y, proba), flipped)
    relabelled = (manifest["action"] == "relabel").to_numpy()
    right_label = np.mean([CLASS_INDEX[t] == y_true[i] for i, t in zip(np.where(relabelled)[0], manifest["new_label"][relabelled])])
    print(
        f"\n{flipped.sum()} of {len(y)} labels flipped ({flipped.mean():.0%}); the job changed {changed.sum()} rows "
        f"(relabel {summary['actions']['relabel']}, drop {summary['actions']['drop']}; {right_label:.0%} of the relabels restore the true label)\n"
        f"  the job (relabel or drop): precision {ours[0]:.3f}  recall {ours[1]:.3f}  F1 {ours[2]:.3f}\n"
        f"  cleanlab find_label_issues: precision {cleanlab[0]:.3f}  recall {cleanlab[1]:.3f}  F1 {cleanlab[2]:.3f}"
    )
    assert ours[1] >= 0.75, "the job should find most flipped labels"
    assert ours[0] >= cleanlab[0] - 0.01 and ours[2] >= cleanlab[2] - 0.01, "match or beat cleanlab"
    assert right_label >= 0.6


# ---------------------------------------------------------------- the job end to end on tiny data


def _tiny_dataset(spark, url: str, guids: list[str], typologies: list[str] | None = None) -> None:
    """A petastorm dataset holding an image for each guid (and its typology, when given), written
    the way ingest writes it."""
    from museum_typology import petastorm_io
    from museum_typology.schema import ImageItemSchema

    writer = petastorm_io.PartWriter(f"{url}/part-00000.parquet", ImageItemSchema, 1 << 20)
    rng = np.random.default_rng(0)
    for n, guid in enumerate(guids):
        image = np.full((40 + n, 60, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        row = {"guid": guid, "split": "train_images", "typology": typologies[n] if typologies else None, "description": None, "image": image, "orig_width": 60, "orig_height": 40 + n, "sha256": f"{n:064x}"}
        writer.add(petastorm_io.encode_row(ImageItemSchema, row))
    writer.close()
    petastorm_io.write_metadata(url, ImageItemSchema, spark.sparkContext)


def test_job_end_to_end_writes_every_row_once_and_a_review_page(spark, settings, tmp_path):
    rng = np.random.default_rng(3)
    # Text: 30 rows of A (6 of them a group the models call B), 20 of B, 12 of C.
    text_rows = [({A: 0.85 + 0.1 * rng.random()}, A) for _ in range(24)] + [({A: 0.05, B: 0.85 + 0.05 * rng.random()}, A) for _ in range(6)]
    text_rows += [({B: 0.8 + 0.15 * rng.random()}, B) for _ in range(20)] + [({C: 0.7 + 0.2 * rng.random()}, C) for _ in range(12)]
    text_guids = [f"t{i:03d}" for i in range(len(text_rows))]
    # Image: the 6 grouped rows again (same guids, same labels) and 4 image-only rows of C.
    image_guids = text_guids[24:30] + [f"i{i:03d}" for i in range(4)]
    image_rows = [({A: 0.1, B: 0.8}, A)] * 6 + [({C: 0.9}, C)] * 4
    text_oof = write_oof(tmp_path / "text.parquet", text_guids, [r[1] for r in text_rows], _proba([r[0] for r in text_rows]))
    image_oof = write_oof(tmp_path / "image.parquet", image_guids, [r[1] for r in image_rows], _proba([r[0] for r in image_rows]))
    dataset = str(tmp_path / "dataset")
    _tiny_dataset(spark, dataset, image_guids, [CLASSES[r[1]] for r in image_rows])
    data = tmp_path / "data"
    data.mkdir()
    titles = {g: f"Заголовок {g}" for g in text_guids}
    titles[text_guids[24]] = 'Книга <script>alert("x")</script> & Co'
    (data / "train.csv").write_text("guid,description,typology\n" + "".join(f'{g},"{t.replace(chr(34), chr(34) * 2)}",{CLASSES[A]}\n' for g, t in titles.items()), encoding="utf-8")
    settings = settings.with_values({"clean": {"overall_k": [3, 4], "label_k": [2], "min_cluster_size": 3}}, "test")
    out = tmp_path / "clean"

    summary = clean.run(spark, settings, [text_oof, image_oof], str(out), dataset_url=dataset, data_dir=str(data))

    for name in ("cleaned_manifest.parquet", "cleaned_manifest.csv", "review/index.html", "summary.json", "clusters.csv", "_SUCCESS"):
        assert (out / name).is_file(), name
    manifest = pq.read_table(str(out / "cleaned_manifest.parquet"))
    assert manifest.schema.equals(clean.MANIFEST_SCHEMA)
    all_guids = sorted(set(text_guids) | set(image_guids))
    assert sorted(manifest.column("guid").to_pylist()) == all_guids  # every input row exactly once
    csv = pacsv.read_csv(str(out / "cleaned_manifest.csv"))
    assert csv.num_rows == manifest.num_rows and csv.column_names == manifest.column_names
    rows = {r["guid"]: r for r in manifest.to_pylist()}
    assert rows[text_guids[24]]["sources"] == "text+image" and rows["i000"]["sources"] == "image"
    for g in text_guids[24:30]:  # the group: relabelled to B, by confident learning and its cluster
        assert rows[g]["action"] == "relabel" and rows[g]["new_label"] == CLASSES[B], rows[g]["reason"]
        assert "cluster" in rows[g]["reason"]
    assert all(rows[g]["action"] == "keep" for g in text_guids[:24])
    assert summary["actions"] == {"keep": len(all_guids) - 6, "relabel": 6, "drop": 0}
    # What a model trained on this manifest records of it: the bundles whose predictions decided.
    assert summary["input_models"] == {text_oof: {"source": "text", "versions": ["test"]}, image_oof: {"source": "image", "versions": ["test"]}}
    lineage = clean.read_cleaned_manifest(str(out / "cleaned_manifest.parquet")).lineage
    assert lineage == {"url": str(out / "cleaned_manifest.parquet"), "sha256": hashlib.sha256((out / "cleaned_manifest.parquet").read_bytes()).hexdigest(), "made_from": summary["input_models"]}
    (tmp_path / "by_hand.csv").write_text("guid,typology\nt000,графика\n", encoding="utf-8")
    assert set(clean.read_cleaned_manifest(str(tmp_path / "by_hand.csv")).lineage) == {"url", "sha256"}
    # The image fold runs among them: what train-image keys on and score pairs a final bundle by.
    assert clean.image_fold_runs(lineage) == ["test"]
    for record in (None, {"url": "x"}, {"made_from": {text_oof: {"source": "text", "versions": ["T1"]}}}, {"made_from": ["I1"]}, {"made_from": {image_oof: {"source": "image", "versions": "I1"}}}):
        assert clean.image_fold_runs(record) == [], record
    group = [c for c in summary["suspicious_clusters"] if c["scope"] == CLASSES[A]]
    assert len(group) == 1 and group[0]["size"] == 6 and group[0]["dominant_predicted"] == CLASSES[B]
    per_class = {r["class"]: r for r in summary["per_class"]}
    assert per_class[CLASSES[A]]["relabelled"] == 6 and per_class[CLASSES[B]]["relabelled_into"] == 6
    json.loads((out / "summary.json").read_text())

    page = (out / "review" / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "Книга &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in page
    assert "Заголовок t025" in page
    assert summary["review_montages"] >= 1
    montage = next(out.glob("review/cluster_*.png"))
    assert f'src="{montage.name}"' in page
    from PIL import Image

    assert Image.open(io.BytesIO(montage.read_bytes())).size[0] > 100

    # The training jobs read it back: train-image's labels come from the manifest.
    from museum_typology import train_image

    labels, _ = train_image.read_labels(dataset, clean.read_cleaned_manifest(str(out / "cleaned_manifest.parquet")), None)
    assert labels[text_guids[24]] == B and labels["i000"] == C


def test_a_manifest_rewritten_while_it_is_read_is_recorded_with_the_hash_of_the_labels_used(tmp_path, monkeypatch):
    """A training job records the manifest it trained on by its sha256. The labels and the hash
    come from one read of the file: were it read twice, a manifest rewritten in between (a clean
    job run again beside the training) would be recorded with the new file's hash under the old
    file's labels."""
    from museum_typology import storage

    path = tmp_path / "m.csv"
    first = "guid,typology\na,графика\n".encode()
    second = "guid,typology\na,живопись\n".encode()
    path.write_bytes(first)
    real_read = storage.read_bytes

    def read_then_rewrite(url, s3=None):
        data = real_read(url, s3)
        if url == str(path):
            path.write_bytes(second)  # the next reader of the file gets other labels
        return data

    monkeypatch.setattr(storage, "read_bytes", read_then_rewrite)
    manifest = clean.read_cleaned_manifest(str(path))
    assert manifest.labels == {"a": "графика"}
    assert manifest.lineage == {"url": str(path), "sha256": hashlib.sha256(first).hexdigest()}


def test_labels_with_few_distinct_vectors_are_clustered_without_failing(spark):
    """Identical titles give identical OOF vectors: Spark's KMeans failed (ArrayIndexOutOfBounds)
    when a label had fewer distinct vectors than k. k now stops at the distinct count."""
    rng = np.random.default_rng(4)
    three = rng.dirichlet(np.ones(len(CLASSES)), 3)
    same = rng.dirichlet(np.ones(len(CLASSES)))
    proba = np.vstack([three[np.arange(30) % 3], np.tile(same, (10, 1))])  # A: 3 distinct vectors in 30 rows; B: 1 in 10
    y = np.array([A] * 30 + [B] * 10)
    oof = clean.Oof([f"g{i}" for i in range(40)], y, proba, ["text"] * 40, np.zeros(40, np.int64))
    cs = clean.CleanSettings(overall_k=(3,), label_k=(2, 4), min_cluster_size=2, max_iter=5, parallel_fits=2)
    label_cluster, _, k_choice = clean.spark_clusters(spark, oof, cs)
    assert k_choice[CLASSES[B]] == {"k": 1, "rows": 10, "distinct": 1, "silhouette": {}}
    assert k_choice[CLASSES[A]]["k"] == 2 and k_choice[CLASSES[A]]["distinct"] == 3
    assert (label_cluster[30:] == 0).all()
    # Identical vectors land in the same cluster; the 3 vectors fill 2 clusters.
    assert all(len(set(label_cluster[:30][np.arange(30) % 3 == v])) == 1 for v in range(3)) and set(label_cluster[:30]) == {0, 1}


def test_job_checks_the_manifest_against_the_rows_it_read(settings, tmp_path, monkeypatch):
    """The "every input row exactly once" check compares with the files' rows, so a row lost
    between reading and writing fails the job instead of leaving the manifest short."""
    y = np.array([A] * 4 + [B] * 3)
    proba = _proba([{A: 0.9}] * 4 + [{B: 0.9}] * 3)
    oof = write_oof(tmp_path / "text.parquet", [f"g{i}" for i in range(7)], y, proba)
    # No Spark needed: one cluster per scope, as for labels too small to cluster.
    monkeypatch.setattr(clean, "spark_clusters", lambda spark, o, cs: (np.zeros(len(o), np.int64), np.zeros(len(o), np.int64), {}))
    summary = clean.run(None, settings, [oof], str(tmp_path / "ok"), data_dir=str(tmp_path / "no-data"))
    assert summary["rows"] == 7 and (tmp_path / "ok" / "_SUCCESS").is_file()

    combine = clean.combine

    def lose_a_row(oofs):
        o = combine(oofs)
        return clean.Oof(o.guids[:-1], o.y[:-1], o.proba[:-1], o.sources[:-1], o.fold[:-1])

    monkeypatch.setattr(clean, "combine", lose_a_row)
    from museum_typology.errors import InternalError

    with pytest.raises(InternalError, match="exactly once.*7 guids read, 6 rows written: 1 missing"):
        clean.run(None, settings, [oof], str(tmp_path / "short"), data_dir=str(tmp_path / "no-data"))
    assert not (tmp_path / "short").exists()


def test_review_page_without_images_or_titles_says_so():
    cs = clean.CleanSettings(suspicious_min_size=2)
    y = np.array([A] * 4 + [B] * 3)
    proba = _proba([{A: 0.9}] * 2 + [{A: 0.05, B: 0.9}] * 2 + [{B: 0.9}] * 3)
    cleaned = clean.clean_labels(clean.Oof([f"g{i}" for i in range(7)], y, proba, ["text"] * 7), cs, np.array([0, 0, 1, 1, 0, 0, 0]), np.zeros(7, np.int64))
    from museum_typology.config import load_settings

    page = review.build(cleaned, clean.per_class_counts(y, cleaned.actions, cleaned.new_labels, cleaned.suspected), cs, "/nonexistent/dataset", "/nonexistent/data", load_settings(environ={}), None)
    html = page.files["index.html"].decode()
    assert "titles unavailable" in html and "no images of this cluster" in html and page.montages == 0


def test_review_page_reads_only_the_images_of_the_tiles_it_shows(monkeypatch):
    """Every image of a shown cluster was read and shrunk (tens of thousands at catalogue scale),
    for at most review_thumbnails tiles each."""
    cs = clean.CleanSettings(suspicious_min_size=2, review_thumbnails=3)
    n = 40
    y = np.array([A] * n)
    proba = _proba([{A: 0.05, B: 0.9}] * n)
    cleaned = clean.clean_labels(clean.Oof([f"g{i:02d}" for i in range(n)], y, proba, ["image"] * n), cs, np.zeros(n, np.int64), np.zeros(n, np.int64))
    asked = []
    monkeypatch.setattr(review, "read_thumbnails", lambda url, guids, s3: asked.append(set(guids)) or ({}, None))
    from museum_typology.config import load_settings

    review.build(cleaned, clean.per_class_counts(y, cleaned.actions, cleaned.new_labels, cleaned.suspected), cs, "/nonexistent/dataset", "/nonexistent/data", load_settings(environ={}), None)
    shown = review.shown_clusters(cleaned.clusters, cs.review_max_clusters)
    assert len(asked) == 1 and shown and 0 < len(asked[0]) <= 2 * cs.review_thumbnails * len(shown) < n  # twice the tiles: spares for unreadable images


def test_review_titles_are_those_of_the_rows_the_models_read(tmp_path):
    """A guid repeated in train.csv: the first row is read, the repeat rejected; the page showed the repeat's title."""
    from museum_typology.config import load_settings

    (tmp_path / "train.csv").write_text(f"guid,description,typology\ng1,Старинная книга,{CLASSES[A]}\ng1,Совсем другое описание,{CLASSES[A]}\n", encoding="utf-8")
    titles, note = review.read_titles(str(tmp_path), load_settings(environ={}), None)
    assert titles == {"g1": "Старинная книга"} and note is None


def test_kmeans_reads_its_rows_in_the_same_order_whatever_order_they_come_in(spark):
    """KMeans starts from centres drawn by walking each partition in order, so the clusters of
    one seed depended on the order a cluster's shuffle fetched the rows in. Rows handed over in
    reverse order (as a shuffle may deliver them) come out in row order, in at most 2 partitions."""
    import pandas as pd

    n = 2500
    frame = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "label": ["a"] * n, "x": [[float(i)] for i in range(n)]})
    layouts = []
    for ordered in (frame, frame.iloc[::-1].reset_index(drop=True)):
        parts = clean.clustering_frame(spark, ordered).rdd.glom().map(lambda rows: [r["row"] for r in rows]).collect()
        assert 1 <= len(parts) <= 2 and sorted(r for part in parts for r in part) == list(range(n))
        assert all(part == sorted(part) for part in parts)
        layouts.append(parts)
    assert layouts[0] == layouts[1]


def test_the_review_page_shows_control_characters_of_a_title_as_text():
    """html.escape leaves a NUL or ESC of a catalogue title in the page, which is then not valid
    HTML; tab and line breaks are whitespace there and stay."""
    from museum_typology import review

    assert review._e('Книга\x00 <b>\x1b"1812"\tг.\n') == "Книга\\x00 &lt;b&gt;\\x1b&quot;1812&quot;\tг.\n"
