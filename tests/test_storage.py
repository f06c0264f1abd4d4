"""storage.atomic_directory: the commit locally (rename, rolled back or restored after a crash)
and on S3 (a moto server: the new objects copied over the old ones, the old ones the new output
lacks deleted, the marker last); URIs for petastorm; S3 endpoints without a scheme."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from museum_typology import storage
from museum_typology.storage import S3Options
from conftest import left_by_a_crash


def write(directory: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


def contents(directory) -> dict[str, str]:
    found = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = open(path, encoding="utf-8").read()
    return found


class Failing:
    """A pyarrow filesystem whose ``method`` fails on its ``nth`` call (pyarrow's own classes
    cannot be patched); everything else goes to the real one."""

    def __init__(self, fs, method: str, nth: int):
        self.fs, self.method, self.nth, self.calls = fs, method, nth, []

    def __getattr__(self, name):
        real = getattr(self.fs, name)
        if name != self.method:
            return real

        def call(*args):
            self.calls.append(args)
            if len(self.calls) == self.nth:
                raise OSError(f"{name} failed")
            return real(*args)

        return call


def failing(monkeypatch, method: str, nth: int) -> Failing:
    real_filesystem = storage.filesystem
    wrapper: list[Failing] = []

    def patched(url, s3=None):
        fs, path = real_filesystem(url, s3)
        wrapper.append(Failing(fs, method, nth))
        return wrapper[-1], path

    monkeypatch.setattr(storage, "filesystem", patched)
    return wrapper


def test_local_commit_replaces_the_output_and_a_failed_second_rename_puts_the_old_one_back(tmp_path, monkeypatch):
    final = str(tmp_path / "out")
    with storage.atomic_directory(final) as tmp:
        write(tmp, {"a.txt": "one", "sub/b.txt": "one"})
    assert contents(final) == {"a.txt": "one", "sub/b.txt": "one", "_SUCCESS": ""}

    with monkeypatch.context() as patch, pytest.raises(OSError, match="move failed"):
        wrapper = failing(patch, "move", 2)
        with storage.atomic_directory(final) as tmp:
            write(tmp, {"a.txt": "two"})
    assert contents(final) == {"a.txt": "one", "sub/b.txt": "one", "_SUCCESS": ""}  # rolled back
    assert os.path.basename(wrapper[0].calls[0][1]).startswith(".out.old-")  # set aside hidden, not as out.old-*


def test_a_file_write_killed_before_its_rename_leaves_nothing_readers_take_for_data(tmp_path, monkeypatch):
    """write_bytes' temporary was NAME.tmp-…: a kill before the rename left it beside the data
    files, and a folder of score outputs read by pyarrow (or Spark, or evaluate) counted that
    output's rows twice. It is hidden now, and a day-old one goes at the name's next write."""
    import time

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from museum_typology.catalogue import parquet_data_files

    def table_bytes(n):
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table({"guid": [f"g{i}" for i in range(n)]}), buffer)
        return buffer.getvalue().to_pybytes()

    out = tmp_path / "out"
    storage.write_bytes(str(out / "a.parquet"), table_bytes(3))

    class KilledAtRename:
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            if name == "move":
                raise KeyboardInterrupt  # the kill lands between the write and the rename
            return getattr(self.fs, name)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        real_filesystem = storage.filesystem
        patch.setattr(storage, "filesystem", lambda url, s3=None: (KilledAtRename(real_filesystem(url, s3)[0]), real_filesystem(url, s3)[1]))
        storage.write_bytes(str(out / "b.parquet"), table_bytes(2))
    leftover = [p for p in out.iterdir() if p.name != "a.parquet"]
    assert len(leftover) == 1 and leftover[0].name.startswith(".b.parquet.tmp-")
    assert [os.path.basename(f) for f in parquet_data_files(pafs.LocalFileSystem(), str(out), "out")] == ["a.parquet"]
    assert pq.read_table(str(out)).num_rows == 3

    fresh = out / ".b.parquet.tmp-0000beef"  # another writer's, still running
    fresh.write_bytes(b"being written")
    day_old = time.time() - storage.ABANDONED_STAGING_AGE_S - 60
    os.utime(leftover[0], (day_old, day_old))
    storage.write_bytes(str(out / "b.parquet"), table_bytes(2))
    assert sorted(p.name for p in out.iterdir()) == [".b.parquet.tmp-0000beef", "a.parquet", "b.parquet"]


def test_another_runs_temporary_of_the_same_output_is_left_alone_while_it_is_written(tmp_path):
    """Two runs of a job onto one output (an overlapping nightly run): the second deleted the
    first's temporary as a crash's leftover, and the first failed halfway ("dataset holds 40
    rows, manifest marks 153 ok"). A temporary written to within the last hour is left; an
    older one is a crashed run's and goes."""
    final = tmp_path / "out"
    write(str(tmp_path / ".out.tmp-0000beef"), {"part-0.parquet": "being written"})  # the other run's
    write(str(tmp_path / ".out.tmp-deadbeef"), {"part-0.parquet": "half"})
    left_by_a_crash(tmp_path / ".out.tmp-deadbeef")
    with storage.atomic_directory(str(final)) as tmp:
        write(tmp, {"a.txt": "mine"})
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-0000beef", "out"]
    storage.clean_up_after_crashes(str(final))  # a job that reuses its output cleans up the same way
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-0000beef", "out"]


def test_a_kill_between_the_renames_is_undone_by_the_next_run(tmp_path):
    """kill -9 after the old output was set aside and before the new one took its place: no
    output, a hidden .NAME.old-* holding the previous one. The next run puts it back first, so
    that run failing in turn still leaves the previous output."""
    final = tmp_path / "out"
    write(str(tmp_path / ".out.old-1234abcd"), {"a.txt": "previous", "_SUCCESS": ""})
    write(str(tmp_path / ".out.tmp-deadbeef"), {"a.txt": "half"})
    left_by_a_crash(tmp_path / ".out.tmp-deadbeef")
    with pytest.raises(RuntimeError):
        with storage.atomic_directory(str(final)):
            raise RuntimeError("this run fails too")
    assert contents(final) == {"a.txt": "previous", "_SUCCESS": ""}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the stale temporary is gone too

    write(str(tmp_path / ".out.old-00000000"), {"a.txt": "older"})  # with an output in place: just deleted
    write(str(tmp_path / "out.old-1111aaaa"), {"a.txt": "oldest"})  # as older code named it
    with storage.atomic_directory(str(final)) as tmp:
        write(tmp, {"a.txt": "new"})
    assert contents(final) == {"a.txt": "new", "_SUCCESS": ""} and sorted(os.listdir(tmp_path)) == ["out"]


def test_s3_commit_copies_over_the_old_output_and_deletes_only_what_the_new_one_lacks(fresh_bucket, moto_endpoint, monkeypatch):
    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    final = f"s3://{bucket}/work/out"

    def keys() -> dict[str, bytes]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="work/")
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}

    def put(tmp: str, files: dict[str, bytes]) -> None:
        fs, path = storage.filesystem(tmp, s3)
        for name, body in files.items():
            with fs.open_output_stream(f"{path}/{name}") as out:
                out.write(body)

    with storage.atomic_directory(final, s3) as tmp:
        put(tmp, {"a.bin": b"one", "gone.bin": b"one"})
    assert keys() == {"work/out/a.bin": b"one", "work/out/gone.bin": b"one", "work/out/_SUCCESS": b""}

    # A crash during the copy: the old marker is gone first, so readers refuse the mixed prefix.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="copy_file failed"):
        failing(patch, "copy_file", 1)  # the commit's first copy fails
        with storage.atomic_directory(final, s3) as tmp:
            put(tmp, {"a.bin": b"two", "new.bin": b"two"})
    # The old marker went first, so readers refuse the prefix; nothing old was deleted before the copy.
    assert not storage.is_committed(final, s3) and keys()["work/out/a.bin"] == b"one" and keys()["work/out/gone.bin"] == b"one"

    monkeypatch.setattr(storage, "STALE_TEMPORARY_QUIET_S", 0)  # the next run, when the crashed one's temporary is quiet
    with storage.atomic_directory(final, s3) as tmp:
        put(tmp, {"a.bin": b"two", "new.bin": b"two"})
    assert keys() == {"work/out/a.bin": b"two", "work/out/new.bin": b"two", "work/out/_SUCCESS": b""}  # temporaries gone


