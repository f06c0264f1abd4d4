"""The score job on Spark with stand-in models: every input row comes out once, in order, with a
sensible source and a note, whatever is wrong with it; clear errors for unusable inputs.

The models here are small stand-ins (keyword and colour rules) shipped to the executors with
cloudpickle, so these tests exercise the job's plumbing; the real bundles are scored in
test_text_model.py and test_image_model.py."""
from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark import cloudpickle

from museum_typology import cli, score
from museum_typology.catalogue import CsvError, InputRow
from museum_typology.config import ConfigError
from museum_typology.schema import CLASSES

K = len(CLASSES)
COIN, SWORD, PAINTING, BOOK = CLASSES.index("предметы нумизматики"), CLASSES.index("оружие"), CLASSES.index("живопись"), CLASSES.index("редкие книги")


def rows_with_top(labels_and_tops) -> np.ndarray:
    out = np.empty((len(labels_and_tops), K))
    for i, (label, top) in enumerate(labels_and_tops):
        out[i] = (1.0 - top) / (K - 1)
        out[i, label] = top
    return out


class KeywordText:
    """монета -> нумизматика (0.9), сабля -> оружие (0.45), anything else -> редкие книги (0.5)."""

    def predict_proba(self, texts, batch_size=0):
        return rows_with_top([(COIN, 0.9) if "монета" in t else (SWORD, 0.45) if "сабля" in t else (BOOK, 0.5) for t in texts])


class ColourImage:
    """Red images -> живопись (0.95), others -> редкие книги (0.65)."""

    def predict_proba(self, images, batch_size=0):
        return rows_with_top([(PAINTING, 0.95) if p[..., 0].mean() > p[..., 2].mean() + 50 else (BOOK, 0.65) for p in images])


def stand_in(spec):
    return score.Scorer(spec, KeywordText(), ColourImage())


# Executors import modules by name; this test module is not importable there, so ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def spec(**params) -> score.ScorerSpec:
    cascade = {"t_text": 0.7, "t_image": 0.7, "w_text": 0.5, "default_class": CLASSES[14], **params}
    return score.ScorerSpec("models/text/v1", "models/image/v2", tuple(sorted(cascade.items())), "conf")


def jpeg(colour, fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, fmt)
    return buffer.getvalue()


def write_csv(path, rows, header=("guid", "description", "typology")):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def bad_rows(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "b.jpg").write_bytes(jpeg((220, 10, 10)))  # red: a confident image
    (images / "d").write_bytes(jpeg((220, 10, 10))[:200])  # truncated, no extension
    (images / "e.xyz").write_bytes(jpeg((10, 10, 220), "PNG"))  # unknown extension, PNG inside
    (images / "f.jpg").write_bytes(b"")  # an empty file
    (images / "g.png").write_bytes(jpeg((220, 10, 10)))  # a JPEG named .png: content decides
    rows = [
        ("a", "Монета. Копейка 1799 г.", "ignored"),  # text only, confident
        ("b", "", ""),  # image only
        ("c", "", ""),  # nothing at all
        ("d", "", ""),  # a broken image and no text
        ("e", "Сабля казачья", ""),  # weak text + weak image -> blend
        ("a", "Монета вторая", ""),  # duplicate guid: scored too, and said so
        ("f", "Монета", ""),  # empty image file: the text decides
        ("g", "...", ""),  # no words but an image
        ("", "Монета без guid", ""),  # an empty guid
    ]
    write_csv(tmp_path / "in.csv", rows)
    return tmp_path


def test_every_bad_row_comes_out_once_in_order_with_a_source_and_a_note(spark, settings, bad_rows):
    out = bad_rows / "out.csv"
    summary = score.run(spark, settings, str(bad_rows / "in.csv"), str(out), spec(), images_dir=str(bad_rows / "images"), factory=stand_in)
    got = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["guid"] for r in got] == ["a", "b", "c", "d", "e", "a", "f", "g", ""]
    by = {i: r for i, r in enumerate(got)}
    assert (by[0]["typology"], by[0]["source"]) == (CLASSES[COIN], "text")
    assert (by[1]["typology"], by[1]["source"]) == (CLASSES[PAINTING], "image") and by[1]["note"] == "no description"
    assert (by[2]["typology"], by[2]["source"], float(by[2]["confidence"])) == (CLASSES[14], "default", 0.0)
    assert by[2]["note"] == "no description; no image"
    assert by[3]["source"] == "default" and "image unusable: corrupt image" in by[3]["note"]
    # neither is sure (0.45 sword, 0.65 book): the blend 0.5 * text + 0.5 * image says book
    assert by[4]["source"] == "blend" and by[4]["typology"] == CLASSES[BOOK]
    assert by[5]["source"] == "text" and "duplicate guid (first at row 1)" in by[5]["note"]
    assert by[6]["source"] == "text" and "image unusable: empty file" in by[6]["note"]
    assert by[7]["source"] == "image" and by[7]["typology"] == CLASSES[PAINTING] and "no words" in by[7]["note"]
    assert by[8]["source"] == "text" and "empty guid" in by[8]["note"]
    assert summary["rows"] == 9 and sum(summary["sources"].values()) == 9
    assert {r["model_version"] for r in got} == {"text=v1;image=v2@512px,80000000pixels,50000000bytes,jpeg92;cascade=conf"}


def test_model_version_changes_with_the_conf_cascade_and_the_image_limits(settings, tmp_path):
    """rescore re-scores a row when its model_version changes: editing [cascade] in the conf (no
    tuned bundle) or an [images] limit must change it; a text-only spec ignores the image limits."""
    no_tuned = str(tmp_path / "no-cascade-bundle")
    params, version = score.cascade_params(settings, no_tuned, None)
    edited, edited_version = score.cascade_params(settings.set(["cascade", "t_text"], 0.5, "test"), no_tuned, None)
    assert version.startswith("conf-") and edited_version.startswith("conf-") and version != edited_version
    assert score.cascade_params(settings, no_tuned, None)[1] == version  # the same values, the same version
    base = spec()
    smaller = dataclasses.replace(base, max_side=256)
    versions = {spec_.model_version for spec_ in (base, smaller, dataclasses.replace(base, max_bytes=10), dataclasses.replace(base, max_pixels=10))}
    assert len(versions) == 4  # each limit on its own changes the version
    assert dataclasses.replace(base, image_views="whole").model_version.split(";")[1] == "image=v2+whole@512px,80000000pixels,50000000bytes,jpeg92"
    text_only = dataclasses.replace(base, image_bundle=None)
    assert text_only.model_version == dataclasses.replace(text_only, max_side=256).model_version == "text=v1;image=none;cascade=conf"


