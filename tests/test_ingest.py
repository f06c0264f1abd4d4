"""The ingest job end to end on local Spark: a synthetic data set with a zoo of bad inputs,
then the shared data."""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from museum_typology import ingest, petastorm_io, storage
from museum_typology.catalogue import CsvError
from museum_typology.schema import CLASSES
from conftest import left_by_a_crash


def _jpeg(color, size=(320, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png_rgba(size=(60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (0, 0, 255, 0)).save(buffer, "PNG")  # fully transparent -> white
    return buffer.getvalue()


def make_data(root: Path, images_as: str = "zip") -> dict[str, bytes]:
    """A small data set: 3 CSVs and an archive with good, bad and unsafe images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(
        "\ufeffguid,description,typology\n"
        f"t1,\"Монета.\nКопейка\",{CLASSES[7]}\n"
        f"t2,Брошюра,{CLASSES[8]}\n"
        "t3,Что-то,неизвестный класс\n"
        f"t1,Дубликат,{CLASSES[7]}\n",
        encoding="utf-8",
    )
    # ",," is a row (all fields empty), not a blank line: rejected, yet in the manifest.
    (root / "test.csv").write_text("guid,description,typology\nq1,Картина,\n,,\nq2,,\n", encoding="utf-8")
    files = {
        "i_red": _jpeg((200, 10, 10)),
        "i_png": _png_rgba(),
        "i_trunc": _jpeg((0, 200, 0))[:300],
        "i_empty": b"",
        "i_html": b"<html><body>not found</body></html>",
        "q2": _jpeg((10, 10, 200), size=(1200, 600)),  # an image-only test item
    }
    extra = ["i_escape", "i_deflate"]  # only in the zip: an unsafe name, a corrupt compressed stream
    rows = ["guid,description,typology"] + [f"{g},,{CLASSES[2]}" for g in [*files, *extra] if g != "q2"]
    (root / "train_images.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    names = {"i_red": "images/i_red.jpg", "i_png": "images/i_png", "i_trunc": "images/i_trunc.jpg",
             "i_empty": "images/i_empty.png", "i_html": "images/i_html.jpg", "q2": "images/q2.JPG"}
    if images_as == "zip":
        with zipfile.ZipFile(root / "images.zip", "w") as archive:
            for guid, data in files.items():
                archive.writestr(names[guid], data)
            archive.writestr("../i_escape.jpg", _jpeg((1, 2, 3)))
            archive.writestr("images/orphan.jpg", _jpeg((9, 9, 9)))
            archive.writestr("images/i_deflate.jpg", _jpeg((4, 5, 6)), compress_type=zipfile.ZIP_DEFLATED)
        _corrupt_member(root / "images.zip", "images/i_deflate.jpg")
    else:
        (root / "images").mkdir()
        for guid, data in files.items():
            (root / "images" / Path(names[guid]).name).write_bytes(data)
    return files


def _corrupt_member(archive: Path, member: str) -> None:
    """Overwrite a deflated member's compressed bytes: reading it raises zlib.error (invalid
    block type), which is neither an OSError nor a zipfile.BadZipFile."""
    raw = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo(member)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start : start + info.compress_size] = b"\xff" * info.compress_size
    archive.write_bytes(bytes(raw))


def _manifest(output: Path) -> dict[str, dict]:
    rows = pq.read_table(output / "manifest.parquet").to_pylist()
    return {f"{r['source_file']}:{r['source_row']}": r for r in rows}


def _dataset(output: Path) -> dict[str, object]:
    with petastorm_io.make_reader(str(output / "dataset"), num_epochs=1, workers_count=1, shuffle_row_groups=False) as reader:
        return {row.guid: row for row in reader}


def test_the_images_location_may_be_a_url_or_absolute_and_one_set_on_purpose_must_exist(settings, tmp_path):
    """ingest.images was always joined under paths.data: s3://imgs/all under an s3:// data
    directory became a key below it; and a location that was not there was a warning, so a typo
    in a set location quietly made every row text-only."""
    assert storage.under("s3://museum-data/2021", "s3://imgs/all") == "s3://imgs/all"
    assert storage.under("s3://museum-data/2021", "images.zip") == "s3://museum-data/2021/images.zip"
    assert storage.under("s3://museum-data/2021", "/mnt/images") == "/mnt/images"
    assert storage.under("data", "images") == "data/images" and storage.under("/data", "/mnt/x") == "/mnt/x"
    assert storage.under("s3://museum-data/2021", "file:///mnt/images") == "file:///mnt/images"
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    index = ingest.image_index(str(data), settings.set(["ingest", "images"], str(elsewhere), "test"))
    assert index.kind == "dir" and list(index.members) == ["a"]
    with pytest.raises(storage.StorageError, match=r"data/imgs: no such images archive or directory \(ingest.images = 'imgs'\)"):
        ingest.image_index(str(data), settings.set(["ingest", "images"], "imgs", "test"))
    assert ingest.image_index(str(data), settings).kind == "none"  # the default name: text-only data, a warning


@pytest.mark.parametrize("images_as", ["zip", "dir"])
def test_ingest_zoo(spark, settings, tmp_path, images_as):
    data = tmp_path / "data"
    make_data(data, images_as)
    if images_as == "dir":
        settings = settings.set(["ingest", "images"], "images", "test")
    output = tmp_path / "out"
    summary = ingest.run(spark, settings, str(data), str(output))

    manifest = _manifest(output)
    assert len(manifest) == summary["input_rows"] == 4 + 3 + 7  # every input row exactly once
    by = {(r["source_file"], r["guid"], r["source_row"]): r for r in manifest.values()}

    def row(file, guid, n=None):
        matches = [r for (f, g, s), r in by.items() if f == file and g == guid and (n is None or s == n)]
        assert len(matches) == 1, (file, guid)
        return matches[0]

    assert row("train.csv", "t1", 1)["status"] == "no_image"
    assert row("train.csv", "t1", 1)["has_description"] is True
    assert row("train.csv", "t1", 4)["status"] == "rejected" and "duplicate guid t1" in row("train.csv", "t1", 4)["reason"]
    assert "unknown typology" in row("train.csv", "t3")["reason"]
    assert row("train_images.csv", "i_red")["status"] == "ok"
    assert row("train_images.csv", "i_png")["status"] == "ok"  # no extension: content decides
    assert row("train_images.csv", "i_trunc")["status"] == "quarantined"
    assert "corrupt" in row("train_images.csv", "i_trunc")["reason"] or "truncated" in row("train_images.csv", "i_trunc")["reason"]
    assert "empty file" in row("train_images.csv", "i_empty")["reason"]
    assert "not an image" in row("train_images.csv", "i_html")["reason"]
    if images_as == "zip":
        escape = row("train_images.csv", "i_escape")
        assert escape["status"] == "quarantined" and "'..'" in escape["reason"]
        assert summary["orphan_images"] == ["orphan"]
        deflate = row("train_images.csv", "i_deflate")
        assert deflate["status"] == "quarantined"
        assert "'images/i_deflate.jpg'" in deflate["reason"] and "while decompressing data" in deflate["reason"], deflate["reason"]
    else:
        assert row("train_images.csv", "i_escape")["status"] == "no_image"
        assert row("train_images.csv", "i_deflate")["status"] == "no_image"
    empty = row("test.csv", None)
    assert (empty["source_row"], empty["status"]) == (2, "rejected") and "empty guid" in empty["reason"]
    assert row("test.csv", "q2")["source_row"] == 3
    assert row("test.csv", "q2")["status"] == "ok"
    assert row("test.csv", "q2")["has_description"] is False

    dataset = _dataset(output)
    assert sorted(dataset) == sorted(r["guid"] for r in manifest.values() if r["status"] == "ok")
    red = dataset["i_red"]
    assert red.image.shape == (200, 320, 3) and red.typology == CLASSES[2] and red.split == "train_images"
    assert np.abs(red.image.astype(int) - [200, 10, 10]).max() <= 8  # JPEG, twice
    assert (dataset["i_png"].image >= 250).all()  # transparency flattened onto white
    big = dataset["q2"]
    assert max(big.image.shape[:2]) == settings.get("images.max_side") and (big.orig_width, big.orig_height) == (1200, 600)
    assert big.typology is None and big.split == "test"
    assert storage.is_committed(str(output))
    assert json.loads((output / "summary.json").read_text())["reconciled"] is True


def test_rerun_gives_the_same_dataset_and_failure_keeps_the_old_output(spark, settings, tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_data(data)
    output = tmp_path / "out"
    ingest.run(spark, settings, str(data), str(output))
    first = {g: r.image.tobytes() for g, r in _dataset(output).items()}
    first_manifest = pq.read_table(output / "manifest.parquet").to_pylist()

    ingest.run(spark, settings, str(data), str(output), force=True)  # decoded again, not kept
    assert {g: r.image.tobytes() for g, r in _dataset(output).items()} == first
    assert pq.read_table(output / "manifest.parquet").to_pylist() == first_manifest

    # A crash in the middle of a run leaves the previous output whole and no temporary debris.
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(petastorm_io, "write_metadata", boom)
    with pytest.raises(RuntimeError, match="killed"):
        ingest.run(spark, settings, str(data), str(output), force=True)
    assert pq.read_table(output / "manifest.parquet").to_pylist() == first_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


@pytest.mark.parametrize("images_as", ["zip", "dir"])
def test_an_output_made_from_the_same_rows_images_and_settings_is_kept(spark, settings, tmp_path, images_as, caplog):
    """A re-run on an unchanged catalogue decodes nothing; a changed row, image file or setting,
    or force, decodes again."""
    data, output = tmp_path / "data", tmp_path / "out"
    make_data(data, images_as)
    if images_as == "dir":
        settings = settings.set(["ingest", "images"], "images", "test")
    first = ingest.run(spark, settings, str(data), str(output))
    assert not first.get("reused") and first["run_key"]

    def rerun(run_settings=settings, **kwargs):
        """(summary, whether the output was written again): a run that writes replaces the whole
        directory, so a file left in it beforehand is gone."""
        (output / "left-here").write_text("")
        summary = ingest.run(spark, run_settings, str(data), str(output), **kwargs)
        return summary, not (output / "left-here").exists()

    summary, did_decode = rerun()
    assert summary["reused"] and not did_decode
    assert {k: v for k, v in summary.items() if k != "reused"} == json.loads((output / "summary.json").read_text())
    assert summary["status_counts"] == first["status_counts"]
    summary, did_decode = rerun(force=True)
    assert not summary.get("reused") and did_decode and summary["run_key"] == first["run_key"]
    with caplog.at_level("INFO"):
        summary, did_decode = rerun(settings.set(["images", "max_side"], 64, "test"))
    assert not summary.get("reused") and did_decode and summary["run_key"] != first["run_key"]
    assert f"ingest: {output} was made from other rows, image files, settings or code (its run key differs); decoding again" in caplog.text
    summary, did_decode = rerun()  # back to the first settings: decoded again, then kept
    assert not summary.get("reused") and summary["run_key"] == first["run_key"]
    assert rerun()[0]["reused"]

    # Junk beside the images changes nothing; an image rewritten with other bytes of the same
    # length (in a directory, with its modification time set back, as `cp -p` or `exiftool -P`
    # leave it) is decoded again (the zip is written anew without its corrupt member, which
    # cannot be read back: test_catalogue checks a same-names-and-sizes zip on its own).
    red = data / "images" / "i_red.jpg"
    if images_as == "dir":
        (data / "images" / ".DS_Store").write_bytes(b"finder")
        assert rerun()[0]["reused"]
        before = red.stat()
        other = bytearray(red.read_bytes())
        other[-3] ^= 0xFF  # a byte of the entropy-coded data, before the end marker
        red.write_bytes(bytes(other))
        os.utime(red, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert red.stat().st_size == before.st_size and red.stat().st_mtime_ns == before.st_mtime_ns
    else:
        with zipfile.ZipFile(data / "images.zip") as archive:
            members = {info.filename: archive.read(info.filename) for info in archive.infolist() if info.filename != "images/i_deflate.jpg"}
        other = bytearray(members["images/i_red.jpg"])
        other[-3] ^= 0xFF
        members["images/i_red.jpg"] = bytes(other)
        with zipfile.ZipFile(data / "images.zip", "w") as archive:  # stored members: same sizes, other CRC
            for name, content in members.items():
                archive.writestr(name, content)
    summary, did_decode = rerun()
    assert not summary.get("reused") and did_decode
    assert rerun()[0]["reused"]
    # Other decoding code (ingest.decoder_version follows the source): decoded again.
    real_decoder = ingest.decoder_version
    try:
        ingest.decoder_version = lambda: "other code"
        summary, did_decode = rerun()
        assert not summary.get("reused") and did_decode
    finally:
        ingest.decoder_version = real_decoder
    assert not rerun()[0].get("reused")
    # What a killed run left beside the output goes, as a run that writes would clean it.
    (tmp_path / ".out.tmp-deadbeef").mkdir()
    left_by_a_crash(tmp_path / ".out.tmp-deadbeef")
    assert rerun()[0]["reused"] and not (tmp_path / ".out.tmp-deadbeef").exists()
    # A row changes: decoded again.
    with (data / "test.csv").open("a", encoding="utf-8") as handle:
        handle.write("q3,Ваза,\n")
    summary, did_decode = rerun()
    assert not summary.get("reused") and summary["input_rows"] == first["input_rows"] + 1


def test_an_output_directory_holding_something_else_is_refused_untouched(spark, settings, tmp_path):
    """ingest replaces its output whole: `--output var` must not wipe a work directory."""
    data = tmp_path / "data"
    make_data(data)
    work = tmp_path / "var"
    (work / "models").mkdir(parents=True)
    (work / "submission.csv").write_text("keep me")
    with pytest.raises(storage.StorageError, match="not empty and not an output of ingest .*submission.csv"):
        ingest.run(spark, settings, str(data), str(work))
    assert sorted(p.name for p in work.iterdir()) == ["models", "submission.csv"]


def test_missing_column_is_a_clear_error(spark, settings, tmp_path):
    data = tmp_path / "data"
    make_data(data)
    (data / "train.csv").write_text("guid,description\nx,y\n", encoding="utf-8")
    with pytest.raises(CsvError, match=r"train\.csv: missing column\(s\) typology"):
        ingest.run(spark, settings, str(data), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unlabelled_test_csv_may_lack_the_typology_column(settings, tmp_path):
    data = tmp_path / "data"
    make_data(data)
    (data / "test.csv").write_text("guid,description\nq1,Картина\nq2,\n", encoding="utf-8")
    rows = [r for r in ingest.read_input_rows(str(data), settings) if r.split == "test"]
    assert [(r.guid, r.description, r.typology, r.rejected_reason) for r in rows] == [("q1", "Картина", None, None), ("q2", None, None, None)]
    # An unlabelled file still needs its description column.
    (data / "test.csv").write_text("guid\nq1\n", encoding="utf-8")
    with pytest.raises(CsvError, match=r"test\.csv: missing column\(s\) description"):
        ingest.read_input_rows(str(data), settings)


def test_ingest_shared_data(spark, settings, shared_data, tmp_path):
    output = tmp_path / "shared"
    summary = ingest.run(spark, settings, str(shared_data), str(output))
    assert summary["dataset_rows"] == 153
    assert summary["input_rows"] == summary["manifest_rows"] == 3788 + 1223 + 153
    assert summary["status_counts"] == {"ok": 153, "no_image": 3788 + 1223}
    dataset = _dataset(output)
    assert len(dataset) == 153
    for row in dataset.values():
        assert row.image.ndim == 3 and row.image.shape[2] == 3 and max(row.image.shape[:2]) <= 512
        assert row.typology in CLASSES


def test_a_refused_sidecar_does_not_quarantine_the_guid_it_names(tmp_path):
    """An unsafe name is refused unread; a refused sidecar (../u1.xmp) is no image of u1 either,
    so u1 without an image is no_image, while a refused image (../u2.jpg) quarantines u2."""
    import zipfile

    from museum_typology.catalogue import InputRow
    from museum_typology.image_source import build_index, known_guids

    rows = [InputRow(g, "train", "train.csv", n, n + 1, "описание", None) for n, g in enumerate(["u1", "u2"], start=1)]
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for name in ("../u1.xmp", "../u2.jpg"):
            archive.writestr(name, b"not read")
    index = build_index(str(tmp_path / "images.zip"), None, known_guids(rows))
    assert set(index.unsafe) == {"../u1.xmp", "../u2.jpg"} and set(index.unsafe_by_guid) == {"u2"}
    tasks, finished = ingest.plan(rows, index)
    status = {r["guid"]: r["status"] for r in finished}
    assert not tasks and status == {"u1": "no_image", "u2": "quarantined"}


def test_a_guid_that_looks_like_a_name_and_extension_finds_its_image(settings, tmp_path):
    """Guids MS.A and MS.B (a dot and a Latin letter, like an extension): images/MS.A was indexed
    as guid MS, so MS.A had no image and the row MS took it. The rows' guids now decide."""
    from museum_typology.catalogue import InputRow
    from museum_typology.image_source import build_index

    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/MS.A", b"jpeg")
        zf.writestr("images/MS.B.png", b"png")
        zf.writestr("../MS.C", b"x")
    rows = [InputRow(g, "train", "train.csv", n, n + 1, "описание", None) for n, g in enumerate(["MS.A", "MS.B", "MS", "MS.C"], start=1)]
    index = ingest.image_index(str(tmp_path), settings.set(["ingest", "images"], "images.zip", "test"), None, rows)
    assert index.members == build_index(str(archive), None, {"MS.A", "MS.B", "MS", "MS.C"}).members == {"MS.A": ["images/MS.A"], "MS.B": ["images/MS.B.png"]}
    tasks, finished = ingest.plan(rows, index)
    assert {t["guid"]: t["image_member"] for t in tasks} == {"MS.A": "images/MS.A", "MS.B": "images/MS.B.png"}
    assert {r["guid"]: r["status"] for r in finished} == {"MS": "no_image", "MS.C": "quarantined"}


def test_an_executor_with_other_decoding_code_refuses_to_decode(tmp_path):
    """The summary records the driver's pixel_version, which train-image's run key trusts: an
    executor with another Pillow or other code must not write pixels under it."""
    decode = ingest.DecodeSettings(64, 10**6, 10**6, "jpeg", 90)
    with pytest.raises(ingest.IngestError, match="differs from the driver's"):
        ingest._process_partition(0, iter([]), str(tmp_path / "none.zip"), "zip", str(tmp_path / "dataset"), decode, 1 << 20, None, "another version")
    assert not (tmp_path / "dataset").exists()


def test_executor_errors_unwraps_only_the_kinds_named():
    from museum_typology.session import executor_errors

    wrapped = RuntimeError("Job aborted\nTraceback (most recent call last):\n  ...\nmuseum_typology.ingest.IngestError: partition 2: differs\n\tat org.apache.spark...")
    with pytest.raises(ingest.IngestError, match="^partition 2: differs$"):
        with executor_errors(ingest.IngestError):
            raise wrapped
    with pytest.raises(RuntimeError, match="Job aborted"):  # another error stays itself
        with executor_errors(ingest.IngestError):
            raise RuntimeError("Job aborted\nTraceback (most recent call last):\n  File x\nValueError: boom")
    # a bug raised while handling an IngestError is the bug, with its traceback
    chained = ("Traceback (most recent call last):\n  File a\nmuseum_typology.ingest.IngestError: differs\n\n"
               "During handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\n  File b\n    x[1]\nKeyError: 1\n\tat org.apache.spark...")
    with pytest.raises(RuntimeError, match="KeyError"):
        with executor_errors(ingest.IngestError):
            raise RuntimeError(chained)
    # a message over several lines is kept whole, up to the Java frames
    two_lines = "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n  File a\nmuseum_typology.ingest.IngestError: one\ntwo\n\tat org.apache.spark.x"
    with pytest.raises(ingest.IngestError, match="^one\ntwo$"):
        with executor_errors(ingest.IngestError):
            raise RuntimeError(two_lines)


def test_the_executors_refusal_reaches_the_driver_as_one_clear_error(spark, settings, tmp_path, monkeypatch):
    """Through Spark the executor's IngestError came back wrapped in a Py4JJavaError, which the
    CLI printed as a Java stack trace with exit code 1 rather than its one 'failed:' line."""
    data = tmp_path / "data"
    make_data(data)
    monkeypatch.setattr(ingest, "pixel_version", lambda: "another version")  # the driver's alone
    with pytest.raises(ingest.IngestError, match=r"^ingest partition \d+: this executor's decoding code or Pillow .* differs from the driver's") as caught:
        ingest.run(spark, settings, str(data), str(tmp_path / "out"))
    assert type(caught.value) is ingest.IngestError and "Py4J" not in str(caught.value)