def test_s3_keys_holding_hash_or_question_mark_are_their_own_objects(fresh_bucket, moto_endpoint):
    """urlparse cut "s3://b/run#1/x.json" at "#": the job wrote, and later read, the object "run"."""
    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    for key in ("run#1/summary.json", "q?x/summary.json"):
        storage.write_json(f"s3://{bucket}/{key}", {"key": key}, s3)
        assert storage.read_json_object(f"s3://{bucket}/{key}", s3) == {"key": key}
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == ["q?x/summary.json", "run#1/summary.json"]
    assert storage.list_files(f"s3://{bucket}/run#1", s3) == ["summary.json"]
    with pytest.raises(storage.StorageError, match="may not contain '#'"):  # petastorm and Spark read URLs
        storage.to_uri(f"s3://{bucket}/run#1/dataset")
    assert storage.to_uri(f"s3a://{bucket}/runs/dataset/") == f"s3://{bucket}/runs/dataset"


def test_an_s3_output_of_more_than_1000_files_commits_and_commits_again(fresh_bucket, moto_endpoint):
    """pyarrow 10 deletes a prefix in DeleteObjects requests of 1,000 keys and sends the second
    without a body: the commit wrote _SUCCESS, then failed deleting its temporary copy (and a
    re-run failed deleting the old output's extra files)."""
    from concurrent.futures import ThreadPoolExecutor

    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    final = f"s3://{bucket}/work/dataset"
    for run, count in ((1, 1001), (2, 3)):
        with storage.atomic_directory(final, s3, job="crawl") as tmp:
            fs, path = storage.filesystem(tmp, s3)

            def put(i: int) -> None:
                with fs.open_output_stream(f"{path}/part-{i:05d}.parquet") as out:
                    out.write(b"%d" % run)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(count)))
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        assert sorted(keys) == sorted([f"work/dataset/part-{i:05d}.parquet" for i in range(count)] + ["work/dataset/_SUCCESS"]), run
    storage.delete_dir(final, s3)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0 or all(o["Key"].endswith("/") for o in client.list_objects_v2(Bucket=bucket)["Contents"])


