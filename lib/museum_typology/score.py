"""score job: the text/image cascade over a CSV or Parquet of catalogue rows, as a Spark job.

Output: one row per input row, in input order: ``guid,typology,confidence,source,model_version,note``
(Parquet output adds the per-modality confidences and the input hashes that ``rescore`` compares).
``source`` is ``text``, ``image``, ``blend`` or ``default`` (see ``cascade``); ``note`` says what was
missing or broken (no description, image unreadable and why, duplicate guid, ...).

Shape: the driver reads and checks the input (clear errors, nothing dropped), finds each row's
image (a ``DIR/<guid>[.ext]`` file or a row of a petastorm dataset) without reading it, and hands
small rows to ``mapInPandas``. Each executor process loads the models once (``Scorer.cached``) and
reads, decodes and scores its rows in batches. The driver collects the small result rows, puts
them back in input order and writes the output atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import bundles, storage, tflite_backbone
from .cascade import CascadeParams, decide
from .catalogue import DUPLICATE_NOTE, CsvError, InputRow, decode_csv_bytes, escape_control_characters, has_control_character, parquet_data_files, parse_catalogue_csv, refuse_repeated_columns, rows_of_record, where_recorded, with_text_columns
from .clean import image_fold_runs
from .config import ConfigError, Settings, whole_number
from .errors import InternalError
from .image_source import images_by_guid, known_guids
from .images import as_stored, decode_image
from .ingest import DecodeSettings
from .log import get_logger
from .petastorm_io import PartImageReader
from .schema import CLASSES
from .storage import S3Options
from .text import KNOWN_VERSIONS, NORMALIZATION_VERSION, normalize

log = get_logger(__name__)

OUTPUT_COLUMNS = ("guid", "typology", "confidence", "source", "model_version", "note")
# Extra columns of Parquet output (and of the Spark DataFrame): what rescore needs to skip rows.
DETAIL_COLUMNS = ("text_confidence", "image_confidence", "description_hash", "image_sha256")
TEXT_MARKER, IMAGE_MARKER = "calibration.json", "model.json"
# Where a row's image is: a file (URL), a row of a dataset part file, or bytes in the row itself.
IMAGE_FILE, IMAGE_DATASET, IMAGE_BYTES = "file", "dataset", "bytes"

# Columns handed to the executors, and what they send back.
TASK_SCHEMA = "row long, guid string, text string, image_kind string, image_ref string, note string"
# What the executors send back, once: the Spark DDL of mapInPandas and (without the row number)
# the Parquet output's schema, given rather than inferred (an input of no rows inferred null columns).
RESULT_FIELDS = (("row", pa.int64()), *((name, pa.float64() if name.endswith("confidence") else pa.string()) for name in (*OUTPUT_COLUMNS, *DETAIL_COLUMNS)))
RESULT_SCHEMA = ", ".join(f"{name} {({pa.int64(): 'long', pa.float64(): 'double', pa.string(): 'string'})[kind]}" for name, kind in RESULT_FIELDS)
RESULT_COLUMNS = tuple(name for name, _ in RESULT_FIELDS)
OUTPUT_SCHEMA = pa.schema(RESULT_FIELDS[1:])


PARQUET_EXTENSIONS = (".parquet", ".pq")
OUTPUT_EXTENSIONS = (".csv", *PARQUET_EXTENSIONS)


class ScoreError(ValueError):
    """The input or the models cannot be scored (a user error: one clear line)."""


# ---------------------------------------------------------------- input


def read_rows(url: str, s3: S3Options | None = None, name: str | None = None) -> list[InputRow]:
    """Rows to score from a CSV or a Parquet file: ``guid`` and ``description`` columns are
    required (either value may be empty); anything else (``typology`` included) is ignored.
    ``name``: how messages and ``source_file`` name the file (default: its base name)."""
    name = name or url.rstrip("/").rsplit("/", 1)[-1]
    if not storage.exists(url, s3):
        raise storage.StorageError(f"{url}: no such file")
    if name.lower().endswith(PARQUET_EXTENSIONS) or storage.is_dir(url, s3):
        return _parquet_rows(url, name, s3)
    text = decode_csv_bytes(storage.read_bytes(url, s3), name)
    return parse_catalogue_csv(text, name, split="score", required=("guid", "description"), labelled=False, used=("guid", "description"))


def _parquet_rows(url: str, name: str, s3: S3Options | None) -> list[InputRow]:
    """A Parquet file's rows, or a directory's, file by file: read as one dataset, every file
    took the first file's column names as they are spelled ("GUID" in one file, "guid" in
    another came in as empty guids) and types (an all-empty column stored as Arrow's null type
    stopped the read). A row's messages name its file."""
    fs, path = storage.filesystem(url, s3)
    if not storage.is_dir(url, s3):
        return _parquet_file_rows(fs, path, name)
    rows: list[InputRow] = []
    for file in parquet_data_files(fs, path, name):
        rows.extend(_parquet_file_rows(fs, file, f"{name}/{file[len(path):].lstrip('/')}", in_directory=name))
    return rows


