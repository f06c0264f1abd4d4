"""The text model on a small synthetic catalogue: CV, calibration, bundle, OOF and scoring."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from museum_typology import score, train_text
from museum_typology.config import load_settings
from museum_typology.catalogue import InputRow
from museum_typology.schema import CLASSES
from museum_typology.text import NORMALIZATION_VERSION, normalize
from museum_typology.text_model import TextModel, apply_temperature_logits, fit_logit_temperature, fold_ids, labelled_texts

# Four classes, each with its own vocabulary plus shared filler words and typos.
VOCAB = {
    7: ["монета", "копейка", "рубль", "денга", "полушка"],
    14: ["фотография", "негатив", "фотооткрытка", "снимок", "фото"],
    12: ["книга", "евангелие", "псалтырь", "издание", "типография"],
    3: ["сабля", "кинжал", "шашка", "ружье", "штык"],
}
FILLER = ["старый", "большой", "XIX в.", "1905 г.", "Москва", "№ 3", "копия", "фрагмент"]


def _title(rng: random.Random, label: int) -> str:
    words = rng.sample(VOCAB[label], 2) + rng.sample(FILLER, 2)
    rng.shuffle(words)
    title = " ".join(words).capitalize()
    if rng.random() < 0.2:  # a typo: the character n-grams and FastText subwords must cope
        i = rng.randrange(1, len(title) - 1)
        title = title[:i] + title[i + 1 :]
    return title


def make_catalogue(root: Path, per_class: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "description", "typology"])
        for label in VOCAB:
            for i in range(per_class):
                writer.writerow([f"g{label}-{i}", _title(rng, label), CLASSES[label]])
        writer.writerow(["dup-a", "Сабля казачья", CLASSES[3]])
        writer.writerow(["dup-b", "Сабля казачья", CLASSES[3]])  # an identical title: same fold
    with open(root / "test.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["guid", "description", "typology"])
        writer.writerow(["t1", "Монета копейка 1799 г.", ""])
        writer.writerow(["t2", "", ""])
        writer.writerow(["t3", "Фотоrрафия. Снимок завода", ""])
        writer.writerow(["t1", "Дубликат guid: тоже оценивается", ""])
        writer.writerow(["t5", "...", ""])


TINY = [
    "text.folds=3",
    "text.epochs=6",
    "text.w2v_epochs=3",
    "text.w2v_dim=16",
    "text.w2v_buckets=2000",
    "text.lstm_units=16",
    "text.projection_dim=16",
    "text.max_len=12",
    "text.batch_size=32",
    "text.learning_rate=0.01",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    make_catalogue(root / "data")
    settings = load_settings(overrides=[*TINY, f"paths.work_dir={root / 'work'}"], environ={})
    saved: list[TextModel] = []  # the model in memory as training saves it (the load test compares)
    real_save = TextModel.save
    TextModel.save = lambda self, directory, extra: saved.append(self) or real_save(self, directory, extra)
    try:
        result = train_text.run(settings, str(root / "data"), str(root / "models"), str(root / "oof" / "text.parquet"))
    finally:
        TextModel.save = real_save
    result["in_memory"] = saved[0]
    return root, settings, result


def test_cross_validation_learns_and_beats_chance(trained):
    _, _, result = trained
    macro = result["metrics"]["macro_f1"]
    assert macro["final"] > 0.85, macro  # the classes are separable by vocabulary
    assert macro["baseline"] > 0.85, macro
    per_class = {row["class"]: row for row in result["metrics"]["per_class"]}
    assert per_class[CLASSES[3]]["support"] == 42


def test_a_rerun_on_the_same_data_and_settings_reuses_the_bundle(trained, tmp_path, monkeypatch):
    """Training is a function of the data and settings: a second run reuses the bundle (no word
    vectors, no folds); --retrain, a new unlabelled description (the word vectors learn from it)
    or an out-of-fold file written by another run make it train again."""
    import shutil

    root, settings, result = trained

    class Trained(Exception):
        pass

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(train_text, "train_word_vectors", no_training)
    again = train_text.run(settings, str(root / "data"), str(root / "models"), str(root / "oof" / "text.parquet"))
    assert again["reused"] and not result["reused"]
    assert again["bundle"] == result["bundle"] and again["metrics"]["version"] == result["metrics"]["version"]
    assert again["metrics"]["macro_f1"] == result["metrics"]["macro_f1"]

    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    shutil.copytree(root / "models", models)
    shutil.copy(root / "oof" / "text.parquet", oof)
    assert train_text.run(settings, str(root / "data"), str(models), str(oof))["reused"]  # a copied work dir still matches
    with pytest.raises(Trained):
        train_text.run(settings, str(root / "data"), str(models), str(oof), retrain=True)
    # Another out-of-fold path (or the file lost): the newest bundle is this run's, so it is
    # reused and its own copy of the out-of-fold file is written there.
    assert train_text.run(settings, str(root / "data"), str(models), str(tmp_path / "other-oof.parquet"))["reused"]
    assert (tmp_path / "other-oof.parquet").read_bytes() == oof.read_bytes()
    with pytest.raises(Trained):
        train_text.run(settings.set(["text", "epochs"], 7, "test"), str(root / "data"), str(models), str(oof))
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    with open(data / "test.csv", "a", encoding="utf-8") as handle:
        handle.write("t9,Новое описание без метки,\n")
    with pytest.raises(Trained):
        train_text.run(settings, str(data), str(models), str(oof))


def test_the_word_vectors_learn_from_the_url_csv_when_it_is_there(trained, tmp_path, monkeypatch):
    """The URL CSV's descriptions (the crawl job's input; ~197,000 titles in the 2021 task) join
    the word vectors' corpus, labels unread; without the file, or with the setting empty, the
    corpus is the labelled and test rows'."""
    import shutil

    root, settings, _ = trained
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / "train_url_only.csv").write_text(
        "guid,description,typology,url\nu1,Буссоль медная,не класс,http://x/1.jpg\nu2,,,http://x/2.jpg\n", encoding="utf-8"
    )
    corpora: list[list[str]] = []

    class Stop(Exception):
        pass

    def capture(corpus, ts):
        corpora.append(list(corpus))
        raise Stop

    monkeypatch.setattr(train_text, "train_word_vectors", capture)
    for run_settings in (settings, settings.set(["text", "url_only_csv"], "", "test")):
        with pytest.raises(Stop):
            train_text.run(run_settings, str(data), str(tmp_path / "models"), str(tmp_path / "oof.parquet"))
    with pytest.raises(Stop):
        train_text.run(settings, str(root / "data"), str(tmp_path / "models"), str(tmp_path / "oof.parquet"), retrain=True)
    with_urls, setting_off, no_file = corpora
    assert with_urls == [*setting_off, normalize("Буссоль медная")] and setting_off == no_file


