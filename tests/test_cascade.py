"""The cascade decision, its tuning on out-of-fold predictions, and the tune-cascade job."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from museum_typology import cli, tune_cascade
from museum_typology.config import load_settings
from museum_typology.cascade import CascadeParams, Routing, cross_fitted, decide, paired_oof, tune
from museum_typology.schema import CLASSES

K = len(CLASSES)


def one_hot(label: int, top: float) -> np.ndarray:
    row = np.full(K, (1.0 - top) / (K - 1))
    row[label] = top
    return row


def test_each_branch_of_the_cascade():
    params = CascadeParams(t_text=0.7, t_image=0.6, w_text=0.5, default_class=CLASSES[14])
    text = np.array([one_hot(1, 0.9), one_hot(1, 0.5), one_hot(1, 0.5), one_hot(2, 0.4), one_hot(1, 0.3), np.zeros(K)])
    image = np.array([one_hot(3, 0.99), one_hot(3, 0.65), one_hot(3, 0.55), np.zeros(K), one_hot(4, 0.2), np.zeros(K)])
    has_text = np.array([True, True, True, True, False, False])
    has_image = np.array([True, True, True, False, True, False])
    d = decide(text, image, has_text, has_image, params)
    assert list(d.source) == ["text", "image", "blend", "text", "image", "default"]
    # confident text wins over a more confident image; a weak text alone still decides;
    # a weak image alone still decides; nothing -> the default class with confidence 0.
    assert list(d.label) == [1, 3, 3, 2, 4, 14]
    assert d.confidence[0] == pytest.approx(0.9) and d.confidence[3] == pytest.approx(0.4) and d.confidence[5] == 0.0
    # the blend is w * text + (1 - w) * image: 0.5 * 0.5 + 0.5 * small vs 0.5 * 0.55 + ...
    assert d.confidence[2] == pytest.approx(0.5 * 0.55 + 0.5 * (0.5 / (K - 1)))


def test_a_modality_with_non_finite_probabilities_counts_as_missing():
    params = CascadeParams(t_text=0.7, t_image=0.6, w_text=0.5, default_class=CLASSES[14])
    nan = np.full(K, np.nan)
    text = np.array([nan, nan, one_hot(2, 0.4), one_hot(2, 0.4)])
    image = np.array([one_hot(3, 0.3), nan, nan, np.where(np.arange(K) == 5, np.inf, 0.0)])
    d = decide(text, image, [True, True, True, True], [True, False, True, True], params)
    # NaN text -> the image decides (even a weak one); NaN text and no image -> the default with
    # confidence 0; a NaN or infinite image -> the text decides alone, not a blend.
    assert list(d.source) == ["image", "default", "text", "text"]
    assert list(d.label) == [3, 14, 2, 2]
    assert np.isfinite(d.confidence).all() and d.confidence[1] == 0.0 and d.confidence[0] == pytest.approx(0.3)


def test_routing_labels_are_decides_labels_for_every_point_of_a_grid():
    """tune decides the same pairs once per grid point from one Routing (at 180K images' pairs,
    decide from scratch took 3.5 s a point, 70 minutes a tuning): the labels must be decide's."""
    rng = np.random.default_rng(5)
    n = 400
    text, image = rng.dirichlet(np.full(K, 0.3), n), rng.dirichlet(np.full(K, 0.3), n)
    text[::17] = np.nan
    image[::13, 2] = np.inf
    has_text, has_image = rng.random(n) < 0.8, rng.random(n) < 0.8
    routing = Routing(text, image, has_text, has_image)
    for t_text in (0.0, 0.3, 0.7, 1.5):
        for t_image in (0.0, 0.5, 0.9):
            for w_text in (0.0, 0.35, 1.0):
                params = CascadeParams(t_text, t_image, w_text, CLASSES[3])
                assert (routing.labels(params) == decide(text, image, has_text, has_image, params).label).all()


def test_macro_f1_is_scikit_learns_to_the_bit():
    from sklearn.metrics import f1_score

    from museum_typology.report import macro_f1

    rng = np.random.default_rng(11)
    for _ in range(500):
        n = int(rng.integers(1, 200))
        y = rng.integers(0, int(rng.integers(1, K + 1)), n)
        pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, K, n))
        labels = None if rng.random() < 0.5 else sorted(rng.choice(K, int(rng.integers(1, K + 1)), replace=False).tolist())
        expected = f1_score(y, pred, labels=sorted(set(y.tolist())) if labels is None else labels, average="macro", zero_division=0)
        assert macro_f1(y, pred, labels) == float(expected)
        assert macro_f1(y.tolist(), pred.tolist(), labels) == float(expected)
    assert macro_f1(["a", "b"], ["a", "a"]) == float(f1_score(["a", "b"], ["a", "a"], average="macro", zero_division=0))  # not class indices
    with pytest.raises(ValueError):
        macro_f1([0, 1, 2], [0])