def _parquet_file_rows(fs, path: str, name: str, in_directory: str | None = None) -> list[InputRow]:
    """One Parquet file's rows: only its guid and description columns are read (a catalogue
    export may hold the images too), found without case or surrounding spaces ("GUID",
    "Description ") as a CSV header is read, and read as text. ``in_directory``: the input
    directory it belongs to, for its messages."""
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            folded = [str(c).strip().lower() for c in names]
            try:
                refuse_repeated_columns(folded, name, ("guid", "description"))
            except CsvError as exc:
                raise CsvError(f"{exc} (compared without case or surrounding spaces)") from None
            missing = [c for c in ("guid", "description") if c not in folded]
            if missing and in_directory:
                raise CsvError(f"{in_directory}: its file {name[len(in_directory) + 1:]} has no {' or '.join(missing)} column; every Parquet file of an input directory is read as rows to score")
            if missing:
                raise CsvError(f"{name}: missing column(s) {', '.join(missing)} (found: {', '.join(names) or 'nothing'})")
            table = parquet.read(columns=[names[folded.index(c)] for c in ("guid", "description")])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise CsvError(f"{name}: not a readable Parquet file ({exc})") from None
    table = table.rename_columns(["guid", "description"])
    try:  # as text, as every job reads them: a float column's 1.0 is guid "1"
        table = with_text_columns(table, ["guid", "description"])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise CsvError(f"{name}: the guid and description columns must be text ({exc})") from None
    rows = []
    for number, (guid, description) in enumerate(zip(table.column("guid").to_pylist(), table.column("description").to_pylist()), start=1):
        guid = str(guid).strip() if guid is not None and str(guid).strip() else None
        description = str(description).strip() if description is not None and str(description).strip() else None
        reason = None if guid else f"{name} row {number}: empty guid"
        if guid and has_control_character(guid):
            reason = f"{name} row {number}: guid {guid!r} holds a control character"
        rows.append(InputRow(guid=guid, split="score", source_file=name, source_row=number, source_line=number, description=description, typology=None, rejected_reason=reason))
    return rows


def check_image_sources(images_dir: str | None, image_dataset: str | None, s3: S3Options | None = None) -> None:
    """The image options name directories (cheap: no listing); the CLI asks before Spark starts."""
    if images_dir and not storage.is_dir(images_dir, s3):
        raise storage.StorageError(f"{images_dir}: --images must be a directory of <guid>[.ext] files")
    if image_dataset and not storage.is_dir(image_dataset, s3):
        raise storage.StorageError(f"{image_dataset}: --image-dataset must be a dataset directory written by ingest or crawl (their dataset/)")


def check_output(input_url: str, output_url: str, s3: S3Options | None = None) -> None:
    """The output is a file that is not the input (cheap; the CLI asks before Spark starts): a
    directory there failed the job at its very end, and the input would have been overwritten."""
    if storage.same_location(input_url, output_url):
        raise storage.StorageError(f"{output_url}: --output is the --input file; scoring would overwrite its rows")
    if storage.is_inside(output_url, input_url) and storage.is_dir(input_url, s3):
        raise storage.StorageError(f"{output_url}: --output is inside the --input directory; a re-run would read the predictions back as rows to score")
    if storage.is_dir(output_url, s3):
        raise storage.StorageError(f"{output_url}: --output is a directory; name a .csv or .parquet file (e.g. {storage.join(output_url, 'predictions.csv')})")
    if not output_url.lower().endswith(OUTPUT_EXTENSIONS):
        raise storage.StorageError(f"{output_url}: --output must end in .csv, .parquet or .pq (the extension chooses the format)")
    storage.check_can_write(output_url, "--output", folder=False, s3=s3)


class ImageFiles(dict):
    """guid -> URL of its one image file; ``ambiguous``: guid -> the names of its several files
    (such a row gets no image and a note, as ingest quarantines it: which one is meant is unknown)."""

    def __init__(self, files: dict[str, str] | None = None, ambiguous: dict[str, list[str]] | None = None):
        super().__init__(files or {})
        self.ambiguous: dict[str, list[str]] = ambiguous or {}


def find_image_files(images_dir: str, s3: S3Options | None = None, known_guids: Collection[str] = ()) -> ImageFiles:
    """guid -> URL of ``DIR/<guid>`` or ``DIR/<guid>.<extension>`` (``guid_of``, which the
    rows' ``known_guids`` tell ``MS.A`` from ``MS`` + extension; the content decides the format,
    never the name). Hidden files and metadata sidecars (``u1.xmp``) are skipped as ingest skips
    them (``images_by_guid``). A guid with several files is listed under ``ambiguous``."""
    check_image_sources(images_dir, None, s3)
    names = images_by_guid(storage.list_files(images_dir, s3, recursive=False), known_guids)
    return ImageFiles(
        {guid: storage.join(images_dir, found[0]) for guid, found in names.items() if len(found) == 1},
        {guid: found for guid, found in names.items() if len(found) > 1},
    )


def find_dataset_images(dataset_url: str, s3: S3Options | None = None) -> dict[str, str]:
    """guid -> URL of the part file that holds its image in a petastorm dataset (ingest/crawl
    output). Reads only the guid column of each part, never the images."""
    check_image_sources(None, dataset_url, s3)
    fs, root = storage.filesystem(dataset_url, s3)
    # Listed as every job lists (a stray file name that is not UTF-8 is left out with a warning).
    parts = [f"{root.rstrip('/')}/{name}" for name in storage.list_files(dataset_url, s3, recursive=True) if name.endswith(".parquet") and not any(p.startswith("_") for p in name.split("/"))]
    if not parts:
        raise storage.StorageError(f"{dataset_url}: no Parquet part files (expected an ingest or crawl dataset/)")
    found: dict[str, str] = {}
    for part in parts:
        try:
            with fs.open_input_file(part) as handle:  # one footer read: its schema, then the guids
                parquet = pq.ParquetFile(handle)
                missing = [c for c in ("guid", "image") if c not in parquet.schema_arrow.names]
                if missing:  # the job's folder (its manifest.parquet) rather than its dataset/, say
                    raise storage.StorageError(f"{dataset_url}: {part} has no {' or '.join(missing)} column: --image-dataset must be the dataset/ folder that ingest or crawl wrote")
                guids = parquet.read(columns=["guid"]).column("guid").to_pylist()
        except storage.StorageError:
            raise
        except (pa.ArrowInvalid, OSError) as exc:
            raise storage.StorageError(f"{dataset_url}: {part} is not a readable Parquet file ({exc})") from None
        url = part if not storage.is_s3(dataset_url) else "s3://" + part
        for guid in guids:
            found.setdefault(guid, url)
    return found