def test_oof_has_every_labelled_row_once_in_class_order(trained):
    from museum_typology import bundles

    root, _, result = trained
    assert pq.read_schema(result["oof"]).metadata[bundles.OOF_SOURCE_KEY] == b"text"  # what clean and tune-cascade read
    table = pq.read_table(root / "oof" / "text.parquet").to_pylist()
    assert len(table) == 4 * 40 + 2 and len({r["guid"] for r in table}) == len(table)
    # the bundle carries its own copy (a re-run restores the file from it after a kill between the two)
    assert (Path(result["bundle"]) / bundles.BUNDLE_OOF).read_bytes() == (root / "oof" / "text.parquet").read_bytes()
    assert {r["fold"] for r in table} == {0, 1, 2}
    by_guid = {r["guid"]: r for r in table}
    assert by_guid["dup-a"]["fold"] == by_guid["dup-b"]["fold"]  # duplicates never straddle folds
    for row in table:
        assert len(row["proba"]) == len(CLASSES)
        assert abs(sum(row["proba"]) - 1) < 1e-4
        assert row["model_version"] == result["metrics"]["version"]


def test_bundle_is_versioned_and_complete(trained):
    root, _, result = trained
    bundle = Path(result["bundle"])
    assert (root / "models" / "latest").read_text() == bundle.name
    for name in ["classes.json", "conf.json", "metrics.json", "calibration.json", "tfidf_folds.pkl", "fasttext.kv", "lstm_fold0.npz", "_SUCCESS", "report/report.md", "report/confusion.png", "report/reliability.png"]:
        assert (bundle / name).is_file(), name
    assert json.loads((bundle / "classes.json").read_text()) == list(CLASSES)
    calibration = json.loads((bundle / "calibration.json").read_text())
    assert calibration["folds"] == 3 and calibration["lstm_models"] == 3 * 2  # text.lstm_seeds = 2
    assert (bundle / "lstm_fold5.npz").is_file()
    assert json.loads((bundle / "metrics.json").read_text())["data_hash"] == result["metrics"]["data_hash"]


def test_score_one_row_per_input_row_in_order(trained, spark):
    root, settings, _ = trained
    output = root / "scored.csv"
    spec = score.resolve_models(settings, str(root / "models"))
    assert spec.image_bundle is None and spec.text_bundle.endswith(result_version(root))
    summary = score.run(spark, settings, str(root / "data" / "test.csv"), str(output), spec)
    rows = list(csv.DictReader(open(output, encoding="utf-8")))
    assert [r["guid"] for r in rows] == ["t1", "t2", "t3", "t1", "t5"]
    assert summary["rows"] == 5
    assert rows[0]["typology"] == CLASSES[7] and rows[0]["source"] == "text"
    assert rows[2]["typology"] == CLASSES[14]  # a typo'd title still lands in its class
    assert rows[1]["source"] == "default" and rows[1]["note"] == "no description; no image"
    assert rows[4]["source"] == "default" and "no words" in rows[4]["note"]
    assert "duplicate guid" in rows[3]["note"] and rows[3]["source"] == "text"
    assert 0 < float(rows[0]["confidence"]) <= 1


def test_score_refuses_unknown_image_settings_on_the_driver(trained):
    root, settings, _ = trained
    for key, value in (("score.image_runtime", "onnx"), ("score.image_views", "crops")):
        with pytest.raises(score.ScoreError, match=f"{key} = '{value}': must be one of"):
            score.resolve_models(settings.set(key.split("."), value, "test"), str(root / "models"))
    with pytest.raises(score.ScoreError, match="score.image_threads = -1: must be a whole number >= 0"):
        score.resolve_models(settings.set(["score", "image_threads"], -1, "test"), str(root / "models"))
    # 0 divided by zero after Spark had started, in score and rescore alike
    with pytest.raises(score.ScoreError, match="score.rows_per_partition = 0: must be a whole number >= 1"):
        score.resolve_models(settings.set(["score", "rows_per_partition"], 0, "test"), str(root / "models"))
    with pytest.raises(score.ScoreError, match="score.batch_size = 0: must be a whole number >= 1"):
        score.resolve_models(settings.set(["score", "batch_size"], 0, "test"), str(root / "models"))
    score.check_settings(settings.set(["score", "rows_per_partition"], 5.0, "test"))  # a count written 5.0 is 5, as elsewhere


def result_version(root: Path) -> str:
    return (root / "models" / "latest").read_text().strip()


def test_loaded_bundle_reproduces_in_memory_predictions(trained):
    """Everything that shapes a probability (members, blend weight, temperatures, class offsets,
    word vectors) must survive the bundle: the loaded model scores as the trained one did."""
    _, _, result = trained
    model = TextModel.load(Path(result["bundle"]))
    texts = [normalize(t) for t in ("монета копейка рубль", "сабля кинжал", "Фотоrрафия. Снимок завода", "неизвестное слово", "Письмо В.С. Попову")]
    proba = model.predict_proba(texts)
    assert np.allclose(proba.sum(axis=1), 1)
    assert [CLASSES[i] for i in proba[:2].argmax(axis=1)] == [CLASSES[7], CLASSES[3]]
    assert np.allclose(proba, result["in_memory"].predict_proba(texts), atol=1e-6)
    assert model.normalization == NORMALIZATION_VERSION == result["in_memory"].normalization