def test_cross_fitting_needs_two_folds_and_tuning_a_grid():
    rng = np.random.default_rng(1)
    y, proba = _oof(4, [0, 1], 2.0, rng)
    for folds in (1, 0):
        with pytest.raises(ValueError, match=f"at least 2 folds, got {folds}"):
            cross_fitted(proba, proba, y, np.arange(len(y)), folds, [0.7], [0.5], CLASSES[14], seed=0)
    with pytest.raises(ValueError, match="nothing to choose from"):
        tune(proba, proba, y, [], [0.5], CLASSES[14])


def test_params_are_checked():
    with pytest.raises(ValueError, match="default_class"):
        CascadeParams(default_class="картины")
    with pytest.raises(ValueError, match="w_text"):
        CascadeParams(w_text=1.5)


def _oof(n_per_class: int, classes: list[int], strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(classes, n_per_class)
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += strength
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_tuning_finds_the_better_modality_and_is_honest_about_it():
    rng = np.random.default_rng(0)
    classes = [0, 3, 7, 12, 14]
    # An overconfident text model (top probability 0.85, right half of the time) and a good image one.
    t_y = np.repeat(classes, 60)
    guessed = np.where(rng.random(len(t_y)) < 0.5, t_y, rng.choice(classes, size=len(t_y)))
    t_proba = np.array([one_hot(c, 0.85) for c in guessed])
    i_y, i_proba = _oof(20, classes, 4.0, rng)  # strong image
    text, image, y, groups = paired_oof(t_proba, t_y, i_proba, i_y, per_image=5, seed=1)
    assert len(y) == 100 * 5 and set(groups) == set(range(100))
    assert text.shape == image.shape == (500, K) and all(i_y[g] == c for g, c in zip(groups, y))
    best, table = tune(text, image, y, [0.7, 0.5, 0.9, 1.01], [0.5, 0.2, 0.8], CLASSES[14])
    assert len(table) == 4 * 4 * 3
    ones = np.ones(len(y), dtype=bool)
    from museum_typology.report import macro_f1

    tuned = macro_f1(y, decide(text, image, ones, ones, best).label)
    baseline = macro_f1(y, decide(text, image, ones, ones, CascadeParams(default_class=CLASSES[14])).label)
    assert tuned >= baseline and tuned > macro_f1(y, text.argmax(1))
    assert best.t_text > 0.85 and tuned > baseline + 0.1  # trusting the text less is what helps here
    held = cross_fitted(text, image, y, groups, 4, [0.7, 0.5, 0.9, 1.01], [0.5, 0.2, 0.8], CLASSES[14], seed=0)
    assert held.shape == y.shape and macro_f1(y, held) <= tuned + 1e-9


def test_paired_oof_skips_labels_without_text():
    t_y, i_y = np.array([0, 0]), np.array([0, 5])
    text, image, y, groups = paired_oof(np.eye(K)[[0, 0]], t_y, np.eye(K)[[0, 5]], i_y, per_image=3, seed=0)
    assert list(y) == [0, 0, 0] and list(groups) == [0, 0, 0]


def _write_oof(path, y, proba, version, guids=None):
    """An out-of-fold file; its guids are the file's stem and a number unless given (a text and an
    image file share no guid, whose labels would have to agree)."""
    guids = guids if guids is not None else [f"{path.stem}{i}" for i in range(len(y))]
    pd.DataFrame({"guid": guids, "label": [CLASSES[c] for c in y], "fold": 0, "proba": list(proba), "model_version": version}).to_parquet(path)


def test_tune_cascade_says_when_the_files_disagree_on_labels_and_refuses_mixed_model_versions(tmp_path, settings, caplog):
    """A text and an image file that give a shared guid different labels (train-text with a clean
    --manifest, the image folds without) were tuned on without a word. A file of several runs'
    predictions recorded its first row's version only (or none), so score could not tell that
    the cascade was tuned on another model."""
    settings = settings.with_values({"cascade": {"threshold_grid": [0.7, 0.9], "weight_grid": [0.5], "folds": 2, "pairs_per_image": 2}}, "test")
    rng = np.random.default_rng(6)
    t_y, t_proba = _oof(6, [0, 2], 1.5, rng)
    i_y, i_proba = _oof(3, [0, 2], 3.0, rng)
    _write_oof(tmp_path / "text.parquet", t_y, t_proba, "t1", guids=[f"g{i}" for i in range(12)])
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "i1", guids=[f"g{i}" for i in range(6)])  # g3-g5: class 2 here, class 0 in the text file
    with caplog.at_level("WARNING"):
        result = tune_cascade.run(settings, str(tmp_path / "text.parquet"), str(tmp_path / "image.parquet"), str(tmp_path / "cascade"))
    assert result["metrics"]["inputs"]["label_disagreements"] == 3
    assert "3 guid(s) labelled otherwise in" in caplog.text and "e.g. g3:" in caplog.text
    assert "3 guid(s) are labelled otherwise in the text file" in (tmp_path / "cascade" / result["version"] / "report.md").read_text()
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, [None, "vA", "vB", "vA", "vA", "vA"])
    with pytest.raises(tune_cascade.TuneError, match=r"image.parquet: holds out-of-fold predictions of 2 model versions \(vA, vB\); tune on one training run's file"):
        tune_cascade.read_oof(str(tmp_path / "image.parquet"), None, "image")
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, [None, "vA", "vA", "vA", "vA", "vA"])
    assert tune_cascade.read_oof(str(tmp_path / "image.parquet"), None, "image")[3] == "vA"  # not the first row's empty value