def plan_tasks(rows: Sequence[InputRow], image_files: dict[str, str], dataset_images: dict[str, str], normalization: int = NORMALIZATION_VERSION) -> pd.DataFrame:
    """The rows handed to the executors (TASK_SCHEMA): normalised text, where the image is, and
    what the driver already knows is wrong (duplicate guid, rejected row); for planning only,
    ``image_pos``: a dataset row's place in the dataset (``dataset_images`` lists the guids
    part file by part file, in row order, as ``find_dataset_images`` reads them), else -1. Pure."""
    record = rows_of_record(rows)
    several_files = len({row.source_file for row in rows}) > 1  # a Parquet directory: rows count per file
    dataset_order = {guid: k for k, guid in enumerate(dataset_images)}
    records = []
    for index, row in enumerate(rows):
        notes = [row.rejected_reason] if row.rejected_reason else []
        recorded = where_recorded(rows, record, index, with_file=several_files)
        if recorded:
            notes.append(f"{DUPLICATE_NOTE}{recorded})")
        kind = ref = None
        position = -1
        ambiguous = getattr(image_files, "ambiguous", {}).get(row.guid) if row.guid is not None else None
        if ambiguous:
            notes.append(f"image ambiguous: {len(ambiguous)} image files for this guid: {', '.join(ambiguous)}")
        elif row.guid is not None and row.guid in image_files:
            kind, ref = IMAGE_FILE, image_files[row.guid]
        elif row.guid is not None and row.guid in dataset_images:
            kind, ref, position = IMAGE_DATASET, dataset_images[row.guid], dataset_order[row.guid]
        text = normalize(row.description, normalization)
        if not text:
            notes.append("no description" if not row.description else "description has no words")
        records.append({"row": index, "guid": row.guid or "", "text": text, "image_kind": kind, "image_ref": ref, "note": "; ".join(notes), "image_pos": position})
    return pd.DataFrame.from_records(records, columns=["row", "guid", "text", "image_kind", "image_ref", "note", "image_pos"])


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ScorerSpec:
    """Everything an executor needs to build a Scorer: concrete bundle URLs (resolved once on the
    driver, so every executor uses the same versions), the cascade and the image limits."""

    text_bundle: str | None
    image_bundle: str | None
    cascade: tuple[tuple[str, Any], ...]
    cascade_version: str
    s3: S3Options | None = None
    max_side: int = 512
    max_pixels: int = 80_000_000
    max_bytes: int = 50_000_000
    text_batch: int = 1024
    image_batch: int = 32
    image_views: str = "trained"  # ImageBundle views: "trained" (all, TTA) or "whole" (whole + mirror)
    image_runtime: str = "auto"  # ImageBundle backbone: "tflite" (CPU kernels), "keras", "auto" (keras where a GPU is)
    image_threads: int = 0  # TF Lite threads per scorer; 0 = the Spark task's cpus
    text_normalization: int = NORMALIZATION_VERSION  # the text bundle's text.normalize rules
    stored_codec: str = "jpeg"  # images.codec: how the training images were stored, and files are scored
    stored_quality: int = 92  # images.jpeg_quality

    @property
    def params(self) -> CascadeParams:
        return CascadeParams.from_dict(dict(self.cascade))

    @property
    def model_version(self) -> str:
        def name(url: str | None) -> str:
            return bundles.bundle_version(url) if url else "none"

        # Whatever changes a prediction for the same input changes the version, so that rescore
        # re-scores rows when it changes: whole-image scoring (other probabilities than the
        # trained views) and the image limits (another decode, or a refusal).
        image = name(self.image_bundle)
        if self.image_bundle:
            stored = f"jpeg{self.stored_quality}" if self.stored_codec == "jpeg" else self.stored_codec
            image += ("+whole" if self.image_views == "whole" else "") + f"@{self.max_side}px,{self.max_pixels}pixels,{self.max_bytes}bytes,{stored}"
        return f"text={name(self.text_bundle)};image={image};cascade={self.cascade_version}"


def _concrete_bundle(model_dir: str, marker: str, s3: S3Options | None) -> str | None:
    """``model_dir`` itself when it is a bundle, else the bundle its ``latest`` names, else None."""
    if storage.exists(storage.join(model_dir, marker), s3):
        return model_dir
    version = bundles.latest_version(model_dir, s3)
    if version is not None:
        url = storage.join(model_dir, version)
        if storage.exists(storage.join(url, marker), s3):
            return url
    return None