def test_score_normalises_with_the_bundles_rules(trained, tmp_path):
    """A bundle from before the normalisation had versions is scored with version 1's rules."""
    import shutil

    root, settings, result = trained
    assert score.resolve_models(settings, str(root / "models")).text_normalization == NORMALIZATION_VERSION
    old = tmp_path / "text" / Path(result["bundle"]).name
    shutil.copytree(result["bundle"], old)
    calibration = json.loads((old / "calibration.json").read_text())
    del calibration["normalization"]
    (old / "calibration.json").write_text(json.dumps(calibration))
    spec = score.resolve_models(settings, str(tmp_path / "none"), text_model=str(old))
    assert spec.text_normalization == 1 and TextModel.load(old).normalization == 1
    # a model pinned on purpose that is not there is an error, not a quiet fall back to latest
    for kwargs in ({"text_model": str(tmp_path / "nowhere")}, {"image_model": str(root / "models")}):
        with pytest.raises(score.ScoreError, match=r"no (text|image) bundle there"):
            score.resolve_models(settings, str(root / "models"), **kwargs)
    rows = [InputRow("g", "test", "t.csv", 1, 1, "Письмо В.С. Попову", None)]
    assert score.plan_tasks(rows, {}, {}, spec.text_normalization)["text"].tolist() == ["письмо в село попову"]
    assert score.plan_tasks(rows, {}, {})["text"].tolist() == ["письмо в с попову"]
    # A spec built by hand with rules other than the bundle's: refused when the model loads.
    import dataclasses

    mismatched = dataclasses.replace(score.resolve_models(settings, str(root / "models")), text_normalization=1)
    with pytest.raises(score.ScoreError, match=f"trained on text normalisation {NORMALIZATION_VERSION}, but the rows were normalised by version 1"):
        score.Scorer(mismatched).text


def test_a_model_without_navec_vectors_saves_and_loads(tmp_path):
    """text.use_navec = false leaves the navec table empty; saving it failed after the training."""
    from gensim.models import FastText

    from museum_typology.text_model import Embedder, TextSettings, settings_dict

    ts = TextSettings.from_settings(load_settings(overrides=TINY, environ={}))
    fasttext = FastText(sentences=[["монета", "копейка"], ["сабля", "кинжал"]] * 5, vector_size=8, min_count=1, epochs=1, bucket=100, seed=1, workers=1)
    model = TextModel(Embedder(fasttext.wv, {}, 4), [], [], 0.0, 1.0, settings=ts, normalization=NORMALIZATION_VERSION)
    model.save(tmp_path / "bundle", {"conf.json": {"text": settings_dict(ts)}})
    loaded = TextModel.load(tmp_path / "bundle")
    assert loaded.embedder.navec == {} and loaded.embedder.dim == 8 and loaded.normalization == NORMALIZATION_VERSION


def test_a_linear_member_of_two_classes_scores_both():
    """LinearSVC gives one margin per text for two classes; it was broadcast into both columns."""
    from museum_typology.text_model import LinearMember, margins

    texts = ["монета копейка", "монета рубль", "сабля казачья", "сабля кинжал"] * 3
    member = LinearMember(C=1.0, vectors_weight=0.0, seed=0).fit(texts, None, np.array([7, 7, 3, 3] * 3))
    got = margins(member, ["монета копейка", "сабля кинжал", "монета"], None)
    assert got.shape == (3, len(CLASSES)) and got[:, [3, 7]].argmax(axis=1).tolist() == [1, 0, 1]
    assert (np.delete(got, [3, 7], axis=1) == -10.0).all()


def _bundle_without(result: dict, tmp_path: Path, setting: str) -> TextModel:
    """The trained bundle as one written before ``text.<setting>`` existed (its conf.json lacks it)."""
    import shutil

    old = tmp_path / Path(result["bundle"]).name
    shutil.copytree(result["bundle"], old)
    conf = json.loads((old / "conf.json").read_text())
    del conf["text"][setting]
    (old / "conf.json").write_text(json.dumps(conf))
    return TextModel.load(old)


def test_bundle_without_the_vectors_setting_still_loads(trained, tmp_path):
    _, _, result = trained
    model = _bundle_without(result, tmp_path, "tfidf_vectors_weight")
    assert model.settings.tfidf_vectors_weight == 0.0
    assert np.allclose(model.predict_proba(["монета копейка рубль"]), TextModel.load(Path(result["bundle"])).predict_proba(["монета копейка рубль"]))


def test_per_class_metrics_show_each_member(trained):
    _, _, result = trained
    row = result["metrics"]["per_class"][7]
    assert set(row) >= {"class", "support", "baseline_f1", "linear_f1", "bilstm_f1", "f1"}
    assert row["linear_f1"] > 0.8


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    # A model that is right 60% of the time but always says 0.98.
    pred = np.where(rng.random(2000) < 0.6, y, (y + 1) % 3)
    proba = np.full((2000, 3), 0.01)
    proba[np.arange(2000), pred] = 0.98
    t = fit_logit_temperature(np.log(proba), y)
    calibrated = apply_temperature_logits(np.log(proba), t)
    assert t > 1
    assert abs(calibrated.max(axis=1).mean() - 0.6) < 0.05


def test_folds_are_stratified_and_grouped():
    rows = [InputRow(f"g{i}", "train", "train.csv", i, i, f"title {'abcdefghijklmnopqrstuvwxyzабвг'[i % 30]}", CLASSES[i % 3]) for i in range(300)]
    data = labelled_texts(rows)
    folds = fold_ids(data, 5, 0)
    for title in set(data.texts):
        assert len({folds[i] for i, t in enumerate(data.texts) if t == title}) == 1
    for k in range(5):
        assert len(set(data.y[folds == k].tolist())) == 3


def test_a_description_without_words_is_not_learnt_from():
    """score gives a row whose description normalises to nothing no text prediction: its
    out-of-fold row would have been one scoring can never make."""
    rows = [InputRow("a", "train", "t.csv", 1, 2, "Монета", CLASSES[0]), InputRow("b", "train", "t.csv", 2, 3, "—", CLASSES[1]), InputRow("c", "train", "t.csv", 3, 4, "...", CLASSES[1])]
    data = labelled_texts(rows)
    assert data.guids == ["a"] and data.texts == ["монета"] and data.y.tolist() == [0]


def test_class_offsets_recover_a_suppressed_rare_class():
    from museum_typology.report import macro_f1
    from museum_typology.text_model import fit_class_offsets, softmax
    from museum_typology.train_text import cross_fitted_predictions

    rng = np.random.default_rng(1)
    y = np.array([0] * 900 + [1] * 100)
    # Class 1's evidence is real but its probabilities sit 1.5 nats too low: argmax never picks it.
    logits = np.stack([np.zeros(1000), np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.5, 1000) - 1.5], axis=1)
    before = macro_f1(y, logits.argmax(1))
    offsets = fit_class_offsets(logits, y)
    assert offsets[1] - offsets[0] > 0.8
    assert macro_f1(y, (logits + offsets).argmax(1)) > before + 0.3
    proba = softmax(logits)
    honest = cross_fitted_predictions(proba, logits, y, np.arange(1000) % 5, (0.0,))
    assert macro_f1(y, honest["blend"]) == pytest.approx(before)
    assert macro_f1(y, honest["offsets"]) > before + 0.3