def test_a_bundle_of_many_files_uploads_to_s3_without_hanging(fresh_bucket, moto_endpoint, tmp_path):
    """pyarrow 10's threaded copy_files deadlocked from 8 files on (each copy held one of the 8
    I/O threads while its stream's close waited for uploads needing them): the first pipeline on
    S3 hung copying the image bundle. In a child process, so a hang fails the test, not CI."""
    client, bucket = fresh_bucket
    bundle = tmp_path / "bundle"
    (bundle / "report").mkdir(parents=True)
    for i in range(14):
        (bundle / f"head_{i}.weights.h5").write_bytes(bytes([i]) * 1000)
    (bundle / "report" / "report.md").write_text("# report")
    code = (
        "import sys; from museum_typology import storage; "
        f"storage.upload_directory({str(bundle)!r}, 's3://{bucket}/models/v1', storage.S3Options(endpoint_url={moto_endpoint!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="models/v1/")["Contents"] if not o["Key"].endswith("/"))
    assert keys == sorted([f"models/v1/head_{i}.weights.h5" for i in range(14)] + ["models/v1/report/report.md"])
    assert client.get_object(Bucket=bucket, Key="models/v1/head_3.weights.h5")["Body"].read() == bytes([3]) * 1000


def test_a_bundle_commit_deletes_what_killed_commits_of_other_bundles_left(tmp_path, fresh_bucket, moto_endpoint):
    """A bundle's name changes with every run: the staging a killed train-image left
    (.20261129T032813Z-54a9f813.tmp-5e533358/) was never its successor's to clean up, locally or
    on S3. Only old ones go: another job may be committing its own bundle there now."""
    import time

    models = tmp_path / "models"
    write(str(models / ".v0.tmp-1234abcd"), {"head.h5": "half", "report/report.md": "half"})
    write(str(models / ".v9.tmp-abcdef12"), {"head.h5": "being written"})
    write(str(models / ".notes.txt.swp"), {"x": "not a temporary"})
    old = time.time() - 2 * 86400
    for path in (models / ".v0.tmp-1234abcd" / "head.h5", models / ".v0.tmp-1234abcd" / "report" / "report.md"):
        os.utime(path, (old, old))
    with storage.atomic_directory(str(models / "v1"), job="train-image", sweep_abandoned_after_s=86400) as tmp:
        write(tmp, {"model.json": "{}"})
    assert sorted(p.name for p in models.iterdir()) == [".notes.txt.swp", ".v9.tmp-abcdef12", "v1"]

    client, bucket = fresh_bucket
    s3 = S3Options(endpoint_url=moto_endpoint)
    client.put_object(Bucket=bucket, Key="models/.v0.tmp-1234abcd/head.h5", Body=b"half")
    with storage.atomic_directory(f"s3://{bucket}/models/v1", s3, job="train-image", sweep_abandoned_after_s=0) as tmp:
        storage.write_bytes(storage.join(tmp, "model.json"), b"{}", s3)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if not o["Key"].endswith("/"))
    assert keys == ["models/v1/_SUCCESS", "models/v1/model.json"]


