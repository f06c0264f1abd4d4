"""bundles.resolve_bundle's local cache of S3 bundles (a moto server): a download cut short is
never used, and a copy left by older code without the completion marker is downloaded again."""
from __future__ import annotations

import hashlib
import os

import pytest

from museum_typology import bundles, storage
from museum_typology.storage import S3Options

FILES = {"calibration.json": b"{}", "lstm_fold0.npz": b"weights" * 100}


def test_an_interrupted_download_is_never_used(fresh_bucket, moto_endpoint, monkeypatch, tmp_path):
    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    for name, body in FILES.items():
        client.put_object(Bucket=bucket, Key=f"models/text/v1/{name}", Body=body)
    client.put_object(Bucket=bucket, Key=f"models/text/v1/{storage.SUCCESS_MARKER}", Body=b"train-text")
    client.put_object(Bucket=bucket, Key="models/text/latest", Body=b"v1")
    real = storage.download_directory
    calls = []

    def cut_short(url, local, s3=None):  # the marker file lands, then the connection drops
        calls.append(url)
        os.makedirs(local, exist_ok=True)
        open(os.path.join(local, "calibration.json"), "wb").write(b"{}")
        raise OSError("connection reset")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "download_directory", cut_short)
        with pytest.raises(OSError, match="connection reset"):
            bundles.resolve_bundle(f"s3://{bucket}/models/text", "calibration.json", "text", s3, str(tmp_path))
    cache = tmp_path / "museum-typology-bundles" / "text" / hashlib.sha256(f"s3://{bucket}/models/text/v1".encode()).hexdigest()[:12]
    assert os.listdir(cache) == []  # the half download was removed, nothing at the bundle's place

    monkeypatch.setattr(storage, "download_directory", lambda *a: calls.append(a[0]) or real(*a))
    local = bundles.resolve_bundle(f"s3://{bucket}/models/text", "calibration.json", "text", s3, str(tmp_path))
    assert local == cache / "v1" and {p.name: p.read_bytes() for p in local.iterdir() if p.name in FILES} == FILES
    assert bundles.resolve_bundle(f"s3://{bucket}/models/text/v1", "calibration.json", "text", s3, str(tmp_path)) == local
    assert len(calls) == 2  # the complete copy is reused

    # A copy from before the completion marker, possibly partial: downloaded again.
    (local / bundles.DOWNLOADED).unlink()
    (local / "lstm_fold0.npz").unlink()
    again = bundles.resolve_bundle(f"s3://{bucket}/models/text", "calibration.json", "text", s3, str(tmp_path))
    assert len(calls) == 3 and (again / "lstm_fold0.npz").read_bytes() == FILES["lstm_fold0.npz"]
    assert sorted(os.listdir(cache)) == ["v1"]


def test_bundles_of_one_name_in_two_places_are_cached_apart(fresh_bucket, moto_endpoint, tmp_path):
    """The cache was keyed by the version name alone: another prefix's "v1" got the first's files."""
    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    for prefix, body in (("a", b"A"), ("b", b"B")):
        client.put_object(Bucket=bucket, Key=f"{prefix}/text/v1/calibration.json", Body=body)
    first = bundles.resolve_bundle(f"s3://{bucket}/a/text/v1", "calibration.json", "text", s3, str(tmp_path))
    second = bundles.resolve_bundle(f"s3://{bucket}/b/text/v1", "calibration.json", "text", s3, str(tmp_path))
    assert first != second and first.name == second.name == "v1"
    assert (first / "calibration.json").read_bytes() == b"A" and (second / "calibration.json").read_bytes() == b"B"


# ---------------------------------------------------------------- reuse of a bundle trained on the same run


def _bundle(model_dir, version: str, run_key: str, oof_version: str | None = None, oof=None) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (model_dir / version).mkdir(parents=True)
    (model_dir / version / "metrics.json").write_text(json.dumps({"version": version, "run_key": run_key}))
    (model_dir / version / storage.SUCCESS_MARKER).write_text("")
    (model_dir / "latest").write_text(version)
    if oof is not None:
        pq.write_table(pa.table({"guid": ["a", "b"], "model_version": [oof_version or version] * 2}), oof)