def test_cross_fitted_predictions_fit_the_linear_temperature_without_the_fold_they_decide(monkeypatch):
    from museum_typology import train_text

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    margins = rng.normal(0, 1, (300, 3)) + np.eye(3)[y] * 2
    fold = np.arange(300) % 3
    seen: list[int] = []
    real = train_text.fit_logit_temperature

    def recording(logits, labels):
        seen.append(len(labels))
        return real(logits, labels)

    monkeypatch.setattr(train_text, "fit_logit_temperature", recording)
    honest = train_text.cross_fitted_predictions(train_text.softmax(margins), margins, y, fold, (0.0, 0.5))
    # one temperature per fold, each on the other two folds' 200 rows, never on all 300
    assert seen == [200, 200, 200]
    assert (honest["blend"] == y).mean() > 0.8


def test_typology_classifier_transformer_adds_columns_and_keeps_rows(trained, spark, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel

    from museum_typology.spark import TypologyClassifier

    root, _, _ = trained
    items = spark.createDataFrame(
        [("t1", "Монета копейка 1799 г.", 1, None), ("t2", None, 2, b"not an image"), ("t3", "Фотоrрафия. Снимок завода", 3, None), ("t4", "...", 4, None)],
        "id string, title string, n int, picture binary",
    )
    clf = TypologyClassifier(modelPath=str(root / "models"), guidCol="id", descriptionCol="title", imageCol="picture")
    scored = clf.transform(items).orderBy("n").collect()
    assert [r["id"] for r in scored] == ["t1", "t2", "t3", "t4"] and [r["n"] for r in scored] == [1, 2, 3, 4]
    assert scored[0]["typology"] == CLASSES[7] and scored[0]["typology_source"] == "text" and 0 < scored[0]["typology_confidence"] <= 1
    assert scored[2]["typology"] == CLASSES[14]
    # no text and an unusable image / no words at all -> the default class, never a lost row
    assert scored[1]["typology_source"] == "default" and scored[3]["typology_source"] == "default"
    # a pipeline stage that saves and loads with its params
    path = str(tmp_path / "pipeline")
    Pipeline(stages=[clf]).fit(items).write().overwrite().save(path)
    loaded = PipelineModel.load(path).stages[0]
    assert loaded.getOrDefault(loaded.descriptionCol) == "title" and loaded.getOrDefault(loaded.modelPath) == str(root / "models")
    with pytest.raises(ValueError, match="descriptionCol='nope' is not a column"):
        TypologyClassifier(modelPath=str(root / "models"), descriptionCol="nope").transform(items)
    # names are matched as Spark matches them, without case (the batches hold the schema's spelling)
    upper = TypologyClassifier(modelPath=str(root / "models"), guidCol="ID", descriptionCol="Title", predictionCol="label").transform(items).orderBy("n").collect()
    assert [r["label"] for r in upper] == [r["typology"] for r in TypologyClassifier(modelPath=str(root / "models"), guidCol="id", descriptionCol="title").transform(items).orderBy("n").collect()]
    # noteCol says why a row fell back (it was dropped: an unreadable image looked like no image)
    noted = TypologyClassifier(modelPath=str(root / "models"), guidCol="id", descriptionCol="title", imageCol="picture", noteCol="why").transform(items).orderBy("n").collect()
    assert noted[0]["why"] == "no image" and noted[1]["why"].startswith("no description; image") and noted[1]["why"] != "no description; no image"
    assert [r["typology"] for r in noted] == [r["typology"] for r in scored]


def test_typology_classifier_finds_the_models_where_the_score_job_does(trained, tmp_path, monkeypatch):
    """Without modelPath it used var/models whatever paths.work_dir said, so with conf/local.toml
    (work_dir var/local) it scored with other models than the score job."""
    import shutil

    from museum_typology.spark import TypologyClassifier

    root, _, _ = trained
    shutil.copytree(root / "models", tmp_path / "work" / "models" / "text")
    conf = tmp_path / "site.toml"
    conf.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n', encoding="utf-8")
    spec = TypologyClassifier(confPath=str(conf))._spec()
    assert spec.text_bundle.startswith(str(tmp_path / "work" / "models" / "text"))
    monkeypatch.setenv("MUSEUM_WORK_DIR", str(tmp_path / "work"))
    assert TypologyClassifier()._spec().text_bundle == spec.text_bundle


def test_typology_classifier_passes_every_other_column_through_untouched(spark, monkeypatch):
    """The rows went through pandas whole: a nullable bigint became float64 (9007199254740995
    came back ...996), a timestamp outside 1677-2262 failed the job, and a column whose name holds
    a dot ("Инв. №", not even an input) failed Spark's analysis."""
    from museum_typology.cascade import CascadeParams
    from museum_typology.spark import TypologyClassifier

    cascade = tuple(sorted(CascadeParams.from_dict(load_settings(environ={}).section("cascade")).to_dict().items()))
    monkeypatch.setattr(TypologyClassifier, "_spec", lambda self: score.ScorerSpec(None, None, cascade, "none"))  # no models: the default class
    items = spark.sql(
        "select 'Монета' as `Название предмета`, cast(9007199254740995 as bigint) as big, timestamp'1500-01-01 00:00:00' as old, '7' as `Инв. №`, date'1800-01-01' as d "
        "union all select null, null, timestamp'9999-12-31 00:00:00', null, null"
    )
    scored = TypologyClassifier(descriptionCol="Название предмета", noteCol="why").transform(items)
    assert scored.columns == [*items.columns, "typology", "typology_confidence", "typology_source", "why"]
    assert scored.select(*[f"`{c}`" for c in items.columns]).collect() == items.collect()
    assert [r["why"] for r in scored.collect()] == ["no text model; no image", "no description; no image"]


def test_typology_classifier_has_a_getter_and_a_setter_per_param(tmp_path):
    """pyspark.ml stages have getX/setX for their Params; only setParams was there."""
    from pyspark.ml.param import Param

    from museum_typology.spark import TypologyClassifier

    clf = TypologyClassifier(modelPath="m")
    names = sorted(name for name, value in vars(TypologyClassifier).items() if isinstance(value, Param))
    assert len(names) == 10 and all(callable(getattr(clf, f"get{n[0].upper()}{n[1:]}")) and callable(getattr(clf, f"set{n[0].upper()}{n[1:]}")) for n in names)
    assert clf.setDescriptionCol("title") is clf and clf.getDescriptionCol() == "title" and clf.getModelPath() == "m"
    assert clf.getPredictionCol() == "typology" and clf.setPredictionCol("label").getPredictionCol() == "label"
    clf.save(str(tmp_path / "clf"))
    loaded = TypologyClassifier.load(str(tmp_path / "clf"))
    assert (loaded.getDescriptionCol(), loaded.getPredictionCol(), loaded.getNoteCol()) == ("title", "label", "")


def test_typology_classifier_ignores_guid_columns_and_names_columns_it_cannot_carry(spark, monkeypatch):
    """guidCol has no effect, yet two guid columns (any join on guid) were refused; an interval
    column failed in the executors with a trace naming mapInArrow and a stand-in "_c1"."""
    from museum_typology.cascade import CascadeParams
    from museum_typology.spark import TypologyClassifier

    cascade = tuple(sorted(CascadeParams.from_dict(load_settings(environ={}).section("cascade")).to_dict().items()))
    monkeypatch.setattr(TypologyClassifier, "_spec", lambda self: score.ScorerSpec(None, None, cascade, "none"))
    items = spark.createDataFrame([("g1", "Монета")], "guid string, description string")
    extra = spark.createDataFrame([("g1", "a")], "guid string, museum string")
    joined = items.join(extra, items.guid == extra.guid)
    assert joined.columns == ["guid", "description", "guid", "museum"]
    assert [r["typology_source"] for r in TypologyClassifier().transform(joined).collect()] == ["default"]
    for select in ("interval '1-2' year to month", "array(make_interval(1, 2, 3, 4, 5, 6, 7))", "named_struct('interval', interval '1' month)"):
        with pytest.raises(ValueError, match="column\\(s\\) loan term hold a year-month or calendar interval"):
            TypologyClassifier().transform(spark.sql(f"select 'Монета' as description, {select} as `loan term`"))
    day_time = spark.sql("select 'Монета' as description, interval '1 02:03:04' day to second as held, named_struct('interval', 1) as s")  # Arrow carries these
    assert TypologyClassifier().transform(day_time).select("held", "s").collect() == day_time.select("held", "s").collect()


def test_typology_classifier_checks_its_columns_on_the_driver():
    from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

    from museum_typology.spark import check_columns

    schema = StructType([StructField("guid", StringType()), StructField("title", StringType()), StructField("n", IntegerType()), StructField("Typology", StringType()), StructField("pic", BinaryType()), StructField("path", StringType())])
    inputs = {"guidCol": "guid", "descriptionCol": "title", "imageCol": "pic", "imagePathCol": "path"}
    check_columns(schema, inputs, ("label", "confidence", "source"))
    # Spark resolves names without case: a second "typology" made every later select ambiguous
    with pytest.raises(ValueError, match="output column\\(s\\) typology already exist"):
        check_columns(schema, inputs, ("typology", "confidence", "source"))
    check_columns(schema, inputs, ("typology", "confidence", "source"), case_sensitive=True)
    with pytest.raises(ValueError, match="the output columns must have different names, got p, c, p"):
        check_columns(schema, inputs, ("p", "c", "p"))
    # a wrong type gave every row the default class, or an executor traceback
    with pytest.raises(ValueError, match="descriptionCol='n' is int, expected string"):
        check_columns(schema, {**inputs, "descriptionCol": "n"}, ("a", "b", "c"))
    with pytest.raises(ValueError, match="imageCol='path' is string, expected binary \\(the image file's bytes; for paths use imagePathCol\\)"):
        check_columns(schema, {**inputs, "imageCol": "path"}, ("a", "b", "c"))
    # two columns an input name matches: the one read was a guess (mapped by position now, Spark no longer says "ambiguous")
    twice = StructType([*schema.fields, StructField("Title", StringType())])
    with pytest.raises(ValueError, match="descriptionCol='title' matches 2 columns \\(title, Title\\); rename or drop one"):
        check_columns(twice, inputs, ("a", "b", "c"))
    check_columns(twice, inputs, ("a", "b", "c"), case_sensitive=True)


class _FakeVectors:
    """Stands in for gensim's FastTextKeyedVectors: a fixed 2-d vector per known token."""

    vector_size = 2
    table = {"монета": [1.0, 0.0], "медная": [0.0, 1.0], "сабля": [-1.0, 0.0]}

    def __getitem__(self, token):
        return np.array(self.table.get(token, [0.5, 0.5]), dtype=np.float32)


def test_pooled_vectors_are_mean_and_first_token_at_unit_length():
    from museum_typology.text_model import Embedder

    embedder = Embedder(_FakeVectors(), {"монета": np.array([2.0], dtype=np.float32)}, max_len=4)
    pooled = embedder.pooled(["монета медная", "", "сабля"])
    assert pooled.shape == (3, 6) and pooled.dtype == np.float32
    # монета = [1, 0, 2], медная = [0, 1, 0 (not in navec)]: mean [0.5, 0.5, 1], first [1, 0, 2]
    expected = np.array([0.5, 0.5, 1.0, 1.0, 0.0, 2.0])
    assert np.allclose(pooled[0], expected / np.linalg.norm(expected))
    assert np.allclose(pooled[1], 0)  # an empty title: zeros, not NaN
    assert np.isclose(np.linalg.norm(pooled[2]), 1)
    assert np.allclose(embedder.pooled(["монета медная"])[0], pooled[0])  # one title or many: the same row


def test_linear_member_uses_the_vectors_and_needs_them():
    from museum_typology.text_model import LinearMember, make_linear_svc, margins

    texts = ["монета медная", "монета серебряная", "сабля казачья", "сабля кавалерийская", "снимок цветной", "снимок черно-белый", "рубль", "шашка", "негатив"] * 3
    y = np.array([7, 7, 3, 3, 14, 14, 7, 3, 14] * 3)
    # The vectors carry what the n-grams cannot: "рубль" and "шашка" share no n-gram with their class.
    vectors = np.eye(3)[[0, 0, 1, 1, 2, 2, 0, 1, 2] * 3]
    member = LinearMember(C=1.0, vectors_weight=1.0, seed=0).fit(texts, vectors, y)
    scores = margins(member, ["денга", "кинжал", "диапозитив"], np.eye(3))
    assert scores.shape == (3, len(CLASSES))
    assert list(scores.argmax(1)) == [7, 3, 14]
    with pytest.raises(ValueError, match="pooled word vectors"):
        member.decision_function(["денга"])
    # With weight 0 it is the baseline pipeline: same features, same SVC, same margins.
    plain = LinearMember(C=0.5, vectors_weight=0.0, seed=0).fit(texts, None, y)
    baseline = make_linear_svc(0.5, 0).fit(texts, y)
    assert np.allclose(margins(plain, texts), margins(baseline, texts))


def test_bilstm_attention_pooling_gives_padding_no_weight():
    import tensorflow as tf
    from dataclasses import replace

    from museum_typology.text_model import TextSettings, build_bilstm

    settings = load_settings(overrides=TINY, environ={})
    ts = replace(TextSettings.from_settings(settings), lstm_layers=1, lstm_pooling="max_attention")
    model = build_bilstm(6, 4, ts)
    x = np.zeros((2, 6, 4), dtype=np.float32)
    x[0, :2] = 1.0  # two tokens, then padding
    x[1, :5] = np.arange(20, dtype=np.float32).reshape(5, 4) / 20
    attention = tf.keras.Model(model.input, model.get_layer("attention").output)(x).numpy()
    assert np.allclose(attention.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(attention[0, 2:], 0) and np.allclose(attention[1, 5:], 0)
    proba = model.predict(x, verbose=0)
    assert proba.shape == (2, len(CLASSES)) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="lstm_pooling"):
        build_bilstm(6, 4, replace(ts, lstm_pooling="mean"))


def test_word_vectors_survive_a_bundle_round_trip(tmp_path):
    # gensim recomposes in-vocabulary vectors from vectors_vocab + vectors_ngrams on load: every
    # array must be scaled alike, or scoring sees other vectors than training did.
    from gensim.models.fasttext import FastTextKeyedVectors

    from museum_typology.text_model import TextSettings, train_word_vectors

    ts = TextSettings.from_settings(load_settings(overrides=TINY, environ={}))
    corpus = ["монета медная копейка", "сабля казачья", "фотография снимок завода", "монета серебряная рубль"] * 5
    vectors = train_word_vectors(corpus, ts)
    vectors.save(str(tmp_path / "fasttext.kv"))
    loaded = FastTextKeyedVectors.load(str(tmp_path / "fasttext.kv"))
    for word in ["монета", "сабля", "монетка", "неизвестное"]:
        assert np.allclose(vectors[word], loaded[word], atol=1e-5), word


def test_bilstm_runner_is_deterministic_per_seed_index():
    from dataclasses import replace

    from museum_typology.text_model import BiLstmRunner, TextSettings, TokenIds, class_weights

    ts = replace(TextSettings.from_settings(load_settings(overrides=TINY, environ={})), epochs=2)
    rng = np.random.default_rng(0)
    x = TokenIds(rng.integers(0, 30, size=(40, 5)).astype(np.int32), np.vstack([np.zeros((1, 3)), rng.normal(size=(29, 3))]).astype(np.float32))
    y = np.arange(40) % 3
    runner = BiLstmRunner(5, 3, ts)
    first, other, again = runner.fit(x, y, 0), runner.fit(x, y, 1), runner.fit(x, y, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    # Trained on ids, the network is bit for bit the one Keras trains on the titles' vectors
    # built whole (as train-text did, at 7 GB for 180K titles): the same batches, the same steps.
    import tensorflow as tf

    runner.model.set_weights(runner._initial(0))
    for variable in runner.model.optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype.as_numpy_dtype))
    tf.keras.utils.set_random_seed(ts.seed)
    runner.model.fit(x.vectors(), y, epochs=ts.epochs, batch_size=ts.batch_size, class_weight=class_weights(y), verbose=0, shuffle=True)
    assert all(np.array_equal(a, b) for a, b in zip(first, runner.model.get_weights()))
    # Predictions read the same vectors the ids point at, in the titles' order.
    looked_up = runner.predict(first, x.rows(np.arange(39, -1, -1)))
    assert np.array_equal(looked_up[::-1], runner.model.predict(x.vectors(), batch_size=1024, verbose=0))