def test_a_job_record_nested_too_deep_reads_as_damaged(tmp_path):
    (tmp_path / "summary.json").write_text("[" * 100_000)
    assert storage.read_json_object(str(tmp_path / "summary.json")) is None  # was a RecursionError


def test_an_output_folder_where_a_file_is_is_refused_before_the_job_writes(tmp_path):
    """The commit moved the file aside, put the folder in its place and then failed deleting the
    file as a folder: a raw OSError, and a hidden .NAME.old-* file left for good."""
    (tmp_path / "out").write_text("keep")
    with pytest.raises(storage.StorageError, match=r"out: a file is there; ingest writes a folder at this path"):
        with storage.atomic_directory(str(tmp_path / "out"), job="ingest"):
            raise AssertionError("not reached")
    assert (tmp_path / "out").read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_replaceable_knows_whose_output_a_directory_is(tmp_path):
    """`--output var` must not wipe a work directory, nor one job's output another's."""
    ingest_out = tmp_path / "ingest"
    with storage.atomic_directory(str(ingest_out), job="ingest") as tmp:
        write(tmp, {"manifest.parquet": "m", "summary.json": "{}"})
    assert (ingest_out / "_SUCCESS").read_text() == "ingest"
    storage.check_replaceable(str(ingest_out), ("manifest.parquet",), "ingest")  # its own: fine
    with pytest.raises(storage.StorageError, match="the committed output of ingest, not of clean"):
        storage.check_replaceable(str(ingest_out), ("summary.json",), "clean")  # even sharing a file name
    storage.check_replaceable(str(tmp_path / "absent"), ("x",), "clean")
    (tmp_path / "empty").mkdir()
    storage.check_replaceable(str(tmp_path / "empty"), ("x",), "clean")
    write(str(tmp_path / "var"), {"submission.csv": "keep", "models/a": "keep"})
    with pytest.raises(storage.StorageError, match="not empty and not an output of clean .*submission.csv.*delete it"):
        storage.check_replaceable(str(tmp_path / "var"), ("cleaned_manifest.parquet",), "clean")
    write(str(tmp_path / "legacy"), {"cleaned_manifest.parquet": "m", "_SUCCESS": ""})  # a marker naming no job
    storage.check_replaceable(str(tmp_path / "legacy"), ("cleaned_manifest.parquet",), "clean")
    with pytest.raises(storage.StorageError, match="exists and is not a directory"):
        storage.check_replaceable(str(tmp_path / "var" / "submission.csv"), ("x",), "clean")