def test_a_tuned_cascade_without_its_values_is_an_error_not_the_defaults(tmp_path, settings):
    """A cascade.json whose params lost a value scored with the [cascade] defaults under the
    tuned bundle's version."""
    from museum_typology.score import ScoreError, cascade_params

    bundle = tmp_path / "cascade" / "v1"
    bundle.mkdir(parents=True)
    (tmp_path / "cascade" / "latest").write_text("v1")
    (bundle / "_SUCCESS").write_text("")
    for params in ({}, {"t_text": 0.9, "t_image": 0.5}):
        (bundle / "cascade.json").write_text(json.dumps({"params": params, "metrics": {"inputs": {}}}))
        with pytest.raises(ScoreError, match="cascade.json: no usable cascade parameters .*no .*w_text.*; run tune-cascade again"):
            cascade_params(settings, str(tmp_path / "cascade"), None)
    (bundle / "cascade.json").write_text(json.dumps({"params": {"t_text": 0.9, "t_image": 0.5, "w_text": 0.3}, "metrics": {"inputs": {}}}))
    assert cascade_params(settings, str(tmp_path / "cascade"), None)[0].to_dict()["w_text"] == 0.3


def test_tune_cascade_job_writes_a_bundle_that_score_uses(tmp_path, settings):
    rng = np.random.default_rng(3)
    t_y, t_proba = _oof(30, [0, 2, 7], 1.5, rng)
    i_y, i_proba = _oof(10, [0, 2, 7], 3.0, rng)
    _write_oof(tmp_path / "text.parquet", t_y, t_proba, "t1")
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "i1")
    models = tmp_path / "models"
    code = cli.main(["tune-cascade", "--set", f"paths.work_dir={tmp_path}", "--text-oof", str(tmp_path / "text.parquet"), "--image-oof", str(tmp_path / "image.parquet"), "--model-dir", str(models / "cascade")])
    assert code == 0
    bundle = models / "cascade" / (models / "cascade" / "latest").read_text()
    saved = json.loads((bundle / "cascade.json").read_text())
    assert set(saved["params"]) == {"t_text", "t_image", "w_text", "default_class"}
    assert saved["metrics"]["pairs"] == 30 * settings.get("cascade.pairs_per_image")
    # The configured folds (5), not the folds each estimate is tuned on (4).
    assert saved["metrics"]["folds"] == settings.get("cascade.folds") == 5
    assert "tuned on the other 4 folds' images" in (bundle / "report.md").read_text()
    assert (bundle / "_SUCCESS").is_file()  # committed atomically, like the text and image bundles
    assert not [p.name for p in (models / "cascade").iterdir() if p.name.startswith(".")]  # no staging left
    from museum_typology.score import cascade_params

    params, version = cascade_params(settings, str(models / "cascade"), None)
    assert params.to_dict() == saved["params"] and version == bundle.name