def test_token_ids_hold_each_word_once_and_give_each_title_its_vectors():
    """The BiLSTM's input as ids into one table: the same vectors, padding and cut at max_len as
    one [n, max_len, dim] array, without n x max_len x dim floats (7 GB at 180K titles)."""
    from gensim.models.fasttext import FastText

    from museum_typology.text_model import Embedder

    texts = ["монета медная копейка", "", "монета", "a b c d e f g"]
    ft = FastText(vector_size=4, min_count=1, epochs=1, seed=1, workers=1, bucket=100)
    ft.build_vocab(corpus_iterable=[t.split() for t in texts if t])
    ft.train(corpus_iterable=[t.split() for t in texts if t], total_examples=3, epochs=1)
    embedder = Embedder(ft.wv, {"монета": np.full(2, 0.5, np.float32)}, max_len=5)
    tokens = embedder.token_ids(texts)
    assert tokens.ids.shape == (4, 5) and tokens.ids.dtype == np.int32
    assert len(tokens.table) == 1 + len({"монета", "медная", "копейка", "a", "b", "c", "d", "e"})
    assert not tokens.table[0].any() and not tokens.ids[1].any()
    vectors = tokens.vectors()
    assert vectors.shape == (4, 5, embedder.dim)
    for i, text in enumerate(texts):
        words = text.split()[:5]
        for j in range(5):
            expected = embedder.vector(words[j]) if j < len(words) else np.zeros(embedder.dim, np.float32)
            assert np.array_equal(vectors[i, j], expected), (i, j)
    assert np.array_equal(tokens.rows(np.array([2, 0])).vectors(), vectors[[2, 0]])