def test_uris_for_petastorm_and_s3_endpoints_without_a_scheme(tmp_path):
    assert storage.to_uri(str(tmp_path / "a b" / "dataset")) == "file://" + str(tmp_path / "a b" / "dataset")
    with pytest.raises(storage.StorageError, match="may not contain '#'"):
        storage.to_uri(str(tmp_path / "run#3" / "dataset"))
    assert storage.s3_endpoint("minio.local:9000") == ("minio.local:9000", "https")
    assert storage.s3_endpoint("http://127.0.0.1:9000") == ("127.0.0.1:9000", "http")
    assert storage.s3_endpoint("https://s3.eu-central-1.amazonaws.com/") == ("s3.eu-central-1.amazonaws.com", "https")


def test_write_bytes_onto_a_directory_is_a_storage_error_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(storage.StorageError, match=r"out: cannot write the file \(is a directory\)"):
        storage.write_bytes(str(tmp_path / "out"), b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    storage.write_bytes(str(tmp_path / "f.txt"), b"x")
    assert (tmp_path / "f.txt").read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "out"]


def test_file_uris_as_spark_writes_them_name_the_local_file(tmp_path):
    # binaryFile's path column is "file:/dir/<name>" with the name as it is (checked with Spark
    # 3.5: "file:/d/a b.jpg", "file:/d/x#1.jpg", "file:/d/p%41.jpg"); a file:// URI is escaped.
    # Both were read as a URI, so "#", "?" and "%41" in a name lost the image.
    for name in ("a b.png", "x#1.png", "q?1.png", "p%41.png"):
        (tmp_path / name).write_bytes(name.encode())
        url = f"file:{tmp_path}/{name}"
        assert storage.filesystem_path(url) == str(tmp_path / name)
        assert storage.read_bytes(url) == name.encode() and storage.absolute(url) == url
    uri = f"file://{tmp_path}/a%20b.png"
    assert storage.filesystem_path(uri) == str(tmp_path / "a b.png") and storage.read_bytes(uri) == b"a b.png"
    assert storage.to_uri(f"file:{tmp_path}/d") == f"file://{tmp_path}/d"


def test_the_s3_region_is_the_setting_else_the_drivers_aws_environment():
    """s3.region was us-east-1 unless set, whatever AWS_REGION said: a bucket elsewhere was
    reached through the wrong region."""
    assert S3Options.from_settings({"region": "eu-central-1"}, {"AWS_REGION": "us-west-2"}).region == "eu-central-1"
    assert S3Options.from_settings({"region": ""}, {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}).region == "us-west-2"
    assert S3Options.from_settings({"region": ""}, {"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"
    assert S3Options.from_settings({}, {}).region == "us-east-1"
    from museum_typology.config import load_settings

    assert S3Options.from_settings(load_settings(environ={}).section("s3"), {"AWS_REGION": "eu-north-1"}).region == "eu-north-1"


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/", "s3a://bucket"])
def test_a_whole_bucket_as_an_output_directory_is_refused_before_any_work(url):
    """A commit writes a temporary sibling first; a bucket's sibling is another bucket, so a crawl
    into s3://bucket fetched everything and then failed with a traceback."""
    with pytest.raises(storage.StorageError, match="a whole bucket; crawl writes its output directory under a prefix: give s3://BUCKET/NAME"):
        storage.check_replaceable(url, ("manifest.parquet",), "crawl")
    with pytest.raises(storage.StorageError, match="a whole bucket"):
        with storage.atomic_directory(url, job="score"):
            pytest.fail("the commit's temporary directory was made")
