#!/usr/bin/env python
"""The scorer's reading of images from a dataset part file: by row group, in part-file order
(now), against a guid filter over the whole part file per chunk of rows, in input order (before).

    .venv/bin/python benchmarks/score_dataset_read.py [--rows 12000] [--repeats 3] [--json out.json]

The shared images, stored as ingest stores them (longer side ``images.max_side``, JPEG at
``images.jpeg_quality``), are cycled under new guids into one part file with row groups of
``ingest.row_group_size_mb``, and asked for in shuffled input order. Both sides run the same
``Scorer.score_frame`` (read, decode, a stand-in model that returns uniform probabilities, the
cascade), so the ratio is that of the job's read-and-decode stage without the network; "before"
swaps in the former reader (pyarrow ``filters=[("guid", "in", ...)]`` over the part file, which
cannot skip row groups whose guids are in no order). Runs alternate after a warm-up; medians are
compared. Local disk and page cache here: on S3 each whole-file read is a network transfer.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402
from side_by_side import alternate, report_now_vs_before  # noqa: E402

from museum_typology import score  # noqa: E402
from museum_typology.config import load_settings  # noqa: E402
from museum_typology.schema import CLASSES  # noqa: E402


class UniformImage:
    def predict_proba(self, images, batch_size=0):
        return np.full((len(images), len(CLASSES)), 1.0 / len(CLASSES))


class FilterReader:
    """The former read path: the whole part file, filtered to the chunk's guids, per chunk."""

    row_groups_read = 0

    def position(self, url: str, guid: str) -> None:
        return None  # no index: input order

    def release(self) -> None:
        pass

    def read(self, url: str, guids) -> dict[str, tuple[bytes, str | None]]:
        table = pq.read_table(url, columns=["guid", "image"], filters=[("guid", "in", sorted(set(guids)))])
        self.row_groups_read += pq.ParquetFile(url).num_row_groups
        return {g: (image, None) for g, image in zip(table.column("guid").to_pylist(), table.column("image").to_pylist())}


def stored_images(archive: Path, max_side: int, quality: int) -> list[bytes]:
    blobs = []
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(m for m in zf.namelist() if not m.endswith("/")):
            with Image.open(io.BytesIO(zf.read(name))) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
                buffer = io.BytesIO()
                im.save(buffer, "JPEG", quality=quality)
                blobs.append(buffer.getvalue())
    return blobs


def write_part(path: Path, blobs: list[bytes], rows: int, row_group_bytes: int) -> list[str]:
    guids = [f"{i:08x}" for i in np.random.default_rng(1).permutation(rows)]  # in no order, like crawled guids
    images = [blobs[i % len(blobs)] for i in range(rows)]
    per_group = max(1, row_group_bytes // int(np.mean([len(b) for b in blobs])))
    # No dictionary for the images: it would store each cycled image once and shrink the file
    # and its row groups far below what ingest writes (every image distinct there).
    pq.write_table(pa.table({"guid": guids, "image": images}), path, row_group_size=per_group, use_dictionary=["guid"])
    return guids


@contextlib.contextmanager
def cycled_part_file(settings, rows: int, prefix: str) -> Iterator[tuple[Path, list[str]]]:
    """A scratch part file of ``rows`` images, the shared ones stored as ingest stores them and
    cycled under new guids in no order (``write_part``), with row groups of
    ``ingest.row_group_size_mb``: (its path, its guids in file order). Deleted afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        blobs = stored_images(Path(settings.get("paths.data")) / settings.get("ingest.images"), int(settings.get("images.max_side")), int(settings.get("images.jpeg_quality")))
        part = scratch / "part-00000.parquet"
        yield part, write_part(part, blobs, rows, int(settings.get("ingest.row_group_size_mb")) * 1024 * 1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stand_in_spec(settings) -> score.ScorerSpec:
    """A scorer spec with no text model and a stand-in image model (``UniformImage``)."""
    return score.ScorerSpec(None, "stand-in", (("default_class", CLASSES[14]), ("t_image", 0.7), ("t_text", 0.7), ("w_text", 0.5)), "bench", max_side=int(settings.get("images.max_side")))


def part_file_context(part: Path) -> dict[str, Any]:
    return {"row_groups_in_part": pq.ParquetFile(part).num_row_groups, "part_mb": round(part.stat().st_size / 2**20, 1)}


def part_file_arguments(doc: str) -> argparse.Namespace:
    """The options of a benchmark over a cycled part file (this one, score_batch_order.py):
    --rows, --repeats, --json; ``doc``'s first paragraph is the description."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def main() -> int:
    args = part_file_arguments(__doc__)
    settings = load_settings()
    with cycled_part_file(settings, args.rows, "score-read-bench-") as (part, guids):
        order = np.random.default_rng(2).permutation(args.rows)
        tasks = pd.DataFrame({"row": range(args.rows), "guid": [guids[i] for i in order], "text": "", "image_kind": score.IMAGE_DATASET, "image_ref": str(part), "note": ""})
        spec = stand_in_spec(settings)

        def timed(before: bool) -> tuple[float, int]:
            scorer = score.Scorer(spec, None, UniformImage())
            if before:
                scorer.dataset_images = FilterReader()
            started = time.perf_counter()
            result = scorer.score_frame(tasks)
            seconds = time.perf_counter() - started
            assert (result["source"] == "image").all() and list(result["guid"]) == list(tasks["guid"])
            return seconds, scorer.dataset_images.row_groups_read

        seconds, row_groups = alternate(lambda name: timed(name == "before"), args.repeats)
        context = {"rows": args.rows, **part_file_context(part), "chunk_rows": spec.image_batch * 4, "row_groups_read": row_groups}
        report_now_vs_before(seconds, args.rows, context, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