def check_settings(settings: Settings) -> None:
    """[score]'s choices and counts, checked on the driver (an executor would only find out when
    it loads the image model) and by the pipeline before its first stage (not after ingest and
    both trainings)."""
    for key, allowed in (("score.image_views", ("trained", "whole")), ("score.image_runtime", tflite_backbone.RUNTIMES)):
        if settings.get(key) not in allowed:
            raise ScoreError(f"{key} = {settings.get(key)!r}: must be one of {', '.join(allowed)}")
    for key, minimum, why in (("image_threads", 0, "0 = the Spark task's cpus"), ("rows_per_partition", 1, ""), ("rows_per_job", 1, ""), ("batch_size", 1, ""), ("image_batch_size", 1, "")):
        try:  # the readers take int(): a count written 5.0 is 5, as elsewhere
            whole_number(f"score.{key}", settings.get(f"score.{key}"), minimum, why)
        except ConfigError as exc:
            raise ScoreError(str(exc)) from None


def resolve_models(settings: Settings, model_dir: str, text_model: str | None = None, image_model: str | None = None) -> ScorerSpec:
    """The models to score with. ``model_dir`` is a models root (``text/``, ``image/``,
    ``cascade/`` below it), or one kind's directory or bundle; ``text_model``/``image_model``
    name a bundle or kind directory explicitly."""
    s3 = S3Options.from_settings(settings.section("s3"))
    text = _concrete_bundle(text_model, TEXT_MARKER, s3) if text_model else None
    image = _concrete_bundle(image_model, IMAGE_MARKER, s3) if image_model else None
    # A model named on purpose (a rollback pin) that is not there must not give way to latest.
    for given, found, kind, marker in ((text_model, text, "text", TEXT_MARKER), (image_model, image, "image", IMAGE_MARKER)):
        if given and found is None:
            raise ScoreError(f"{given}: no {kind} bundle there (a {kind} bundle holds {marker}, or a directory of them names one in latest)")
    text = text or _concrete_bundle(storage.join(model_dir, "text"), TEXT_MARKER, s3) or _concrete_bundle(model_dir, TEXT_MARKER, s3)
    image = image or _concrete_bundle(storage.join(model_dir, "image"), IMAGE_MARKER, s3) or _concrete_bundle(model_dir, IMAGE_MARKER, s3)
    if text is None and image is None:
        raise ScoreError(f"{model_dir}: no text or image model bundle found (run train-text / train-image, or pass --model)")
    if image:  # read here, so a damaged one is one error line, not a traceback from every executor
        bundle_json(storage.join(image, IMAGE_MARKER), s3)
    params, version = cascade_params(settings, storage.join(model_dir, "cascade"), s3, text, image)
    images = DecodeSettings.from_settings(settings)  # checked: a bad codec fails here, not in every executor
    check_settings(settings)
    return ScorerSpec(
        text, image, tuple(sorted(params.to_dict().items())), version, s3,
        images.max_side, images.max_pixels, images.max_bytes,
        int(settings.get("score.batch_size")), int(settings.get("score.image_batch_size")), str(settings.get("score.image_views")),
        str(settings.get("score.image_runtime")), int(settings.get("score.image_threads")),
        text_normalization(text, s3) if text else NORMALIZATION_VERSION,
        images.codec, images.jpeg_quality,
    )


def bundle_json(url: str, s3: S3Options | None) -> dict[str, Any]:
    """The JSON object of a bundle's file, read on the driver; a damaged or missing one is a
    ``ScoreError`` naming it (it was a JSONDecodeError traceback), not a score with half a bundle."""
    try:
        value = json.loads(storage.read_bytes(url, s3))
    except (OSError, ValueError) as exc:
        if storage.is_s3_error(exc):
            raise
        raise ScoreError(f"{url}: not a readable bundle file ({' '.join(str(exc).split())}); train the model again or pass --model") from None
    if not isinstance(value, dict):
        raise ScoreError(f"{url}: holds {type(value).__name__}, not a JSON object; train the model again or pass --model")
    return value


def _unreadable(path: str, exc: Exception) -> str:
    """A row's note for an image file that could not be read, naming the path once (storage's
    and pyarrow's errors mostly name it already)."""
    return f"image unreadable: {exc}" if path in str(exc) else f"image unreadable: {path}: {exc}"


def cascade_mismatch(inputs: dict[str, Any], text_bundle: str | None, image_bundle: str | None, s3: S3Options | None) -> str | None:
    """How a tuned cascade's inputs differ from the bundles to score with (None: they agree, or
    the cascade did not record them). A --final image bundle has no out-of-fold predictions of
    its own: it belongs with a cascade tuned on the image fold run whose predictions cleaned its
    labels (``final_bundle_fold_runs``); one that records none (trained without a clean job's
    manifest, on one cleaned with text predictions only, or written before bundles recorded
    it) is not checked."""
    differ = []
    if text_bundle and inputs.get("text_model") and inputs["text_model"] != bundles.bundle_version(text_bundle):
        differ.append(f"text model {inputs['text_model']}, not {bundles.bundle_version(text_bundle)}")
    if image_bundle and inputs.get("image_model") and inputs["image_model"] != bundles.bundle_version(image_bundle):
        model = bundle_json(storage.join(image_bundle, IMAGE_MARKER), s3)
        if model.get("kind") != "final":
            differ.append(f"image model {inputs['image_model']}, not {bundles.bundle_version(image_bundle)}")
        else:
            fold_runs = final_bundle_fold_runs(image_bundle, s3)
            if fold_runs and inputs["image_model"] not in fold_runs:
                differ.append(f"image model {inputs['image_model']}, not the fold run behind final bundle {bundles.bundle_version(image_bundle)}'s labels ({', '.join(fold_runs)})")
    return "; ".join(differ) or None