def test_an_image_file_over_the_cap_is_refused_unread(spark, settings, bad_rows):
    """A file over images.max_bytes is noted from its size alone; the others decode as before."""
    (bad_rows / "images" / "h.jpg").write_bytes(jpeg((220, 10, 10)) + bytes(5000))  # a red JPEG padded past the cap
    write_csv(bad_rows / "big.csv", [("h", "", ""), ("b", "", "")])
    out = bad_rows / "big-out.csv"
    capped = dataclasses.replace(spec(), max_bytes=4000)
    score.run(spark, settings, str(bad_rows / "big.csv"), str(out), capped, images_dir=str(bad_rows / "images"), factory=stand_in)
    got = list(csv.DictReader(open(out, encoding="utf-8")))
    assert got[0]["source"] == "default" and "file too large" in got[0]["note"] and "(not read)" in got[0]["note"]
    assert got[1]["source"] == "image" and got[1]["typology"] == CLASSES[PAINTING]


def test_parquet_in_and_out_with_images_from_a_dataset(spark, settings, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    pq.write_table(pa.table({"guid": ["p1", "p2"], "image": [jpeg((230, 0, 0)), jpeg((0, 0, 230))], "sha256": ["orig-p1", "orig-p2"]}), dataset / "part-0.parquet")
    # A red image over an exact grey-128 band, as ingest stores a PNG of one: training reads it
    # (petastorm's codec); scoring took the band for a truncated JPEG's fill and dropped the image.
    banded = np.zeros((128, 96, 3), dtype=np.uint8)
    banded[:96] = (230, 0, 0)
    banded[96:] = 128
    stored = io.BytesIO()
    Image.fromarray(banded).save(stored, "JPEG", quality=95)
    assert (np.asarray(Image.open(io.BytesIO(stored.getvalue())))[-16:] == 128).all()  # really the fill value
    pq.write_table(pa.table({"guid": ["p3", "p5"], "image": [jpeg((0, 0, 230))[:100], stored.getvalue()]}), dataset / "part-1.parquet")
    pd.DataFrame({"guid": ["p1", "p2", "p3", "p4", "p5"], "description": [None, "монета", None, None, None], "typology": "x"}).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    score.run(spark, settings, str(tmp_path / "in.parquet"), str(out), spec(), image_dataset=str(dataset), factory=stand_in)
    got = pd.read_parquet(out)
    assert list(got["guid"]) == ["p1", "p2", "p3", "p4", "p5"]
    assert list(got["source"]) == ["image", "text", "default", "default", "image"], got["note"].tolist()
    assert got.loc[0, "typology"] == CLASSES[PAINTING] and got.loc[1, "typology"] == CLASSES[COIN]
    assert "corrupt image" in got.loc[2, "note"] and got.loc[3, "note"] == "no description; no image"
    # what rescore compares: the image's hash and the normalised description's hash
    assert got.loc[0, "image_sha256"] == "orig-p1" and got.loc[3, "image_sha256"] is None  # the original file's hash
    assert got.loc[1, "description_hash"] == score.description_hash("монета") and np.isnan(got.loc[0, "text_confidence"])


class PartitionLoggingImage(ColourImage):
    """ColourImage that notes, in a file named after its Spark partition, how many images it scored."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir

    def predict_proba(self, images, batch_size=0):
        from pyspark import TaskContext

        with open(f"{self.log_dir}/{TaskContext.get().partitionId()}", "a") as f:
            f.write(f"{len(images)}\n")
        return super().predict_proba(images, batch_size)


def test_images_of_one_part_file_spread_over_every_task(spark, settings, tmp_path):
    """A dataset of one part file used to be scored by one task while the other cores idled."""
    dataset, seen = tmp_path / "dataset", tmp_path / "seen"
    dataset.mkdir()
    seen.mkdir()
    guids = [f"g{i}" for i in range(8)]
    pq.write_table(pa.table({"guid": guids, "image": [jpeg((230, 0, 0))] * 8}), dataset / "part-0.parquet")
    pd.DataFrame({"guid": guids, "description": None, "typology": "x"}).to_parquet(tmp_path / "in.parquet")
    log_dir = str(seen)
    result = score.run(spark, settings, str(tmp_path / "in.parquet"), str(tmp_path / "out.csv"), spec(), image_dataset=str(dataset), factory=lambda s: score.Scorer(s, KeywordText(), PartitionLoggingImage(log_dir)))
    assert list(result["result"]["source"]) == ["image"] * 8
    per_task = {p.name: sum(map(int, p.read_text().split())) for p in seen.iterdir()}
    assert spark.sparkContext.defaultParallelism == 2 and per_task == {"0": 4, "1": 4}


def write_row_groups(path, groups) -> None:
    """One part file, a row group per list of (guid, colour, sha256)."""
    schema = pa.schema([("guid", pa.string()), ("image", pa.binary()), ("sha256", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for rows in groups:
            writer.write_table(pa.table({"guid": [g for g, _, _ in rows], "image": [jpeg(c) for _, c, _ in rows], "sha256": [s for _, _, s in rows]}, schema=schema))


RED, BLUE = (230, 0, 0), (0, 0, 230)


def test_part_image_reader_reads_only_the_row_groups_asked_for(tmp_path):
    part = str(tmp_path / "part-0.parquet")
    # guids in no order across row groups; "a" twice (its last row wins, as a guid filter gave)
    write_row_groups(part, [[("m", RED, "s-m"), ("a", RED, "old")], [("z", BLUE, "s-z"), ("b", BLUE, "")], [("a", BLUE, "new"), ("c", RED, None)]])
    reader = score.PartImageReader()
    assert reader.position(part, "z") == (1, 0) and reader.position(part, "a") == (2, 0) and reader.position(part, "nope") is None
    found = reader.read(part, ["c", "a", "nope"])
    assert set(found) == {"a", "c"} and reader.row_groups_read == 1  # both in the last row group
    assert found["a"] == (jpeg(BLUE), "new") and found["c"] == (jpeg(RED), None)
    assert reader.read(part, ["m"])["m"] == (jpeg(RED), "s-m") and reader.row_groups_read == 2
    assert reader.read(part, ["m"]) and reader.row_groups_read == 2  # the last row group is kept
    assert score.read_dataset_images(part, {"b", "z"}, None) == {"b": (jpeg(BLUE), ""), "z": (jpeg(BLUE), "s-z")}
    reader.release()
    assert reader.read(part, ["m"]) and reader.row_groups_read == 3  # released: read again
    # The worker outlives the job: a re-run of ingest rewrites the part file under the same name,
    # its rows elsewhere. The reader notices (every row read is checked) and indexes it afresh.
    write_row_groups(part, [[("c", BLUE, "c2"), ("z", RED, "z2")], [("m", BLUE, "m2")]])
    assert reader.read(part, ["m", "c"]) == {"m": (jpeg(BLUE), "m2"), "c": (jpeg(BLUE), "c2")}
    assert reader.read(part, ["a", "z"]) == {"z": (jpeg(RED), "z2")} and reader.parts_indexed == 2
    write_row_groups(part, [[("z", BLUE, "z3")]])  # fewer row groups than indexed
    assert reader.read(part, ["m", "z"]) == {"z": (jpeg(BLUE), "z3")} and reader.parts_indexed == 3
    assert reader.read(part, ["absent"]) == {} and reader.parts_indexed == 3  # an index of this batch is trusted
    reader.release()  # the batch ends; then a row is added where the index has none
    write_row_groups(part, [[("z", BLUE, "z3"), ("new", RED, "n")]])
    assert reader.read(part, ["new"]) == {"new": (jpeg(RED), "n")} and reader.parts_indexed == 4


def test_scorer_reads_each_row_group_of_images_once_whatever_the_input_order(tmp_path):
    """Chunks of 4 rows over a part file of 3 row groups, asked for in shuffled order: each row
    group is read once (reading by guid filter read the whole file per chunk), results in input order."""
    part = str(tmp_path / "part-0.parquet")
    colour = {f"g{i}": RED if i % 3 == 0 else BLUE for i in range(12)}
    write_row_groups(part, [[(g, colour[g], f"s-{g}") for g in list(colour)[k : k + 4]] for k in (0, 4, 8)])
    guids = [f"g{i}" for i in np.random.default_rng(0).permutation(12)] + ["gone", "g1"]
    refs = [part] * 13 + [str(tmp_path / "no-such-part.parquet")]
    tasks = pd.DataFrame({"row": range(14), "guid": guids, "text": "", "image_kind": score.IMAGE_DATASET, "image_ref": refs, "note": ""})
    scorer = score.Scorer(dataclasses.replace(spec(), image_batch=1), KeywordText(), ColourImage())
    got = scorer.score_frame(tasks)
    assert list(got["row"]) == list(range(14)) and list(got["guid"]) == guids
    assert scorer.dataset_images.row_groups_read == 3
    expected = [CLASSES[PAINTING] if colour[g] == RED else CLASSES[BOOK] for g in guids[:12]]
    assert list(got["typology"][:12]) == expected and list(got["image_sha256"][:12]) == [f"s-{g}" for g in guids[:12]]
    assert list(got["source"][12:]) == ["default", "default"]
    assert "image missing from" in got["note"][12] and "image unreadable: " in got["note"][13] and "no-such-part" in got["note"][13]


def test_an_unreadable_image_file_is_a_note_that_names_it_once(tmp_path):
    refs = [str(tmp_path), str(tmp_path / "gone.jpg")]  # a directory, a file that is not there
    tasks = pd.DataFrame({"row": range(2), "guid": ["d", "g"], "text": "", "image_kind": score.IMAGE_FILE, "image_ref": refs, "note": ""})
    got = score.Scorer(spec(), KeywordText(), ColourImage()).score_frame(tasks)
    assert list(got["source"]) == ["default", "default"]
    for note, ref in zip(got["note"], refs):
        assert note.startswith(f"image unreadable: {ref}: cannot read ("), note  # the path once before the cause


def test_a_model_giving_non_finite_probabilities_is_a_note_on_the_row(tmp_path):
    """The cascade takes such a row as missing the modality: it fell back to the default class
    with the note "no image" only, no word of the text model's NaN."""

    class NanForSabres(KeywordText):
        def predict_proba(self, texts, batch_size=0):
            proba = super().predict_proba(texts, batch_size)
            proba[["сабля" in t for t in texts]] = np.nan
            return proba

    tasks = pd.DataFrame({"row": range(2), "guid": ["a", "b"], "text": ["монета", "сабля"], "image_kind": None, "image_ref": None, "note": ""})
    got = score.Scorer(spec(), NanForSabres(), ColourImage()).score_frame(tasks)
    assert list(got["source"]) == ["text", "default"] and list(got["note"]) == ["no image", "no image; text model gave non-finite probabilities"]
    assert np.isnan(got["text_confidence"][1]) and got["confidence"][1] == 0.0


def test_scorer_indexes_each_part_file_once_when_the_input_interleaves_many(tmp_path):
    parts = [str(tmp_path / f"part-{p}.parquet") for p in range(40)]
    for p, part in enumerate(parts):
        write_row_groups(part, [[(f"p{p}-{r}", RED if r else BLUE, None)] for r in range(2)])
    guids = [f"p{p}-{r}" for r in range(2) for p in range(40)]  # part 0, 1, ..., 39, 0, 1, ...
    tasks = pd.DataFrame({"row": range(80), "guid": guids, "text": "", "image_kind": score.IMAGE_DATASET, "image_ref": [parts[int(g[1:].split("-")[0])] for g in guids], "note": ""})
    scorer = score.Scorer(dataclasses.replace(spec(), image_batch=2), KeywordText(), ColourImage())
    scorer.dataset_images.indexed_parts = 8
    got = scorer.score_frame(tasks)
    assert list(got["typology"]) == [CLASSES[BOOK]] * 40 + [CLASSES[PAINTING]] * 40
    assert scorer.dataset_images.parts_indexed <= 2 * 40 and scorer.dataset_images.row_groups_read == 80


def test_plan_tasks_gives_dataset_rows_their_place_in_the_dataset():
    from museum_typology.catalogue import InputRow

    rows = [InputRow(g, "test", "in.csv", i + 1, i + 2, "монета", None) for i, g in enumerate(["c", "a", "x", "b"])]
    tasks = score.plan_tasks(rows, {"x": "/f/x.jpg"}, {"a": "p1", "b": "p1", "c": "p2"})  # part by part, in row order
    assert list(tasks["image_pos"]) == [2, 0, -1, 1]
    assert list(tasks["image_kind"]) == [score.IMAGE_DATASET, score.IMAGE_DATASET, score.IMAGE_FILE, score.IMAGE_DATASET]


def test_partition_ids_cut_large_part_files_keep_small_ones_whole_and_keys_hit_their_partition(spark):
    kinds = [score.IMAGE_DATASET] * 12 + [score.IMAGE_FILE] * 3 + [None]
    refs = ["big"] * 10 + ["small"] * 2 + ["f1", "f2", "f3", None]
    tasks = pd.DataFrame({"row": range(16), "image_kind": kinds, "image_ref": refs})
    pid = score.partition_ids(tasks, 4)
    assert pid.min() >= 0 and pid.max() <= 3
    in_dataset = pid[:12]
    assert sorted(np.bincount(in_dataset, minlength=4)) == [3, 3, 3, 3]  # 12 dataset rows, 3 per partition
    assert len(set(pid[10:12])) == 1  # the small part file is read by one task
    assert list(pid[12:15]) == [0, 1, 2] and pid[15] == 0  # image files and text rows round-robin, each kind on its own
    # An image on every other row: the images still spread evenly (round-robin over all rows put
    # every image in partition 0 of 2).
    alternating = pd.DataFrame({"row": range(8), "image_kind": [score.IMAGE_FILE, None] * 4, "image_ref": ["f", None] * 4})
    spread = score.partition_ids(alternating, 2)
    assert np.bincount(spread[::2], minlength=2).tolist() == [2, 2] and np.bincount(spread[1::2], minlength=2).tolist() == [2, 2]
    # Image files and dataset images in one input (--images and --image-dataset): 3 + 3 on 2 cores.
    mixed = pd.DataFrame({"row": range(6), "image_kind": [score.IMAGE_FILE] * 3 + [score.IMAGE_DATASET] * 3, "image_ref": ["f1", "f2", "f3", "p", "p", "p"]})
    assert np.bincount(score.partition_ids(mixed, 2), minlength=2).tolist() == [3, 3]
    # More partitions than cores (a text-heavy input): dataset rows are cut by the cores only,
    # so the big part file is read by 2 tasks, not 10.
    wide = score.partition_ids(tasks, 40, cores=2)
    assert len(set(wide[:10])) == 2 and len(set(wide[:12])) == 3 and wide.max() < 40
    # With the rows' places in the dataset (plan_tasks' image_pos), each task gets neighbouring
    # rows of the part file, so it reads about its share of the row groups, not all of them.
    shuffled = pd.DataFrame({"row": range(8), "image_kind": score.IMAGE_DATASET, "image_ref": "big", "image_pos": [5, 0, 7, 2, 6, 1, 3, 4]})
    halves = score.partition_ids(shuffled, 2)
    by_pos = halves[np.argsort(shuffled["image_pos"].to_numpy())]
    assert len(set(by_pos[:4])) == 1 and len(set(by_pos[4:])) == 1 and by_pos[0] != by_pos[4]
    in_input_order = score.partition_ids(shuffled.drop(columns="image_pos"), 2)
    assert len(set(in_input_order[[1, 5, 3, 6]])) == 2  # without them, places 0-3 went to both tasks
    assert list(score.partition_ids(shuffled.set_axis([0, 0, 1, 1, 2, 2, 3, 3]), 2)) == list(halves)  # any index
    # The keys send each row to exactly the partition chosen for it, on more partitions than cores.
    from pyspark.sql import functions as F

    for n in (2, 8, 16):
        keys = score.partition_keys(spark, n)
        frame = spark.createDataFrame(pd.DataFrame({"want": np.repeat(np.arange(n), 3), "key": np.repeat(keys, 3)}), "want long, key long")
        got = frame.repartition(n, "key").select("want", F.spark_partition_id().alias("got")).toPandas()
        assert (got["want"] == got["got"]).all(), n


def test_the_tuned_cascade_changes_the_decision(spark, settings, bad_rows):
    out = bad_rows / "out.csv"
    score.run(spark, settings, str(bad_rows / "in.csv"), str(out), spec(t_text=1.01, w_text=1.0), images_dir=str(bad_rows / "images"), factory=stand_in)
    got = list(csv.DictReader(open(out, encoding="utf-8")))
    assert got[4]["source"] == "blend" and got[4]["typology"] == CLASSES[SWORD]  # all weight on the text


def test_a_parquet_guid_with_a_control_character_is_rejected_as_in_csv(tmp_path):
    pd.DataFrame({"guid": ["a\x00b", "ok"], "description": ["x", "y"]}).to_parquet(tmp_path / "in.parquet")
    rows = score.read_rows(str(tmp_path / "in.parquet"))
    assert [r.rejected_reason for r in rows] == ["in.parquet row 1: guid 'a\\x00b' holds a control character", None]


def test_a_parquet_guid_with_a_control_character_goes_into_the_csv_output_escaped():
    """A raw NUL in the output CSV cut the guid short for pandas ("g\\x003" read as "g")."""
    result = pd.DataFrame({"guid": ["g\x003", "ok"], "typology": [CLASSES[0]] * 2, "confidence": [0.5, 0.9], "source": ["text"] * 2, "model_version": ["v"] * 2, "note": ["in.parquet row 1: guid 'g\\x003' holds a control character", ""]})
    back = pd.read_csv(io.BytesIO(score.to_csv(result)), dtype=str, keep_default_na=False)
    assert back["guid"].tolist() == ["g\\x003", "ok"] and back["note"][0].endswith("holds a control character")
    result = result.assign(**{name: None for name in score.DETAIL_COLUMNS})
    assert pq.read_table(io.BytesIO(score.to_parquet(result))).column("guid").to_pylist() == ["g\x003", "ok"]  # Parquet keeps it as read


def test_a_parquet_directory_is_read_file_by_file(tmp_path):
    """Read as one dataset, every file took the first file's column names as spelled ("GUID" in
    the second file came in as empty guids, the rows' guids and titles lost without an error)
    and types (an all-empty description stored as Arrow's null type stopped the read with a
    traceback). A row's messages name its file."""
    items = tmp_path / "items"
    items.mkdir()
    pq.write_table(pa.table({"guid": ["p1", "p2"], "description": pa.array([None, None], pa.null())}), items / "a.parquet")
    pq.write_table(pa.table({" GUID ": ["p3", "p1", ""], "Description": ["Фото", "Ваза", "Монета"], "image": [b"x", b"y", b"z"]}), items / "b.parquet")
    (items / "_SUCCESS").write_bytes(b"")
    rows = score.read_rows(str(items))
    assert [(r.guid, r.description, r.source_file, r.source_row) for r in rows] == [
        ("p1", None, "items/a.parquet", 1), ("p2", None, "items/a.parquet", 2), ("p3", "Фото", "items/b.parquet", 1), ("p1", "Ваза", "items/b.parquet", 2), (None, "Монета", "items/b.parquet", 3)
    ]
    assert rows[4].rejected_reason == "items/b.parquet row 3: empty guid"
    tasks = score.plan_tasks(rows, {}, {})
    assert tasks["note"].tolist()[3] == "duplicate guid (first at items/a.parquet row 1)"
    pq.write_table(pa.table({"guid": ["p4"], "GUID": ["p5"], "description": ["x"]}), items / "c.parquet")
    with pytest.raises(CsvError, match=r"items/c.parquet, line 1: column\(s\) guid appear more than once in the header \(compared without case"):
        score.read_rows(str(items))


def test_a_repeated_column_that_score_does_not_read_is_ignored(tmp_path):
    """typology and url are ignored in the rows to score, but named twice they were refused."""
    (tmp_path / "in.csv").write_text("guid,description,typology,url,typology,url\ng1,Ваза,a,u,b,v\n", encoding="utf-8")
    assert [(r.guid, r.description) for r in score.read_rows(str(tmp_path / "in.csv"))] == [("g1", "Ваза")]
    (tmp_path / "in.csv").write_text("guid,description,description\ng1,Ваза,\n", encoding="utf-8")
    with pytest.raises(CsvError, match=r"column\(s\) description appear more than once"):
        score.read_rows(str(tmp_path / "in.csv"))


def test_parquet_guids_that_are_not_text_read_as_evaluate_and_submission_read_them(tmp_path):
    """Integer guids with one missing: pandas writes floats, and score read guid "1.0" where
    evaluate and submission read "1", so a submission from score's output lacked every row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from museum_typology import evaluate

    pd.DataFrame({"guid": [1, None, 3], "description": ["Монета", "Сабля", None]}).to_parquet(tmp_path / "floats.parquet")
    rows = score.read_rows(str(tmp_path / "floats.parquet"))
    assert [r.guid for r in rows] == ["1", None, "3"] and [r.description for r in rows] == ["Монета", "Сабля", None]
    assert list(evaluate.read_table(str(tmp_path / "floats.parquet"), ["guid"], "truth")["guid"]) == ["1", "", "3"]
    # from 1e10 up Arrow wrote floats in exponent form ("1.0000000007e+10"), matching no CSV guid
    pd.DataFrame({"guid": [10000000007, None, 123456789012], "description": ["Монета", "Сабля", None]}).to_parquet(tmp_path / "big.parquet")
    assert [r.guid for r in score.read_rows(str(tmp_path / "big.parquet"))] == ["10000000007", None, "123456789012"]
    assert list(evaluate.read_table(str(tmp_path / "big.parquet"), ["guid"], "truth")["guid"]) == ["10000000007", "", "123456789012"]
    pq.write_table(pa.table({"guid": pa.array([b"abc", "кп".encode()]), "description": pa.array([b"x", None], pa.binary())}), tmp_path / "binary.parquet")
    assert [(r.guid, r.description) for r in score.read_rows(str(tmp_path / "binary.parquet"))] == [("abc", "x"), ("кп", None)]
    pd.DataFrame({"GUID": ["g1"], "Description ": ["Ваза"]}).to_parquet(tmp_path / "upper.parquet")  # as a CSV header is read
    assert [(r.guid, r.description) for r in score.read_rows(str(tmp_path / "upper.parquet"))] == [("g1", "Ваза")]
    pd.DataFrame({"guid": ["a"], "GUID": ["b"], "description": ["x"]}).to_parquet(tmp_path / "twice.parquet")
    with pytest.raises(CsvError, match=r"twice.parquet, line 1: column\(s\) guid appear more than once .*without case"):
        score.read_rows(str(tmp_path / "twice.parquet"))
    pq.write_table(pa.table({"guid": pa.array([b"\xff\xfe"]), "description": ["x"]}), tmp_path / "not-utf8.parquet")
    with pytest.raises(CsvError, match=r"not-utf8.parquet: the guid and description columns must be text"):
        score.read_rows(str(tmp_path / "not-utf8.parquet"))


def test_parquet_output_has_one_schema_with_rows_or_without():
    """A header-only input wrote a Parquet file of null-typed columns, which no reader could
    combine with another night's or run's output."""
    import pyarrow.parquet as pq

    empty = pd.DataFrame(columns=list(score.RESULT_COLUMNS))
    one = pd.DataFrame([{"row": 0, "guid": "a", "typology": CLASSES[0], "confidence": 0.9, "source": "text", "model_version": "v", "note": "",
                         "text_confidence": 0.9, "image_confidence": None, "description_hash": "h", "image_sha256": None}])
    schemas = [pq.read_table(io.BytesIO(score.to_parquet(frame))).schema for frame in (empty, one)]
    assert schemas[0] == schemas[1] == score.OUTPUT_SCHEMA


def test_a_cascade_tuned_on_other_models_gives_way_to_the_conf(settings, tmp_path, caplog):
    """score paired the newest cascade with whatever bundles it scored with: after a retraining
    without tune-cascade, or a trial run's out-of-fold file, thresholds fitted to another model."""
    import json

    models = tmp_path / "models"
    for kind, version, marker, body in (("text", "T1", "calibration.json", {}), ("image", "I1", "model.json", {"kind": "folds"}), ("image", "I2", "model.json", {"kind": "final"})):
        (models / kind / version).mkdir(parents=True)
        (models / kind / version / marker).write_text(json.dumps(body))
    (models / "cascade" / "C1").mkdir(parents=True)
    tuned = {"t_text": 0.5, "t_image": 0.6, "w_text": 0.3, "default_class": CLASSES[14]}
    (models / "cascade" / "C1" / "cascade.json").write_text(json.dumps({"params": tuned, "metrics": {"inputs": {"text_model": "T1", "image_model": "I1"}}}))
    (models / "cascade" / "latest").write_text("C1")
    cascade = str(models / "cascade")
    text, fold_image, final_image = (str(models / k / v) for k, v in (("text", "T1"), ("image", "I1"), ("image", "I2")))
    assert score.cascade_params(settings, cascade, None, text, fold_image) == (score.CascadeParams.from_dict(tuned), "C1")
    # a --final bundle has no out-of-fold predictions of its own: without a record of the fold
    # run behind its labels its side is not checked; with one, that run must be the cascade's
    assert score.cascade_params(settings, cascade, None, text, final_image)[1] == "C1"
    image_oof = {"source": "image", "versions": ["I1"]}
    made_from = {"labels_manifest": {"url": "clean/cleaned_manifest.parquet", "sha256": "0" * 64, "made_from": {"oof/text.parquet": {"source": "text", "versions": ["T0"]}, "oof/image.parquet": image_oof}}}
    (models / "image" / "I2" / "data.json").write_text(json.dumps(made_from))
    assert score.cascade_params(settings, cascade, None, text, final_image)[1] == "C1"
    image_oof["versions"] = ["I0"]
    (models / "image" / "I2" / "data.json").write_text(json.dumps(made_from))
    with caplog.at_level("WARNING"):
        assert score.cascade_params(settings, cascade, None, text, final_image)[1].startswith("conf-")
    assert "image model I1, not the fold run behind final bundle I2's labels (I0)" in caplog.text
    caplog.clear()
    # labels cleaned with text predictions alone name no image fold run: not checked
    del made_from["labels_manifest"]["made_from"]["oof/image.parquet"]
    (models / "image" / "I2" / "data.json").write_text(json.dumps(made_from))
    assert score.cascade_params(settings, cascade, None, text, final_image)[1] == "C1"
    (models / "text" / "T2").mkdir()
    with caplog.at_level("WARNING"):
        params, version = score.cascade_params(settings, cascade, None, str(models / "text" / "T2"), fold_image)
    assert version.startswith("conf-") and params == score.CascadeParams.from_dict(settings.section("cascade"))
    assert "was tuned on text model T1, not T2; scoring with the [cascade] settings instead" in caplog.text
    # a cascade that did not record its inputs (older bundles) is used as before
    (models / "cascade" / "C1" / "cascade.json").write_text(json.dumps({"params": tuned}))
    assert score.cascade_params(settings, cascade, None, str(models / "text" / "T2"), fold_image)[1] == "C1"
    # the default class is the conf's, tuned cascade or not, and a changed one is a new version;
    # one that is no class is a settings error (it was scored with, or a traceback)
    other = settings.set(["cascade", "default_class"], CLASSES[12], "test")
    params, version = score.cascade_params(other, cascade, None, text, fold_image)
    assert params == score.CascadeParams.from_dict({**tuned, "default_class": CLASSES[12]}) and version == "C1+default-12"
    for models_dir in (cascade, str(tmp_path / "no-cascade")):
        with pytest.raises(ConfigError, match="default_class 'фото' is not one of the 15 classes"):
            score.cascade_params(settings.set(["cascade", "default_class"], "фото", "test"), models_dir, None, text, fold_image)


def test_a_damaged_bundle_file_is_a_score_error_naming_it(settings, tmp_path):
    """A truncated calibration.json, model.json or cascade.json (a disk filled up, a hand edit)
    was a JSONDecodeError or KeyError traceback out of score and rescore."""
    import json

    models = tmp_path / "models"
    for kind, version, marker, body in (("text", "T1", "calibration.json", "{}"), ("image", "I1", "model.json", '{"kind": "folds"}'), ("cascade", "C1", "cascade.json", '{"params": {"t_text": 0.5}')):
        (models / kind / version).mkdir(parents=True)
        (models / kind / version / marker).write_text(body)
        (models / kind / "latest").write_text(version)
    cascade, text, image = str(models / "cascade"), str(models / "text" / "T1"), str(models / "image" / "I1")
    with pytest.raises(score.ScoreError, match=r"C1/cascade.json: not a readable bundle file"):
        score.cascade_params(settings, cascade, None, text, image)
    (models / "cascade" / "C1" / "cascade.json").write_text(json.dumps({"metrics": {"inputs": {"text_model": "T1"}}}))
    with pytest.raises(score.ScoreError, match=r"C1/cascade.json: no usable cascade parameters"):
        score.cascade_params(settings, cascade, None, text, image)
    (models / "cascade" / "C1" / "cascade.json").write_text(json.dumps({"params": {}, "metrics": {"inputs": {"image_model": "I0"}}}))
    (models / "image" / "I1" / "model.json").write_text("[1, 2")
    with pytest.raises(score.ScoreError, match=r"I1/model.json: not a readable bundle file"):
        score.cascade_params(settings, cascade, None, text, image)
    (models / "text" / "T1" / "calibration.json").write_text("[]")
    with pytest.raises(score.ScoreError, match=r"T1/calibration.json: holds list, not a JSON object"):
        score.text_normalization(text, None)
    # a bundle from newer code: one line, not a ValueError from normalize at the first row
    (models / "text" / "T1" / "calibration.json").write_text('{"normalization": 99}')
    with pytest.raises(score.ScoreError, match=r"T1: trained on text normalisation 99, which this code does not know"):
        score.text_normalization(text, None)
    # resolve_models reads both markers whatever the cascade: the image one was read only when
    # the cascade named another image model (else the executors failed on it)
    (models / "text" / "T1" / "calibration.json").write_text("{}")
    (models / "cascade" / "C1" / "cascade.json").write_text(json.dumps({"params": {}, "metrics": {"inputs": {"image_model": "I1"}}}))
    for cascade_there in (True, False):
        if not cascade_there:
            shutil.rmtree(models / "cascade")
        with pytest.raises(score.ScoreError, match=r"I1/model.json: not a readable bundle file"):
            score.resolve_models(settings, str(models))
    (models / "image" / "I1" / "model.json").write_text('{"kind": "folds"}')
    (models / "text" / "T1" / "calibration.json").write_text("{trunc")
    with pytest.raises(score.ScoreError, match=r"T1/calibration.json: not a readable bundle file"):
        score.resolve_models(settings, str(models))


def test_missing_column_and_missing_models_are_clear_errors(tmp_path, capsys):
    write_csv(tmp_path / "no_description.csv", [("a", "")], header=("guid", "typology"))
    with pytest.raises(CsvError, match="missing column.*description"):
        score.read_rows(str(tmp_path / "no_description.csv"))
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(CsvError, match=r"bad.parquet: missing column\(s\) guid, description"):
        score.read_rows(str(tmp_path / "bad.parquet"))
    code = cli.main(["score", "--input", str(tmp_path / "no_description.csv"), "--output", str(tmp_path / "o.csv"), "--model", str(tmp_path / "models")])
    assert code == 2 and "no text or image model bundle" in capsys.readouterr().err


def test_an_output_that_is_a_directory_or_the_input_is_refused_before_spark(tmp_path, capsys, monkeypatch):
    # A directory failed the job after all the scoring, with a traceback and a stray temp file;
    # the input as output was overwritten.
    write_csv(tmp_path / "in.csv", [("a", "Монета")])
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(cli, "_spark", lambda *a: pytest.fail("Spark started before the arguments were checked"))
    (tmp_path / "afile").write_text("x")
    for output, message in (
        (tmp_path / "out", "--output is a directory; name a .csv or .parquet file"),
        (tmp_path / "." / "in.csv", "--output is the --input file"),
        (tmp_path / "out.json", "--output must end in .csv, .parquet or .pq"),  # it was written as CSV
        (tmp_path / "afile" / "sub" / "o.csv", f"{tmp_path / 'afile'} is a file, not a folder"),  # failed after scoring
    ):
        assert cli.main(["score", "--input", str(tmp_path / "in.csv"), "--output", str(output), "--model", str(tmp_path / "models")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert (tmp_path / "in.csv").read_text(encoding="utf-8").startswith("guid,description")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.csv", "out"]


def test_a_parquet_input_directory_is_not_read_with_its_own_output_or_a_stray_file(tmp_path, monkeypatch):
    """A directory is one Parquet dataset whose columns are its first file's: predictions written
    into it came back on a re-run as rows without descriptions (2 rows scored as 4)."""
    items = tmp_path / "items"
    items.mkdir()
    pq.write_table(pa.table({"guid": ["a", "b"], "description": ["Монета", "Ваза"]}), items / "part-0.parquet")
    assert [r.guid for r in score.read_rows(str(items))] == ["a", "b"]
    with pytest.raises(OSError, match="--output is inside the --input directory; a re-run would read the predictions back"):
        score.check_output(str(items), str(items / "pred.parquet"))
    score.check_output(str(items / "part-0.parquet"), str(tmp_path / "items.parquet"))  # a sibling is fine
    pq.write_table(pa.table({"guid": ["a", "b"], "typology": ["x", "y"]}), items / "pred.parquet")
    with pytest.raises(CsvError, match="items: its file pred.parquet has no description column; every Parquet file of an input directory"):
        score.read_rows(str(items))


def test_image_lookup_ignores_extensions_and_hidden_files(tmp_path):
    for name in ["x.JPG", "y", "z.tar.gz", ".DS_Store"]:
        (tmp_path / name).write_bytes(b"1")
    found = score.find_image_files(str(tmp_path))
    # z.tar.gz: one extension is cut, not everything after the first dot (it was "z").
    assert found == {"x": str(tmp_path / "x.JPG"), "y": str(tmp_path / "y"), "z.tar": str(tmp_path / "z.tar.gz")}
    with pytest.raises(OSError, match="must be a directory"):
        score.find_image_files(str(tmp_path / "x.JPG"))


def test_image_folder_with_a_name_that_is_not_utf8_a_dangling_link_or_a_fifo(tmp_path, caplog):
    """A file name that is not UTF-8 (a cp1251 name from an old archive) failed the whole job with
    pyarrow's UnicodeDecodeError; a dangling symbolic link vanished from the listing, so its row
    said only "no image"; a FIFO must not be read (it would block)."""
    import os

    (tmp_path / "good.jpg").write_bytes(jpeg((200, 0, 0)))
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.jpg"), "wb") as handle:
        handle.write(b"x")
    (tmp_path / "dang.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    with caplog.at_level("WARNING"):
        found = score.find_image_files(str(tmp_path))
    assert found == {"good": str(tmp_path / "good.jpg"), "dang": str(tmp_path / "dang.jpg")}
    assert "1 file name(s) that are not UTF-8 text left out, e.g. b'bad\\xff.jpg'" in caplog.text
    tasks = pd.DataFrame({"row": range(2), "guid": ["good", "dang"], "text": "", "image_kind": score.IMAGE_FILE, "image_ref": [found["good"], found["dang"]], "note": ""})
    got = score.Scorer(spec(), KeywordText(), ColourImage()).score_frame(tasks)
    assert list(got["source"]) == ["image", "default"] and got["note"][1].startswith(f"image unreadable: {tmp_path / 'dang.jpg'}")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    write_row_groups(str(dataset / "part-0.parquet"), [[("g1", (200, 0, 0), None)]])
    with open(os.path.join(os.fsencode(dataset), b"notes\xe9.txt"), "wb") as handle:
        handle.write(b"x")
    assert score.find_dataset_images(str(dataset)) == {"g1": str(dataset / "part-0.parquet")}


def test_image_lookup_skips_sidecars_and_keeps_dotted_guids(tmp_path):
    # u1.xmp beside u1.jpg made u1 "ambiguous" (no image, a note); inv.1.jpg was looked up as "inv".
    for name in ["u1.jpg", "u1.xmp", "u1.json", "u1.txt", "Thumbs.db", "inv.1.jpg", "inv.2"]:
        (tmp_path / name).write_bytes(b"1")
    found = score.find_image_files(str(tmp_path))
    assert found == {"u1": str(tmp_path / "u1.jpg"), "inv.1": str(tmp_path / "inv.1.jpg"), "inv.2": str(tmp_path / "inv.2")}
    assert found.ambiguous == {}


def test_image_lookup_tells_a_dotted_guid_from_an_extension_by_the_rows(tmp_path):
    # MS.A was looked up as guid MS with extension "a": the row MS.A got no image.
    for name in ["MS.A", "MS.B.jpg", "u1.jpg"]:
        (tmp_path / name).write_bytes(b"1")
    assert score.find_image_files(str(tmp_path)) == {"MS": str(tmp_path / "MS.A"), "MS.B": str(tmp_path / "MS.B.jpg"), "u1": str(tmp_path / "u1.jpg")}
    found = score.find_image_files(str(tmp_path), None, {"MS.A", "MS.B", "u1"})
    assert found == {"MS.A": str(tmp_path / "MS.A"), "MS.B": str(tmp_path / "MS.B.jpg"), "u1": str(tmp_path / "u1.jpg")}


def test_a_guid_with_several_image_files_gets_no_image_and_a_note(tmp_path):
    # The first by name was used silently (a broken g3.jpg hid a good g3.png); ingest quarantines.
    for name in ["g3.jpg", "g3.png", "g4.png"]:
        (tmp_path / name).write_bytes(b"1")
    found = score.find_image_files(str(tmp_path))
    assert found == {"g4": str(tmp_path / "g4.png")} and found.ambiguous == {"g3": ["g3.jpg", "g3.png"]}
    rows = [InputRow(guid=g, split="test", source_file="t.csv", source_row=n, source_line=n + 1, description="Монета", typology=None) for n, g in enumerate(["g3", "g4"], 1)]
    tasks = score.plan_tasks(rows, found, {"g3": "part-0.parquet"})
    assert tasks["image_kind"].tolist() == [None, score.IMAGE_FILE]
    assert tasks["note"].tolist() == ["image ambiguous: 2 image files for this guid: g3.jpg, g3.png", ""]


class RowLoggingScorer:
    """Notes, in a file named after its Spark partition, the rows of each batch in the order it gets
    them; its results are placeholders."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir

    def score_frame(self, tasks):
        from pyspark import TaskContext

        with open(f"{self.log_dir}/{TaskContext.get().partitionId()}", "a") as f:
            f.write("".join(f"{r}\n" for r in tasks["row"]))
        n = len(tasks)
        return pd.DataFrame({"row": tasks["row"].to_numpy(), "guid": tasks["guid"].to_numpy(), "typology": ["x"] * n, "confidence": np.zeros(n), "source": ["text"] * n, "model_version": ["v"] * n, "note": [""] * n, "text_confidence": np.zeros(n), "image_confidence": np.zeros(n), "description_hash": [None] * n, "image_sha256": [None] * n})


def test_a_large_input_is_scored_in_spark_jobs_of_at_most_rows_per_job_rows(spark, settings, monkeypatch):
    """One Spark job brought every result to the driver at once: past spark.driver.maxResultSize
    (1g, ~3.9M rows) the job failed after scoring everything. The rows go in jobs of at most
    score.rows_per_job; together they are the one job's answer, every row once, in row order."""
    n = 23
    tasks = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "guid": [f"g{i}" for i in range(n)], "text": [f"монета {i}" for i in range(n)], "image_kind": None, "image_ref": None, "note": ""})
    whole = score.score_tasks(spark, tasks, spec(), rows_per_partition=15, factory=stand_in)
    jobs = []
    one_job = score._score_job
    monkeypatch.setattr(score, "_score_job", lambda spark, part, *rest: jobs.append(list(part["row"])) or one_job(spark, part, *rest))
    cut = score.score_tasks(spark, tasks, spec(), rows_per_partition=15, factory=stand_in, rows_per_job=10)
    assert jobs == [list(range(0, 10)), list(range(10, 20)), list(range(20, 23))]
    assert cut.equals(whole) and list(cut["row"]) == list(range(n))
    with pytest.raises(score.ScoreError, match="score.rows_per_job = 0: must be a whole number >= 1"):
        score.check_settings(settings.set(["score", "rows_per_job"], 0, "test"))


def test_each_task_scores_its_rows_in_a_fixed_order_whatever_order_they_arrive_in(spark, tmp_path):
    """Which rows share a scoring batch followed the order a cluster's shuffle delivered them in.
    Each task now gets its rows by image file or part file, then place in the part file, then row:
    also for tasks handed over in reverse order, and a part file's rows come in file order."""
    n = 60
    dataset = np.arange(n) % 3 != 0
    tasks = pd.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "guid": [f"g{i}" for i in range(n)],
        "text": [f"монета {i}" for i in range(n)],
        "image_kind": np.where(dataset, score.IMAGE_DATASET, None),
        "image_ref": np.where(dataset, np.where(np.arange(n) % 2 == 0, "part-0", "part-1"), None),
        "note": "",
        "image_pos": np.where(dataset, 1000 - np.arange(n), -1),  # the part files hold the rows in reverse
    })
    for name, ordered in (("forward", tasks), ("reverse", tasks.iloc[::-1].reset_index(drop=True))):
        log_dir = tmp_path / name
        log_dir.mkdir()
        result = score.score_tasks(spark, ordered, spec(), rows_per_partition=15, factory=lambda s, d=str(log_dir): RowLoggingScorer(d))
        assert list(result["row"]) == list(range(n))
        seen = [[int(line) for line in p.read_text().split()] for p in sorted(log_dir.iterdir())]
        assert len(seen) >= 2 and sorted(i for part in seen for i in part) == list(range(n))
        key = {r: (tasks["image_ref"][r] or "", tasks["image_pos"][r], r) for r in range(n)}
        assert all(part == sorted(part, key=key.get) for part in seen)