def test_data_too_small_or_too_alike_for_the_folds_is_one_clear_line(tmp_path, capsys):
    """Fewer distinct titles than folds left folds empty and sklearn failed deep inside
    (TfidfTransformer on 0 samples, "empty vocabulary"); too few rows was a traceback (rc 1)."""
    from museum_typology import cli
    from museum_typology.train_text import TrainTextError, check_folds

    with pytest.raises(TrainTextError, match="2 of 5 folds get no titles"):
        check_folds(np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 1, 1, 2, 2]), 5, "data")
    with pytest.raises(TrainTextError, match="the rows outside fold 1 of 2 hold a single typology"):
        check_folds(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 2, "data")
    check_folds(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), 2, "data")

    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"g{i},Монета № {i},{CLASSES[7] if i % 2 else CLASSES[0]}\n" for i in range(12))  # one title once numbers are shapes
    (data / "train.csv").write_text("guid,description,typology\n" + rows, encoding="utf-8")
    args = ["train-text", "--data", str(data), "--work-dir", str(tmp_path / "work")]
    assert cli.main(args) == 2
    assert "4 of 5 folds get no titles" in capsys.readouterr().err
    (data / "train.csv").write_text("guid,description,typology\ng1,Монета,графика\n", encoding="utf-8")
    assert cli.main(args) == 2
    assert "only 1 labelled rows with a description; need at least 10" in capsys.readouterr().err