def final_bundle_fold_runs(image_bundle: str, s3: S3Options | None) -> list[str]:
    """The image fold bundles whose out-of-fold predictions cleaned a final image bundle's labels
    (``clean.image_fold_runs`` of its data.json's ``labels_manifest``); [] when it records none."""
    data = storage.read_json_object(storage.join(image_bundle, "data.json"), s3) or {}
    return image_fold_runs(data.get("labels_manifest"))


def text_normalization(text_bundle: str, s3: S3Options | None) -> int:
    """The text.normalize rules a text bundle was trained on (its calibration.json; bundles
    written before the rules had versions: 1), read on the driver, which normalises the rows."""
    calibration = bundle_json(storage.join(text_bundle, TEXT_MARKER), s3)
    version = int(calibration.get("normalization", 1))
    if version not in KNOWN_VERSIONS:  # a bundle from newer code: one line, not normalize's traceback
        raise ScoreError(f"{text_bundle}: trained on text normalisation {version}, which this code does not know ({', '.join(map(str, KNOWN_VERSIONS))}); upgrade museum-typology to score with it")
    return version


def cascade_params(settings: Settings, cascade_dir: str, s3: S3Options | None, text_bundle: str | None = None, image_bundle: str | None = None) -> tuple[CascadeParams, str]:
    """The newest tuned cascade (``tune-cascade``) when there is one and it was tuned on the
    out-of-fold predictions of the bundles scored with, else the conf's [cascade]. The default
    class is always the conf's (``cascade.default_class`` is a choice, not tuned); one other than
    the tuned cascade recorded is named in the version, so rescore re-scores."""
    bundle = _concrete_bundle(cascade_dir, "cascade.json", s3)
    if bundle is not None:
        values = bundle_json(storage.join(bundle, "cascade.json"), s3)
        stale = cascade_mismatch(values.get("metrics", {}).get("inputs", {}), text_bundle, image_bundle, s3)
        if stale is None:
            try:
                tuned = CascadeParams.from_dict(values["params"], tuned=True)
            except (KeyError, TypeError, ValueError) as exc:
                raise ScoreError(f"{storage.join(bundle, 'cascade.json')}: no usable cascade parameters ({exc!r}); run tune-cascade again") from None
            chosen = dataclasses.replace(tuned, default_class=settings.get("cascade.default_class"))
            version = bundles.bundle_version(bundle)
            return chosen, version if chosen == tuned else f"{version}+default-{CLASSES.index(chosen.default_class)}"
        # Thresholds fitted to another model's confidences mean something else for this one.
        log.warning("cascade %s was tuned on %s; scoring with the [cascade] settings instead (run tune-cascade after training)", bundle, stale)
    params = CascadeParams.from_dict(settings.section("cascade"))
    # "conf" plus a digest of the values: editing [cascade] is a new version (rescore re-scores).
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return params, f"conf-{digest}"