def test_the_bundle_version_follows_the_data_not_only_its_model_version(tmp_path, settings):
    settings = settings.with_values({"cascade": {"threshold_grid": [0.7, 0.9], "weight_grid": [0.5], "folds": 2, "pairs_per_image": 2}}, "test")  # a small grid: three runs
    rng = np.random.default_rng(5)
    t_y, t_proba = _oof(20, [0, 2], 1.5, rng)
    i_y, i_proba = _oof(6, [0, 2], 3.0, rng)
    _write_oof(tmp_path / "text.parquet", t_y, t_proba, "same")
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "same")
    run = lambda: tune_cascade.run(settings, str(tmp_path / "text.parquet"), str(tmp_path / "image.parquet"), str(tmp_path / "cascade"))["version"].split("-")[-1]  # noqa: E731
    first = run()
    assert run() == first  # same data and settings: the same content hash
    _write_oof(tmp_path / "text.parquet", t_y, np.roll(t_proba, 1, axis=1), "same")  # new probabilities, same model_version
    assert run() != first


def test_the_same_inputs_and_settings_reuse_the_cascade_bundle(tmp_path, settings):
    """A new version on every run (a timestamp) changed every prediction's model_version, so a
    pipeline re-run on unchanged data made the next night's rescore score the whole catalogue."""
    settings = settings.with_values({"cascade": {"threshold_grid": [0.7, 0.9], "weight_grid": [0.5], "folds": 2, "pairs_per_image": 2}}, "test")
    rng = np.random.default_rng(5)
    t_y, t_proba = _oof(20, [0, 2], 1.5, rng)
    i_y, i_proba = _oof(6, [0, 2], 3.0, rng)
    _write_oof(tmp_path / "text.parquet", t_y, t_proba, "t1")
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "i1")
    run = lambda s: tune_cascade.run(s, str(tmp_path / "text.parquet"), str(tmp_path / "image.parquet"), str(tmp_path / "cascade"))  # noqa: E731
    first = run(settings)
    again = run(settings)
    assert again["reused"] and not first["reused"] and again["version"] == first["version"] and again["params"] == first["params"]
    assert sorted(p.name for p in (tmp_path / "cascade").iterdir() if p.name != "latest") == [first["version"]]
    # a damaged bundle is tuned again, not reused, nor a traceback
    saved = tmp_path / "cascade" / first["version"] / "cascade.json"
    intact = saved.read_text()
    saved.write_text(json.dumps({"run_key": json.loads(intact)["run_key"]}))
    assert not run(settings)["reused"]
    (tmp_path / "cascade" / "latest").write_text(first["version"])
    saved.write_text(intact)
    other = run(settings.set(["cascade", "weight_grid"], [0.3], "test"))  # other settings: tuned anew
    assert not other["reused"] and other["version"] != first["version"]
    assert (tmp_path / "cascade" / "latest").read_text() == other["version"]