def test_the_newest_bundle_of_the_same_run_is_reused(tmp_path, caplog):
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "20261128T000000Z-aaaa", "key-1", oof=oof)
    url, metrics = bundles.reusable_bundle(str(models), "key-1", str(oof))
    assert url == storage.join(str(models), "20261128T000000Z-aaaa") and metrics["run_key"] == "key-1"
    assert bundles.reusable_bundle(str(models), "key-1") is not None  # no out-of-fold file to check (--final)
    with caplog.at_level("INFO"):
        assert bundles.reusable_bundle(str(models), "key-2", str(oof)) is None  # other data or settings
    # a run that trains again for hours says why (after an upgrade every bundle is trained once more)
    assert "20261128T000000Z-aaaa was made from other data, settings or code than this run (its run key differs); not reused" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert bundles.reusable_bundle(str(models), "final-key") is None  # --final after the folds: no news
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"guid": ["a"], "model_version": ["20261128T010000Z-gone"]}), oof)  # models/ wiped, oof/ kept
        assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None
    assert "not reused" in caplog.text and caplog.text.count("not reused") == 1 and "20261128T010000Z-gone is not there" in caplog.text


def test_a_bundle_is_not_reused_without_its_own_out_of_fold_file(tmp_path, caplog, monkeypatch):
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "v2", "key-1", oof_version="v1", oof=oof)  # the file a later or other run wrote
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None
    assert bundles.reusable_bundle(str(models), "key-1", str(tmp_path / "missing.parquet")) is None
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with caplog.at_level("INFO"):
        assert bundles.reusable_bundle(str(models), "key-1", str(tmp_path / "bad.parquet")) is None
    assert "bad.parquet: unreadable as an out-of-fold file" in caplog.text  # training again for hours says why

    def store_down(url, s3=None):
        raise storage.StorageError(f"{url}: cannot read (AWS Error NETWORK_CONNECTION during GetObject operation)")

    monkeypatch.setattr(storage, "read_bytes", store_down)
    with pytest.raises(storage.StorageError, match="AWS Error"):  # the store failing is not "train again"
        bundles.reusable_bundle(str(models), "key-1", str(oof))


def test_the_fold_bundle_its_out_of_fold_file_names_is_reused_when_a_newer_final_one_is_latest(tmp_path):
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "20261128T000000Z-aaaa", "folds-key", oof=oof)
    _bundle(models, "20261128T010000Z-bbbb-final", "final-key")  # train-image --final, now latest
    url, metrics = bundles.reusable_bundle(str(models), "folds-key", str(oof))
    assert url == storage.join(str(models), "20261128T000000Z-aaaa") and metrics["run_key"] == "folds-key"
    assert bundles.latest_version(str(models)) == "20261128T010000Z-bbbb-final"  # left as it was
    assert bundles.reusable_bundle(str(models), "final-key") is not None  # --final: the newest
    assert bundles.reusable_bundle(str(models), "final-key", str(oof)) is None  # not the folds' bundle


def test_a_run_killed_before_publishing_is_finished_by_its_reuse(tmp_path):
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "20261128T000000Z-aaaa", "old-key")
    _bundle(models, "20261128T010000Z-bbbb", "key-1", oof=oof)  # committed, out-of-fold file written...
    (models / "latest").write_text("20261128T000000Z-aaaa")  # ...and killed before publishing
    url, _ = bundles.reusable_bundle(str(models), "key-1", str(oof))
    assert url == storage.join(str(models), "20261128T010000Z-bbbb")
    assert bundles.latest_version(str(models)) == "20261128T010000Z-bbbb"