class Scorer:
    """Loaded models plus the cascade: ``score_frame`` turns task rows into result rows.

    One per executor process (``cached``): TensorFlow graphs and 100 MB of vectors are loaded once,
    not per row or per batch. Also used directly by the PySpark Transformer and in tests."""

    _cache: dict[ScorerSpec, Scorer] = {}
    _lock = threading.Lock()

    def __init__(self, spec: ScorerSpec, text_model: Any = None, image_model: Any = None):
        """Models are anything with ``predict_proba`` (``TextModel``: normalised texts ->
        [n, 15]; ``ImageBundle``: RGB arrays -> [n, 15]). Left as None, a model named by the spec
        is loaded from its bundle on first use: a text-only input never loads the CNN."""
        self.spec = spec
        self.params = spec.params
        self.version = spec.model_version
        self._text = text_model
        self._image = image_model
        self.dataset_images = PartImageReader(spec.s3)

    @property
    def text(self) -> Any:
        if self._text is None and self.spec.text_bundle:
            from .text_model import TextModel

            model = TextModel.load(bundles.resolve_bundle(self.spec.text_bundle, TEXT_MARKER, "text", self.spec.s3))
            if model.normalization != self.spec.text_normalization:  # the rows were normalised by other rules
                raise ScoreError(f"{self.spec.text_bundle}: trained on text normalisation {model.normalization}, but the rows were normalised by version {self.spec.text_normalization} (build the spec with score.resolve_models)")
            self._text = model
        return self._text

    @property
    def image(self) -> Any:
        if self._image is None and self.spec.image_bundle:
            from .image_model import ImageBundle

            self._image = ImageBundle(bundles.resolve_bundle(self.spec.image_bundle, IMAGE_MARKER, "image", self.spec.s3), views=self.spec.image_views, runtime=self.spec.image_runtime, threads=self.spec.image_threads)
        return self._image

    @classmethod
    def cached(cls, spec: ScorerSpec) -> Scorer:
        """The process's Scorer for ``spec``, loaded on first use (Python workers are reused
        across tasks, so an executor loads each bundle once)."""
        with cls._lock:
            if spec not in cls._cache:
                cls._cache[spec] = cls(spec)
            return cls._cache[spec]

    def score_frame(self, tasks: pd.DataFrame) -> pd.DataFrame:
        """TASK_SCHEMA rows -> RESULT_SCHEMA rows (same order)."""
        n = len(tasks)
        notes = [[note] if note else [] for note in tasks["note"].fillna("")]
        texts = tasks["text"].fillna("").tolist()
        has_text = np.array([bool(t) for t in texts])
        text_proba = np.zeros((n, len(CLASSES)))
        if has_text.any():
            if self.text is None:
                has_text[:] = False
                for i in np.flatnonzero([bool(t) for t in texts]):
                    notes[i].append("no text model")
            else:
                idx = np.flatnonzero(has_text)
                text_proba[idx] = self.text.predict_proba([texts[i] for i in idx], batch_size=self.spec.text_batch)
        has_image = np.zeros(n, dtype=bool)
        image_proba = np.zeros((n, len(CLASSES)))
        shas: list[str | None] = [None] * n
        kinds = tasks["image_kind"].tolist()
        for i in range(n):
            if kinds[i] is None:
                notes[i].append("no image")
        with_image = self._reading_order(tasks, [i for i in range(n) if kinds[i] is not None])
        # Images are read, decoded and scored a few batches at a time: a whole Arrow batch of
        # decoded scans (2048 x up to 512 x 512 x 3) would hold gigabytes at once.
        chunk = max(1, self.spec.image_batch * 4)
        for start in range(0, len(with_image), chunk):
            rows = with_image[start : start + chunk]
            pixels, chunk_shas = self._read_images(tasks.iloc[rows], [notes[i] for i in rows])
            decoded = [k for k, p in enumerate(pixels) if p is not None]
            for k, sha in enumerate(chunk_shas):
                shas[rows[k]] = sha
            if not decoded:
                continue
            if self.image is None:
                for k in decoded:
                    notes[rows[k]].append("no image model")
                continue
            idx = [rows[k] for k in decoded]
            image_proba[idx] = self.image.predict_proba([pixels[k] for k in decoded], batch_size=self.spec.image_batch)
            has_image[idx] = True
        self.dataset_images.release()  # the worker outlives the task: do not hold a row group of images
        # decide() takes a row whose probabilities are not all finite as missing that modality
        # (a broken bundle's NaN); the note says so, or the row's fallback had no reason.
        for name, proba, has in (("text", text_proba, has_text), ("image", image_proba, has_image)):
            for i in np.flatnonzero(has & ~np.isfinite(proba).all(axis=1)):
                notes[i].append(f"{name} model gave non-finite probabilities")
                has[i] = False
        decision = decide(text_proba, image_proba, has_text, has_image, self.params)
        return pd.DataFrame({
            "row": tasks["row"].to_numpy(),
            "guid": tasks["guid"].to_numpy(),
            "typology": decision.typologies(),
            "confidence": np.round(decision.confidence, 6),
            "source": decision.source.astype(str),
            "model_version": self.version,
            "note": ["; ".join(parts) for parts in notes],
            "text_confidence": np.where(has_text, text_proba.max(axis=1), np.nan),
            "image_confidence": np.where(has_image, image_proba.max(axis=1), np.nan),
            "description_hash": [description_hash(t) for t in texts],
            "image_sha256": shas,
        })

    def _reading_order(self, tasks: pd.DataFrame, rows: list[int]) -> list[int]:
        """``rows`` (those with an image) in the order to read them: the others first, then the
        dataset rows part file by part file, by position in it, so that the chunks read each
        Parquet row group of images once (in input order, every chunk read most of them again)."""
        kinds, refs, guids = tasks["image_kind"].tolist(), tasks["image_ref"].tolist(), tasks["guid"].tolist()
        by_part: dict[str, list[int]] = defaultdict(list)
        ordered = []
        for i in rows:
            (by_part[refs[i]] if kinds[i] == IMAGE_DATASET else ordered).append(i)
        for part in sorted(by_part):  # one part at a time: its guid index is read once
            try:
                positions = {i: self.dataset_images.position(part, guids[i]) or (-1, -1) for i in by_part[part]}
            except (OSError, pa.ArrowException):  # a note on its rows, or the task's failure, when they are read
                positions = {}
            ordered.extend(sorted(by_part[part], key=lambda i: positions.get(i, (-1, -1))))
        return ordered

    def _read_images(self, tasks: pd.DataFrame, notes: list[list[str]]) -> tuple[list[np.ndarray | None], list[str | None]]:
        """Read and decode the image of each row (rows that have one; the one decode path):
        pixels and sha256 per row; failures become notes (``notes`` lines up with ``tasks``)."""
        n = len(tasks)
        raws: list[bytes | None] = [None] * n
        kinds, refs, guids = tasks["image_kind"].tolist(), tasks["image_ref"].tolist(), tasks["guid"].tolist()
        by_part: dict[str, list[int]] = defaultdict(list)
        for i in range(n):
            if kinds[i] == IMAGE_FILE:
                try:
                    # A huge file (a multi-GB scan, a misplaced archive) is refused before it is
                    # read into an executor's memory, with the reason decode_image would give.
                    raws[i], size = storage.read_bytes_within(refs[i], self.spec.max_bytes, self.spec.s3)
                    if raws[i] is None:
                        notes[i].append(f"image unusable: file too large: {size} bytes > images.max_bytes={self.spec.max_bytes} (not read)")
                except OSError as exc:
                    notes[i].append(_unreadable(refs[i], exc))
            elif kinds[i] == IMAGE_DATASET:
                by_part[refs[i]].append(i)
            elif kinds[i] == IMAGE_BYTES:
                raws[i] = tasks["image_bytes"].iat[i]
        # A dataset row carries the sha256 of the original file (ingest/crawl), the same hash a
        # DIR/<guid> file gets here, so rescore sees an unchanged image whichever way it came.
        original_sha: dict[int, str] = {}
        for part, rows in by_part.items():
            try:
                found = self.dataset_images.read(part, [guids[i] for i in rows])
            except (FileNotFoundError, pa.ArrowInvalid) as exc:  # the part file went or broke after planning
                for i in rows:
                    notes[i].append(_unreadable(part, exc))
                continue
            for i in rows:
                raws[i], sha = found.get(guids[i], (None, None))
                if raws[i] is None:
                    notes[i].append(f"image missing from {part}")
                elif sha:
                    original_sha[i] = sha
        pixels: list[np.ndarray | None] = [None] * n
        shas: list[str | None] = [None] * n
        for i, raw in enumerate(raws):
            if raw is None:
                continue
            decoded = decode_image(raw, self.spec.max_side, self.spec.max_pixels, self.spec.max_bytes, stored=kinds[i] == IMAGE_DATASET)
            shas[i] = original_sha.get(i, decoded.sha256)
            if decoded.ok:
                # A dataset row is already what training saw; a file or bytes get its storage.
                pixels[i] = decoded.pixels if kinds[i] == IMAGE_DATASET else as_stored(decoded.pixels, self.spec.stored_codec, self.spec.stored_quality)
            else:
                notes[i].append(f"image unusable: {decoded.reason}")
        return pixels, shas