def test_train_text_checks_its_outputs_says_what_it_leaves_out_and_names_the_manifest(tmp_path, caplog, monkeypatch):
    """A file as --model-dir failed with a traceback after every fold trained, a folder as --oof
    after the bundle was committed; rows the reader rejected (a label "Графика ") left their class
    without a word; an error a --manifest caused blamed the data directory."""
    from museum_typology import train_text

    monkeypatch.setattr(train_text, "train_word_vectors", lambda *a, **k: pytest.fail("training started"))
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"g{i},Монета номер {i},{CLASSES[7]}\n" for i in range(6)) + "".join(f"h{i},Гравюра {i},Графика \n" for i in range(3)) + "w1,...,графика\n"
    (data / "train.csv").write_text("guid,description,typology\n" + rows, encoding="utf-8")
    settings = load_settings(environ={})
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    for models, oof, message in ((tmp_path / "afile", tmp_path / "oof.parquet", "--model-dir is a file, not a folder"), (tmp_path / "models", tmp_path / "afolder", "--oof is a folder; name a file")):
        with pytest.raises(OSError, match=message):
            train_text.run(settings, str(data), str(models), str(oof))
    with caplog.at_level("WARNING"), pytest.raises(train_text.TrainTextError, match=f"{data}: only 6 labelled rows"):
        train_text.run(settings, str(data), str(tmp_path / "models"), str(tmp_path / "oof.parquet"))
    assert "train-text: 4 of 10 labelled rows left out: 3 unknown typology, 1 without words in the description; e.g. train.csv row 7" in caplog.text
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("guid,typology,keep\ng0,,no\n", encoding="utf-8")
    with pytest.raises(train_text.TrainTextError, match=f"{data} with --manifest {manifest}: only 5 labelled rows"):
        train_text.run(settings, str(data), str(tmp_path / "models"), str(tmp_path / "oof.parquet"), manifest=str(manifest))


def test_navec_scale_does_not_depend_on_the_order_of_the_words():
    """The navec vectors were scaled by a float32 mean summed in the order of a set of words, which
    follows the process's string-hash seed: the BiLSTM's inputs, and its fold scores, changed from
    one run to the next (0.642 against 0.628 macro-F1 on the shared data)."""
    from museum_typology.text_model import equalise_navec_scale

    rng = np.random.default_rng(0)
    words = [f"слово{i}" for i in range(5000)]
    vectors = {w: rng.normal(scale=3.0, size=300).astype(np.float32) for w in words}
    expected = equalise_navec_scale(vectors)
    for seed in range(5):
        order = list(rng.permutation(words))
        scaled = equalise_navec_scale({w: vectors[w] for w in order})
        assert list(scaled) == sorted(words)
        assert all(np.array_equal(scaled[w], expected[w]) for w in words)
    lengths = np.linalg.norm(np.stack(list(expected.values())), axis=1)
    assert abs(lengths.mean() - 1.0) < 1e-4 and expected[words[0]].dtype == np.float32
    assert equalise_navec_scale({}) == {}