def test_tune_cascade_clear_errors(tmp_path, capsys):
    code = cli.main(["tune-cascade", "--text-oof", str(tmp_path / "none.parquet"), "--image-oof", str(tmp_path / "none.parquet"), "--model-dir", str(tmp_path)])
    assert code == 2 and "none.parquet: no such out-of-fold file" in capsys.readouterr().err
    pd.DataFrame({"guid": ["a"], "label": ["картины"], "proba": [list(np.ones(K) / K)]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(tune_cascade.TuneError, match="unknown label"):
        tune_cascade.read_oof(str(tmp_path / "bad.parquet"), None, "text")
    # the two files the other way round: thresholds tuned on swapped roles
    rng = np.random.default_rng(3)
    _write_oof(tmp_path / "text.parquet", *_oof(6, [0], 1.5, rng), "t1")
    _write_oof(tmp_path / "image.parquet", *_oof(6, [0], 1.5, rng), "i1")
    with pytest.raises(tune_cascade.TuneError, match="image.parquet: holds out-of-fold predictions of the image model, given as the text one"):
        tune_cascade.run(load_settings(environ={}), str(tmp_path / "image.parquet"), str(tmp_path / "text.parquet"), str(tmp_path / "cascade"))


def test_tune_cascade_with_a_single_image_row_to_pair_is_one_error_line(tmp_path, capsys):
    """The cross-fitted estimate had no other image's pairs to tune on: a bare ValueError traceback (exit 1)."""
    rng = np.random.default_rng(4)
    _write_oof(tmp_path / "text.parquet", *_oof(5, [0, 1], 1.5, rng), "t1")
    i_y, i_proba = _oof(2, [0, 2, 3], 3.0, rng)
    keep = np.r_[0, 2:6]  # one image of class 0, the others of classes the text file lacks
    _write_oof(tmp_path / "image.parquet", i_y[keep], i_proba[keep], "i1")
    code = cli.main(["tune-cascade", "--set", f"paths.work_dir={tmp_path}", "--text-oof", str(tmp_path / "text.parquet"), "--image-oof", str(tmp_path / "image.parquet"), "--model-dir", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code == 2 and "only one image row shares a label with" in err and "Traceback" not in err, err


def _bad_oof_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, what the error must say): files clean refuses, written in each bad way."""
    even = list(np.ones(K) / K)
    tables = {
        "nan": ({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "proba": [[np.nan] * K, even]}, "finite and non-negative"),
        "negative": ({"guid": ["a"], "label": [CLASSES[0]], "proba": [[-0.5, 1.5] + [0.0] * (K - 2)]}, "finite and non-negative"),
        "duplicate": ({"guid": ["a", "a"], "label": [CLASSES[0]] * 2, "proba": [even, even]}, "more than once, e.g. a"),
        "ragged": ({"guid": ["a", "b"], "label": [CLASSES[0]] * 2, "proba": [even, [0.5, 0.5]]}, "row 1 \\(guid b\\) has a proba of length 2"),
        "empty": ({"guid": pd.Series([], dtype=str), "label": pd.Series([], dtype=str), "proba": pd.Series([], dtype=object)}, "no rows"),
    }
    out = {}
    for name, (columns, message) in tables.items():
        pd.DataFrame(columns).to_parquet(tmp_path / f"{name}.parquet")
        out[name] = (str(tmp_path / f"{name}.parquet"), message)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    out["junk"] = (str(tmp_path / "junk.parquet"), "not a readable Parquet file")
    return out


def test_tune_cascade_checks_oof_files_as_clean_does(tmp_path, capsys):
    from museum_typology import clean

    rng = np.random.default_rng(2)
    i_y, i_proba = _oof(5, [0], 3.0, rng)
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "i1")
    for name, (path, message) in _bad_oof_files(tmp_path).items():
        with pytest.raises(clean.OofError, match=message) as by_clean:
            clean.read_oof(path)
        with pytest.raises(tune_cascade.TuneError, match=message) as by_tune:
            tune_cascade.read_oof(path, None, "text")
        assert str(by_tune.value) == str(by_clean.value), name  # one set of checks, the same words
        code = cli.main(["tune-cascade", "--text-oof", path, "--image-oof", str(tmp_path / "image.parquet"), "--model-dir", str(tmp_path / "models")])
        err = capsys.readouterr().err
        assert code == 2 and f"{name}.parquet: " in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("setting, message", [("cascade.folds=1", "cascade.folds = 1: must be a whole number >= 2"), ("cascade.folds=0", "cascade.folds = 0: must be a whole number >= 2"),
                                              ("cascade.pairs_per_image=0", "cascade.pairs_per_image = 0: must be a whole number >= 1"), ("cascade.weight_grid=[]", "cascade.weight_grid = \\[\\]: must be a non-empty list")])
def test_tune_cascade_refuses_settings_it_cannot_tune_with(tmp_path, capsys, setting, message):
    rng = np.random.default_rng(3)
    t_y, t_proba = _oof(10, [0, 2], 1.5, rng)
    i_y, i_proba = _oof(5, [0, 2], 3.0, rng)
    _write_oof(tmp_path / "text.parquet", t_y, t_proba, "t1")
    _write_oof(tmp_path / "image.parquet", i_y, i_proba, "i1")
    code = cli.main(["tune-cascade", "--set", f"paths.work_dir={tmp_path}", "--set", setting, "--text-oof", str(tmp_path / "text.parquet"), "--image-oof", str(tmp_path / "image.parquet"), "--model-dir", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "models").exists()


def test_cascade_params_take_any_real_number_and_refuse_what_means_nothing():
    from museum_typology.cascade import CascadeParams
    from museum_typology.config import ConfigError

    params = CascadeParams(np.float32(0.7), np.int64(1), np.float64(0.5))  # numpy numbers are numbers
    assert params.t_image == 1 and CascadeParams(1.01, 0.5, 1).t_text == 1.01  # above 1: never trusted
    for bad in ({"t_text": float("nan")}, {"t_image": float("inf")}, {"t_text": -0.1}, {"w_text": float("nan")}, {"t_text": True}, {"w_text": "0.5"}):
        with pytest.raises(ConfigError, match=f"cascade {next(iter(bad))} must be"):
            CascadeParams(**bad)