def read_dataset_images(part_url: str, guids: set[str], s3: S3Options | None) -> dict[str, tuple[bytes, str | None]]:
    """guid -> (stored image bytes (the codec's JPEG/PNG), sha256 of the original file or None)
    for the given guids in one part file (reading only the row groups that hold them)."""
    return PartImageReader(s3).read(part_url, guids)


def description_hash(text: str | None) -> str | None:
    """What the score job records of a row's normalised description (and rescore compares): a
    change of case or spacing does not trigger a re-score. None for a text without words."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] if text else None


ScorerFactory = Callable[[ScorerSpec], Scorer]


def score_partition(spec: ScorerSpec, factory: ScorerFactory = Scorer.cached):
    """The mapInPandas function: one Scorer per executor process, batches in, results out."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = factory(spec)
        for batch in batches:
            yield scorer.score_frame(batch)

    return run


# ---------------------------------------------------------------- the job


def partition_ids(tasks: pd.DataFrame, partitions: int, cores: int | None = None) -> np.ndarray:
    """The Spark partition (0 .. partitions-1) of each task row, so that each of ``cores`` (the
    cluster's task slots; default: ``partitions``) gets about its share of the image rows, which
    cost far more than text rows (decoding, 12 backbone passes).

    Rows with an image file and rows without an image round-robin, each kind on its own, so that
    a pattern in the input (an image on every other row) cannot pile the images onto some
    partitions, as round-robin over all rows did. Rows whose image is in a dataset part file are
    cut into groups of one part file each, at most a core's share of the dataset rows per group
    (neighbouring rows of the part file, by ``image_pos`` where the tasks have it), and each
    group, largest first, goes to the partition with the fewest image rows so far. Each task
    reads the part file's guid column and the image row groups that hold its rows: cut in input
    order, every task read nearly every row group of the file; cut by position, about its share
    of them. Cutting finer than the cores would add reads and no speed; a few large part files
    still spread over every core, where one group per part file left all but a few idle."""
    pid = np.empty(len(tasks), np.int64)
    in_dataset = (tasks["image_kind"] == IMAGE_DATASET).to_numpy()
    other_image = tasks["image_kind"].notna().to_numpy() & ~in_dataset
    for kind in (other_image, ~(in_dataset | other_image)):
        pid[kind] = np.arange(int(kind.sum())) % partitions
    if in_dataset.any():
        parts = tasks["image_ref"].to_numpy()[in_dataset].astype(str)
        # Each part file's rows are counted off in file order where known, so that a group holds
        # neighbouring rows; else in input order.
        order = np.argsort(tasks["image_pos"].to_numpy()[in_dataset], kind="stable") if "image_pos" in tasks else np.arange(len(parts))
        rank = np.empty(len(parts), np.int64)
        rank[order] = pd.Series(parts[order]).groupby(parts[order]).cumcount().to_numpy()
        share = -(-int(in_dataset.sum()) // max(1, min(partitions, cores or partitions)))
        group_of_row, groups = pd.factorize(pd.Series(parts) + "#" + pd.Series(rank // share).astype(str))
        sizes = np.bincount(group_of_row, minlength=len(groups))
        # Start from the image files already placed, so that a mix of both stays even.
        load = np.bincount(pid[other_image], minlength=partitions).astype(np.int64)
        partition_of_group = np.empty(len(groups), np.int64)
        for g in np.argsort(-sizes, kind="stable"):
            partition_of_group[g] = int(np.argmin(load))
            load[partition_of_group[g]] += sizes[g]
        pid[in_dataset] = partition_of_group[group_of_row]
    return pid


def partition_keys(spark, partitions: int) -> list[int]:
    """For each partition k, a number that ``repartition(partitions, key)`` sends to partition k.

    Hash partitioning sends a row to pmod(murmur3(key), partitions), the function ``F.hash``
    computes, so the keys are found with one small query. The keys "0".."n-1" used before did
    not do: their hashes collide, leaving partitions empty (8 keys filled 6 of 8 partitions here,
    16 keys 10 of 16) and others doing two or three partitions' work. (repartitionByRange would
    be exact only while its sample is.)"""
    from pyspark.sql import functions as F

    ids = spark.range(64 * partitions).select("id", F.expr(f"pmod(hash(id), {partitions})").alias("k"))
    first = {row["k"]: row["id"] for row in ids.groupBy("k").agg(F.min("id").alias("id")).collect()}
    if len(first) != partitions:  # each of 64n numbers misses a given k with chance (1 - 1/n)
        raise InternalError(f"score: no partition key found for {partitions - len(first)} of {partitions} partitions")
    return [first[k] for k in range(partitions)]


def score_tasks(spark, tasks: pd.DataFrame, spec: ScorerSpec, rows_per_partition: int, factory: ScorerFactory = Scorer.cached, rows_per_job: int = 1_000_000) -> pd.DataFrame:
    """Score planned task rows on Spark; results back in ``row`` order.

    At most ``rows_per_job`` rows a Spark job: a job's results come back to the driver's JVM
    at once, and Spark fails a job whose results pass ``spark.driver.maxResultSize`` (1g by
    default; at about 280 bytes a row, one job for a catalogue of ~3.9M rows failed after
    scoring all of it)."""
    if tasks.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    parts = []
    for start in range(0, len(tasks), rows_per_job):
        if len(tasks) > rows_per_job:
            log.info("score: rows %d-%d of %d (score.rows_per_job = %d)", start + 1, min(start + rows_per_job, len(tasks)), len(tasks), rows_per_job)
        parts.append(_score_job(spark, tasks.iloc[start:start + rows_per_job], spec, rows_per_partition, factory))
    result = pd.concat(parts, ignore_index=True)
    result = result.sort_values("row", kind="stable").reset_index(drop=True)
    if len(result) != len(tasks):  # every input row exactly once, or the job fails loudly
        raise InternalError(f"score: {len(tasks)} rows planned, {len(result)} scored")
    return result


def _score_job(spark, tasks: pd.DataFrame, spec: ScorerSpec, rows_per_partition: int, factory: ScorerFactory) -> pd.DataFrame:
    """One Spark job: ``tasks`` spread over the cores (``partition_ids``), scored, collected."""
    partitions = max(1, min(len(tasks), max(spark.sparkContext.defaultParallelism, -(-len(tasks) // rows_per_partition))))
    keys = np.asarray(partition_keys(spark, partitions), dtype=np.int64)
    ids = partition_ids(tasks, partitions, spark.sparkContext.defaultParallelism)
    position = tasks["image_pos"].to_numpy() if "image_pos" in tasks else np.full(len(tasks), -1)
    frame = spark.createDataFrame(tasks.drop(columns="image_pos", errors="ignore").assign(key=keys[ids], image_pos=position), TASK_SCHEMA + ", key long, image_pos long")
    # Sorted within each partition, by image file or part file, then place in the part file: a
    # cluster's shuffle delivers rows in no fixed order, and which rows share a scoring batch
    # (an Arrow batch; each reads the part files' row groups its rows are in, then lets them go)
    # should neither change from run to run nor scatter a part file's rows over every batch.
    ordered = frame.repartition(partitions, "key").sortWithinPartitions("image_ref", "image_pos", "row")
    scored = ordered.drop("key", "image_pos").mapInPandas(score_partition(spec, factory), RESULT_SCHEMA)
    return scored.toPandas()



def to_csv(result: pd.DataFrame) -> bytes:
    table = result.loc[:, list(OUTPUT_COLUMNS)]
    # A guid with a control character (its row's note says so) goes in escaped: a raw NUL cut
    # the guid short for pandas reading the predictions. Parquet keeps it as it was read.
    table = table.assign(guid=table["guid"].map(lambda g: escape_control_characters(g) if isinstance(g, str) else g))
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def to_parquet(result: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(result.loc[:, [*OUTPUT_COLUMNS, *DETAIL_COLUMNS]], schema=OUTPUT_SCHEMA, preserve_index=False), buffer)
    return buffer.getvalue()


def write_output(url: str, result: pd.DataFrame, s3: S3Options | None) -> None:
    """CSV or Parquet by the extension, written atomically."""
    data = to_parquet(result) if url.lower().endswith(PARQUET_EXTENSIONS) else to_csv(result)
    storage.write_bytes(url, data, s3)


def run(
    spark,
    settings: Settings,
    input_url: str,
    output_url: str,
    spec: ScorerSpec,
    images_dir: str | None = None,
    image_dataset: str | None = None,
    factory: ScorerFactory = Scorer.cached,
) -> dict[str, Any]:
    """Score ``input_url`` into ``output_url`` (CSV or Parquet by extension): one row per input row."""
    s3 = S3Options.from_settings(settings.section("s3"))
    check_output(input_url, output_url, s3)
    rows = read_rows(input_url, s3)
    image_files = find_image_files(images_dir, s3, known_guids(rows)) if images_dir else {}
    dataset_images = find_dataset_images(image_dataset, s3) if image_dataset else {}
    tasks = plan_tasks(rows, image_files, dataset_images, spec.text_normalization)
    log.info("score: %d rows (%d with words, %d with an image) with %s", len(tasks), int((tasks["text"] != "").sum()), int(tasks["image_kind"].notna().sum()), spec.model_version)
    result = score_tasks(spark, tasks, spec, int(settings.get("score.rows_per_partition")), factory, int(settings.get("score.rows_per_job")))
    write_output(output_url, result, s3)
    sources = dict(Counter(result["source"]))
    log.info("score: %d rows -> %s (%s)", len(result), output_url, sources)
    return {"rows": len(result), "sources": sources, "output": output_url, "model_version": spec.model_version, "result": result}