def test_training_gives_the_same_model_under_any_string_hash_seed(tmp_path):
    """"Deterministic for a given seed": two processes whose str hashes differ (sets of words
    iterate in another order) train bit-identical out-of-fold probabilities."""
    import os
    import subprocess
    import sys

    make_catalogue(tmp_path / "data")
    script = Path(sys.executable).with_name("museum-typology")
    probabilities = []
    for hash_seed in ("1", "2"):
        work = tmp_path / f"work{hash_seed}"
        overrides = [arg for setting in TINY for arg in ("--set", setting)]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "MUSEUM_NO_PROGRESS": "1"}
        done = subprocess.run([str(script), "train-text", "--data", str(tmp_path / "data"), "--work-dir", str(work), *overrides], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        table = pq.read_table(work / "oof" / "text.parquet")
        probabilities.append((table.column("guid").to_pylist(), np.array(table.column("proba").to_pylist())))
    (guids_a, proba_a), (guids_b, proba_b) = probabilities
    assert guids_a == guids_b and proba_a.shape == (len(guids_a), len(CLASSES))
    assert np.array_equal(proba_a, proba_b)


def test_fold_features_cut_the_texts_once_and_give_each_fold_its_own_features_to_the_bit(trained):
    """Scoring counts a chunk's n-grams once for all fold members (over the union of their
    vocabularies) instead of once per fold: each fold's features, margins and the model's
    probabilities must be what the fold's own vectorisers give, bit for bit."""
    import copy
    import dataclasses

    from museum_typology.text_model import FoldFeatures, LinearMember, make_linear_svc, margins

    _, _, result = trained
    model = result["in_memory"]
    texts = [normalize(t) for t in ("монета копейка рубль", "сабля кинжал", "Фотоrрафия. Снимок завода", "неизвестное слово",
                                    "Письмо В.С. Попову", "", "ж", "монета монета монета 1909 г.")]
    shared = FoldFeatures.of(model.tfidf_folds)
    assert shared is not None and shared.folds == len(model.tfidf_folds) >= 2
    # the folds' vocabularies differ (or sharing would be trivial), and the union holds each
    vocabularies = [set(m.features.transformer_list[0][1].vocabulary_) for m in model.tfidf_folds]
    assert len(set(map(frozenset, vocabularies))) > 1
    vectors = model.embedder.pooled(texts)
    for member, features in zip(model.tfidf_folds, shared.transform(texts)):
        own = member.features.transform(texts)
        assert features.shape == own.shape and (features != own).nnz == 0
        assert np.array_equal(features.indptr, own.indptr) and np.array_equal(features.indices, own.indices)
        assert np.array_equal(features.data, own.data)
        assert np.array_equal(margins(member, texts, vectors, features), margins(member, texts, vectors))
    fold_by_fold = dataclasses.replace(model, _fold_features=None)  # None: each fold makes its own
    assert np.array_equal(model.predict_proba(texts), fold_by_fold.predict_proba(texts))
    # Folds that do not cut text alike, or older bundles' pipelines, each make their own.
    odd = LinearMember(C=1.0, vectors_weight=0.0, seed=0)
    odd.features.transformer_list[0][1].set_params(ngram_range=(1, 3))  # the character n-grams
    odd.fit(texts[:4] * 3, None, np.array([7, 3, 14, 2] * 3))
    assert FoldFeatures.of([model.tfidf_folds[0], odd]) is None
    assert FoldFeatures.of([make_linear_svc(0.5, 0), make_linear_svc(0.5, 1)]) is None
    first, second = (copy.deepcopy(m) for m in model.tfidf_folds[:2])
    first.features.set_params(transformer_weights={first.features.transformer_list[0][0]: 2.0})
    assert FoldFeatures.of([first, second]) is None  # weights on the union's parts
    first.features.set_params(transformer_weights=None, **{first.features.transformer_list[1][0]: "drop"})
    assert FoldFeatures.of([first, second]) is None  # a part left out


def _bilstm_and_reference(ts, max_len: int = 10, dim: int = 6):
    """A network of ``ts`` and Keras' own non-unrolled Bidirectional LSTM (which masks its backward
    half right) on the same projection, with the network's weights."""
    import tensorflow as tf

    from museum_typology.text_model import build_bilstm

    model = build_bilstm(max_len, dim, ts)
    layers = tf.keras.layers
    inputs = tf.keras.Input((max_len, dim))
    projected = layers.Dense(ts.projection_dim, activation="tanh")(layers.Masking(0.0)(inputs))
    both = layers.Bidirectional(layers.LSTM(ts.lstm_units, return_sequences=True))
    reference = tf.keras.Model(inputs, both(projected))
    reference.layers[-2].set_weights(model.get_layer("projection").get_weights())
    if ts.lstm_backward == "keras_unrolled":
        both.set_weights(model.get_layer("lstm1").get_weights())
    else:
        both.forward_layer.set_weights(model.get_layer("lstm1_forward").get_weights())
        both.backward_layer.set_weights(model.get_layer("lstm1_backward").get_weights())
    sides = model.get_layer("lstm1")
    return tf.keras.Model(model.input, sides.output), reference


def _titles(max_len: int = 10, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, max_len, dim)).astype(np.float32)
    lengths = np.array([1, 2, 3, 5, 7, 10])
    for row, n in enumerate(lengths):
        x[row, n:] = 0.0  # padding after the title
    return x, (np.arange(max_len)[None, :] < lengths[:, None])[..., None]


def test_the_backward_lstm_reads_each_title_from_its_last_token():
    """Keras 2.15's unrolled Bidirectional zeroed its backward half's outputs at a title's own
    tokens (the mask of the unreversed sequence applied to the reversed outputs), so a short title
    was read forwards only. "reversed" must give what Keras' non-unrolled Bidirectional gives."""
    from dataclasses import replace

    from museum_typology.text_model import TextSettings

    ts = replace(TextSettings.from_settings(load_settings(overrides=TINY, environ={})), lstm_layers=1, lstm_backward="reversed")
    x, tokens = _titles()
    sides, reference = _bilstm_and_reference(ts)
    ours, right = sides.predict(x, verbose=0), reference.predict(x, verbose=0)
    assert np.allclose(ours * tokens, right * tokens, atol=1e-5)
    assert np.all(ours * ~tokens == 0)  # zeros after the title, as Bidirectional gives
    units = ts.lstm_units
    assert np.all(np.abs(ours[:, :, units:] * tokens).sum(axis=(1, 2)) > 0)  # every title's backward half reads it
    # The bug, as it was: the old setting's backward half is zero at every token of the titles of
    # up to half of max_len tokens (kept for the bundles trained with it).
    old_sides, _ = _bilstm_and_reference(replace(ts, lstm_backward="keras_unrolled"))
    old = old_sides.predict(x, verbose=0)
    assert np.all(old[:3, :, units:] == 0)


def test_the_network_gives_a_title_the_same_probabilities_however_long_its_padding():
    from dataclasses import replace

    from museum_typology.text_model import TextSettings, build_bilstm

    ts = replace(TextSettings.from_settings(load_settings(overrides=TINY, environ={})), lstm_layers=1, lstm_backward="reversed")
    x, _ = _titles(max_len=10)
    short, long = build_bilstm(10, 6, ts), build_bilstm(24, 6, ts)
    long.set_weights(short.get_weights())
    padded = np.concatenate([x, np.zeros((len(x), 14, 6), dtype=np.float32)], axis=1)
    # titles shorter than 10 tokens have padding in both, so their max pooling sees the same zeros
    assert np.allclose(short.predict(x, verbose=0)[:5], long.predict(padded, verbose=0)[:5], atol=1e-6)
    with pytest.raises(ValueError, match="lstm_backward"):
        replace(ts, lstm_backward="backwards")


def test_bundles_from_before_the_backward_setting_are_scored_as_they_were_trained(trained, tmp_path):
    _, _, result = trained
    assert json.loads((Path(result["bundle"]) / "conf.json").read_text())["text"]["lstm_backward"] == "reversed"
    model = _bundle_without(result, tmp_path, "lstm_backward")
    assert model.settings.lstm_backward == "keras_unrolled"
    texts = ["монета копейка рубль", "сабля кинжал казачья шашка"]
    then = model.runner().predict_mean(model.lstm_folds, model.embedder.token_ids(texts))
    now = TextModel.load(Path(result["bundle"]))
    assert not np.allclose(then, now.runner().predict_mean(now.lstm_folds, now.embedder.token_ids(texts)))
