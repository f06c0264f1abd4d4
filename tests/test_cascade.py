"""The cascade decision, its tuning on out-of-fold predictions, and the tune-cascade job."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from museum_typology import cli, tune_cascade
from museum_typology.cascade import CascadeParams, cross_fitted, decide, paired_oof, tune
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


def _write_oof(path, y, proba, version):
    pd.DataFrame({"guid": [f"g{i}" for i in range(len(y))], "label": [CLASSES[c] for c in y], "fold": 0, "proba": list(proba), "model_version": version}).to_parquet(path)


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
    assert "Cross-fitted" in (bundle / "report.md").read_text()
    from museum_typology.score import cascade_params

    params, version = cascade_params(settings, str(models / "cascade"), None)
    assert params.to_dict() == saved["params"] and version == bundle.name


def test_tune_cascade_clear_errors(tmp_path, capsys):
    code = cli.main(["tune-cascade", "--text-oof", str(tmp_path / "none.parquet"), "--image-oof", str(tmp_path / "none.parquet"), "--model-dir", str(tmp_path)])
    assert code == 2 and "no out-of-fold file" in capsys.readouterr().err
    pd.DataFrame({"guid": ["a"], "label": ["картины"], "proba": [list(np.ones(K) / K)]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(tune_cascade.TuneError, match="unknown label"):
        tune_cascade.read_oof(str(tmp_path / "bad.parquet"), None)