def test_a_run_killed_between_its_bundle_and_its_out_of_fold_file_is_finished_from_the_bundle(tmp_path, caplog):
    """The kill study's one gap: a kill in the moment between a bundle's commit and its
    out-of-fold file left the previous run's file (or none), so the re-run trained again (hours
    for images) and the first bundle stayed behind, unnamed. Each fold bundle now carries its own
    copy, which the re-run restores."""
    import numpy as np

    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "20261128T000000Z-aaaa", "old-key", oof=oof)  # the previous run, complete
    _bundle(models, "20261128T010000Z-bbbb", "key-1")  # this run's bundle, committed...
    own = bundles.oof_parquet(["a", "b"], [0, 1], [0, 1], np.full((2, 15), 1 / 15), "20261128T010000Z-bbbb", "text")
    (models / "20261128T010000Z-bbbb" / bundles.BUNDLE_OOF).write_bytes(own)
    (models / "latest").write_text("20261128T000000Z-aaaa")  # ...and killed before the out-of-fold file
    assert bundles.reusable_bundle(str(models), "key-2", str(oof)) is None  # another run's key: trains
    assert bundles.oof_versions(str(oof)) == {"20261128T000000Z-aaaa"}  # and leaves the file alone
    with caplog.at_level("INFO"):
        url, metrics = bundles.reusable_bundle(str(models), "key-1", str(oof))
    assert url == storage.join(str(models), "20261128T010000Z-bbbb") and metrics["run_key"] == "key-1"
    assert oof.read_bytes() == own and bundles.latest_version(str(models)) == "20261128T010000Z-bbbb"
    assert "did not name it (a run stopped before writing it, or a new path): copied from the bundle's oof.parquet" in caplog.text
    oof.unlink()  # or killed before any out-of-fold file was there
    (models / "latest").write_text("20261128T000000Z-aaaa")
    assert bundles.reusable_bundle(str(models), "key-1", str(oof))[0] == url and oof.read_bytes() == own
    # A damaged copy, or one naming another bundle (a copied folder), is not restored: training
    # again mends it (copied, every later run would restore the same damage).
    oof.unlink()
    for damage in (b"not parquet", bundles.oof_parquet(["a"], [0], [0], np.full((1, 15), 1 / 15), "20261128T000000Z-aaaa", "text")):
        (models / "20261128T010000Z-bbbb" / bundles.BUNDLE_OOF).write_bytes(damage)
        with caplog.at_level("INFO"):
            assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None and not oof.exists()
    assert "oof.parquet: unreadable" in caplog.text and "oof.parquet names ['20261128T000000Z-aaaa'], not its bundle" in caplog.text
    (models / "20261128T010000Z-bbbb" / bundles.BUNDLE_OOF).write_bytes(own)
    # Newer folders that are not fold bundles (a --final bundle, train-image's checkpoints) are
    # passed over; a later fold bundle of another run means training again.
    _bundle(models, "20261128T015000Z-dddd-final", "final-key")
    (models / "_checkpoints").mkdir()
    assert bundles.reusable_bundle(str(models), "key-1", str(oof))[0] == url and oof.read_bytes() == own
    assert bundles.latest_version(str(models)) == "20261128T015000Z-dddd-final"  # a newer --final stays latest
    _bundle(models, "20261128T020000Z-cccc", "key-3")
    (models / "20261128T020000Z-cccc" / bundles.BUNDLE_OOF).write_bytes(own)
    oof.unlink()
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None and not oof.exists()
    assert bundles.reusable_bundle(str(tmp_path / "no-models"), "key-1", str(oof)) is None


def test_the_out_of_fold_file_is_restored_from_a_bundle_on_s3(fresh_bucket, moto_endpoint):
    """The same restore on S3, where the model folder's bundles are prefixes, not folders."""
    import json

    import numpy as np

    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    models, oof = f"s3://{bucket}/work/models/text", f"s3://{bucket}/work/oof/text.parquet"
    assert bundles.reusable_bundle(models, "key-1", oof, s3) is None  # nothing there yet
    own = bundles.oof_parquet(["a", "b"], [0, 1], [0, 1], np.full((2, 15), 1 / 15), "20261128T010000Z-bbbb", "text")
    for version, key in (("20261128T000000Z-aaaa", "old-key"), ("20261128T010000Z-bbbb", "key-1")):
        client.put_object(Bucket=bucket, Key=f"work/models/text/{version}/metrics.json", Body=json.dumps({"run_key": key}).encode())
        client.put_object(Bucket=bucket, Key=f"work/models/text/{version}/report/report.md", Body=b"# report")
        client.put_object(Bucket=bucket, Key=f"work/models/text/{version}/{storage.SUCCESS_MARKER}", Body=b"train-text")
    client.put_object(Bucket=bucket, Key=f"work/models/text/20261128T010000Z-bbbb/{bundles.BUNDLE_OOF}", Body=own)
    client.put_object(Bucket=bucket, Key="work/models/text/latest", Body=b"20261128T000000Z-aaaa")
    url, _ = bundles.reusable_bundle(models, "key-1", oof, s3)
    assert url == f"{models}/20261128T010000Z-bbbb" and storage.read_bytes(oof, s3) == own
    assert bundles.latest_version(models, s3) == "20261128T010000Z-bbbb"


def test_a_reused_bundle_becomes_latest_over_a_newer_trial_but_not_over_a_newer_final_one(tmp_path):
    """A pipeline re-run that reuses its folds scores with them, not with a bundle trained since
    into the same directory with other settings; a newer --final bundle stays latest."""
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "20261128T000000Z-aaaa", "key-1", oof=oof)
    _bundle(models, "20261128T010000Z-bbbb", "trial-key")  # another run's, out-of-fold file elsewhere
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is not None
    assert bundles.latest_version(str(models)) == "20261128T000000Z-aaaa"
    _bundle(models, "20261128T020000Z-cccc-final", "final-key")
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is not None
    assert bundles.latest_version(str(models)) == "20261128T020000Z-cccc-final"
    (models / "latest").write_text("20261127T000000Z-dddd-final")  # a final bundle older than the folds
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is not None
    assert bundles.latest_version(str(models)) == "20261128T000000Z-aaaa"


def test_an_out_of_fold_file_with_a_non_text_version_reuses_nothing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "v1", "key-1")
    pq.write_table(pa.table({"guid": ["a"], "model_version": [7]}), oof)
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None


def test_an_out_of_fold_file_naming_a_path_or_several_bundles_reuses_nothing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "v1", "key-1", oof=oof)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "metrics.json").write_text('{"run_key": "key-1"}')
    for named in (["../outside"] * 2, ["v1", "v2"]):
        pq.write_table(pa.table({"guid": ["a", "b"], "model_version": named}), oof)
        assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None


def test_no_bundle_or_a_damaged_one_is_never_reused(tmp_path):
    models = tmp_path / "models"
    assert bundles.reusable_bundle(str(models), "key-1") is None  # nothing trained yet
    _bundle(models, "v1", "key-1")
    (models / "v1" / "metrics.json").write_text("{truncated")
    assert bundles.reusable_bundle(str(models), "key-1") is None
    (models / "v1" / "metrics.json").write_text('{"version": "v1"}')  # a bundle from before run keys
    assert bundles.reusable_bundle(str(models), "key-1") is None
    (models / "latest").write_text("gone")  # latest names a bundle that is not there
    assert bundles.reusable_bundle(str(models), "key-1") is None


@pytest.mark.parametrize("content", [b"\xff\xfe", b"\x00\x00", b"", b"  \n", b"../../elsewhere", b".hidden"])
def test_a_damaged_latest_is_one_error_or_trains_again(tmp_path, content):
    """Read as it was: not UTF-8 a bare UnicodeDecodeError, NULs an ArrowInvalid, empty named
    the models folder itself and "../.." a folder outside it, each handed to the scorer."""
    models = tmp_path / "models"
    _bundle(models, "v1", "key-1")
    (models / "latest").write_bytes(content)
    with pytest.raises(storage.StorageError, match=r"models/latest: damaged \(it should hold the name of a bundle folder beside it\)"):
        bundles.latest_version(str(models))
    with pytest.raises(storage.StorageError, match=r"models/latest: damaged"):
        bundles.resolve_bundle(str(models), "calibration.json", "text")
    assert bundles.reusable_bundle(str(models), "key-1") is None  # trains again, and publishing mends it


def test_latest_naming_a_missing_or_unfinished_bundle_is_one_error(tmp_path):
    models = tmp_path / "models"
    _bundle(models, "v1", "key-1")
    (models / "latest").write_text("v2")
    with pytest.raises(storage.StorageError, match=r"models/latest names v2, which is not there; train again"):
        bundles.resolve_bundle(str(models), "calibration.json", "text")
    (models / "latest").write_text("v1\n")
    assert bundles.resolve_bundle(str(models), "calibration.json", "text") == models / "v1"
    (models / "v1" / storage.SUCCESS_MARKER).unlink()
    with pytest.raises(storage.StorageError, match=r"models/latest names v1, whose commit did not finish \(no _SUCCESS\)"):
        bundles.resolve_bundle(str(models), "calibration.json", "text")


def test_a_bundle_whose_commit_did_not_finish_is_not_reused(tmp_path):
    """On S3 a crash while a commit copies the bundle leaves its objects (metrics.json among
    them) without _SUCCESS: training again, not scoring with half a bundle."""
    models, oof = tmp_path / "models", tmp_path / "oof.parquet"
    _bundle(models, "v1", "key-1", oof=oof)
    (models / "v1" / storage.SUCCESS_MARKER).unlink()
    assert bundles.reusable_bundle(str(models), "key-1", str(oof)) is None
    assert bundles.reusable_bundle(str(models), "key-1") is None


def test_reading_an_out_of_fold_files_versions_lets_the_process_exit_cleanly(tmp_path):
    """pyarrow 10 reading Parquet from a Python file object (io.BytesIO) aborted the process at
    exit ("terminate called without an active exception", exit 134) in most runs: train-text
    printed "reused" and then failed for a scheduler."""
    import subprocess
    import sys

    import numpy as np

    oof = tmp_path / "text.parquet"
    bundles.write_oof(str(oof), ["a", "b"], [0, 1], [0, 1], np.full((2, 15), 1 / 15), "V1", "text")
    code = f"from museum_typology import bundles; assert bundles.oof_versions({str(oof)!r}) == {{'V1'}}"
    codes = [subprocess.run([sys.executable, "-c", code], capture_output=True).returncode for _ in range(3)]
    assert codes == [0, 0, 0]
