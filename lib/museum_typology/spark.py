"""The models for PySpark users: ``TypologyClassifier``, a ``pyspark.ml`` Transformer.

    from museum_typology.spark import TypologyClassifier

    clf = TypologyClassifier(modelPath="s3://bucket/museum/models", descriptionCol="title")
    scored = clf.transform(items)  # items' columns + typology, typology_confidence, typology_source

It adds the cascade's prediction, confidence and source to any DataFrame, keeping every input
row and column. Text comes from ``descriptionCol``; an image, optionally, from ``imageCol``
(binary: the file's bytes, e.g. ``spark.read.format("binaryFile")``'s ``content``) or
``imagePathCol`` (a local or s3:// path per row). Models are resolved once on the driver (the
bundles ``latest`` names under ``modelPath``) and loaded once per executor process, as in the score job.
It saves and loads with a Pipeline like any other stage (``DefaultParamsWritable``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence

import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql.types import BinaryType, DoubleType, StringType, StructField, StructType

from . import bundles, score, storage
from .config import load_settings
from .text import NORMALIZATION_VERSION, normalize


class TypologyClassifier(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Adds ``predictionCol`` (one of the 15 typologies), ``confidenceCol`` and ``sourceCol``
    (text / image / blend / default) to a DataFrame. See the module docstring."""

    modelPath = Param(Params._dummy(), "modelPath", "models root (text/, image/, cascade/ below it) or one bundle; local or s3://; empty string = WORK_DIR/models of the settings (confPath, $MUSEUM_WORK_DIR), as the score job", TypeConverters.toString)
    confPath = Param(Params._dummy(), "confPath", "settings file (TOML) over conf/default.toml, e.g. for S3 endpoints; empty = defaults", TypeConverters.toString)
    guidCol = Param(Params._dummy(), "guidCol", "no effect (every row keeps its own columns, the identifier among them); kept so that Transformers saved with it load", TypeConverters.toString)
    descriptionCol = Param(Params._dummy(), "descriptionCol", "description column; empty string = no text", TypeConverters.toString)
    imageCol = Param(Params._dummy(), "imageCol", "binary column with image file bytes; empty string = none", TypeConverters.toString)
    imagePathCol = Param(Params._dummy(), "imagePathCol", "column with an image path per row; empty string = none", TypeConverters.toString)
    predictionCol = Param(Params._dummy(), "predictionCol", "output: the typology", TypeConverters.toString)
    confidenceCol = Param(Params._dummy(), "confidenceCol", "output: its confidence", TypeConverters.toString)
    sourceCol = Param(Params._dummy(), "sourceCol", "output: text / image / blend / default", TypeConverters.toString)
    noteCol = Param(Params._dummy(), "noteCol", "output: why a row fell back or what was wrong with its input (e.g. an unreadable image); empty string = no such column", TypeConverters.toString)

    @keyword_only
    def __init__(self, *, modelPath: str = "", confPath: str = "", guidCol: str = "guid", descriptionCol: str = "description",
                 imageCol: str = "", imagePathCol: str = "", predictionCol: str = "typology", confidenceCol: str = "typology_confidence",
                 sourceCol: str = "typology_source", noteCol: str = ""):
        super().__init__()
        self._setDefault(modelPath="", confPath="", guidCol="guid", descriptionCol="description", imageCol="", imagePathCol="",
                         predictionCol="typology", confidenceCol="typology_confidence", sourceCol="typology_source", noteCol="")
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs) -> TypologyClassifier:
        return self._set(**kwargs)

    def _spec(self) -> score.ScorerSpec:
        settings = load_settings(conf_file=self.getOrDefault(self.confPath) or None)
        # Where the score job looks by default; it was var/models whatever the settings said.
        models = self.getOrDefault(self.modelPath) or bundles.models_dir(settings.get("paths.work_dir"))
        # Absolute here, on the driver: executors resolve relative paths in their own directory.
        return score.resolve_models(settings, storage.absolute(models))

    def _transform(self, dataset: DataFrame) -> DataFrame:
        get = self.getOrDefault
        # guidCol is not read: a join on guid leaves two guid columns, which must not matter.
        columns = {name: get(getattr(self, name)) for name in ("descriptionCol", "imageCol", "imagePathCol")}
        outputs = (get(self.predictionCol), get(self.confidenceCol), get(self.sourceCol)) + ((get(self.noteCol),) if get(self.noteCol) else ())
        case_sensitive = dataset.sparkSession.conf.get("spark.sql.caseSensitive", "false") == "true"
        check_passed_through(schema_json(dataset))  # first: pyspark cannot read a calendar interval's schema
        columns = check_columns(dataset.schema, columns, outputs, case_sensitive)
        # The columns by position while mapped: Spark 3.5 cannot resolve a mapped column whose
        # name holds a dot ("Инв. №"), an input or not. Their names come back afterwards.
        names = dataset.columns
        positional = [f"_c{i}" for i in range(len(names))]
        columns = {param: positional[names.index(column)] if column in names else "" for param, column in columns.items()}
        renamed = dataset.toDF(*positional)
        kinds = (StringType(), DoubleType(), StringType(), StringType())
        schema = StructType([*renamed.schema.fields, *(StructField(f"_out{i}", kind) for i, kind in enumerate(kinds[: len(outputs)]))])
        return renamed.mapInArrow(_transform_batches(self._spec(), columns, len(outputs)), schema).toDF(*names, *outputs)


def _accessors(name: str):
    """``getX``/``setX`` for the Param ``x``, as every pyspark.ml stage has them."""
    title = name[0].upper() + name[1:]

    def getter(self: TypologyClassifier) -> str:
        return self.getOrDefault(getattr(self, name))

    def setter(self: TypologyClassifier, value: str) -> TypologyClassifier:
        return self._set(**{name: value})

    getter.__name__, setter.__name__ = f"get{title}", f"set{title}"
    getter.__doc__ = f"The value of {name} (its default unless set)."
    setter.__doc__ = f"Sets {name}; returns this Transformer."
    return getter, setter


for _param in [name for name, value in vars(TypologyClassifier).items() if isinstance(value, Param)]:
    for _method in _accessors(_param):
        setattr(TypologyClassifier, _method.__name__, _method)


# The type each input column must have (a wrong one gave every row the default class, or failed
# in the executors with a long trace).
INPUT_TYPES = {"descriptionCol": StringType(), "imageCol": BinaryType(), "imagePathCol": StringType()}


def check_columns(schema: StructType, columns: dict[str, str], outputs: Sequence[str], case_sensitive: bool = False) -> dict[str, str]:
    """The inputs exist with usable types and the outputs are new, distinct names (compared as
    Spark compares them: without case unless spark.sql.caseSensitive). Pure; ValueError naming the
    param otherwise. Returns ``columns`` spelled as in the schema, as the batches name them."""
    fold = (lambda name: name) if case_sensitive else str.lower
    types = {fold(f.name): f.dataType for f in schema.fields}
    spelled = {fold(f.name): f.name for f in schema.fields}
    for name, column in columns.items():
        if name == "guidCol":  # no effect: neither read nor checked
            continue
        matching = [f.name for f in schema.fields if column and fold(f.name) == fold(column)]
        if len(matching) > 1:  # which one is read would be a guess (Spark itself calls it ambiguous)
            raise ValueError(f"TypologyClassifier: {name}={column!r} matches {len(matching)} columns ({', '.join(matching)}); rename or drop one")
        if column and fold(column) not in types:
            raise ValueError(f"TypologyClassifier: {name}={column!r} is not a column of the DataFrame (columns: {', '.join(schema.names)})")
        wanted = INPUT_TYPES.get(name)
        if column and wanted is not None and types[fold(column)] != wanted:
            raise ValueError(f"TypologyClassifier: {name}={column!r} is {types[fold(column)].simpleString()}, expected {wanted.simpleString()}" + (" (the image file's bytes; for paths use imagePathCol)" if name == "imageCol" else ""))
    if not all(outputs):
        raise ValueError("TypologyClassifier: predictionCol, confidenceCol and sourceCol need a name")
    if len({fold(c) for c in outputs}) != len(outputs):
        raise ValueError(f"TypologyClassifier: the output columns must have different names, got {', '.join(outputs)} (predictionCol, confidenceCol, sourceCol, noteCol)")
    clash = [c for c in outputs if fold(c) in types]
    if clash:
        raise ValueError(f"TypologyClassifier: output column(s) {', '.join(clash)} already exist; set predictionCol/confidenceCol/sourceCol/noteCol")
    return {param: spelled.get(fold(column), column) if column else column for param, column in columns.items()}


# Simple types mapInArrow cannot carry, as Spark's schema JSON names them: the calendar interval
# and the year-month intervals; not the day-time ones ("interval day to second", "interval
# hour"), which Arrow carries as durations.
_UNCARRIED_TYPE = re.compile(r"interval(?:\s+(?:year|month)\b.*)?")


def schema_json(dataset: DataFrame) -> dict:
    """The DataFrame's schema as Spark's JSON, read from the JVM where there is one: pyspark
    cannot parse a calendar interval's type, so ``dataset.schema`` itself failed on one."""
    jdf = getattr(dataset, "_jdf", None)
    return json.loads(jdf.schema().json()) if jdf is not None else dataset.schema.jsonValue()


def check_passed_through(schema: dict) -> None:
    """Every column goes through ``mapInArrow``, which cannot carry Spark's year-month and
    calendar intervals, at any depth (it failed in the executors, naming positional stand-ins
    and mapInArrow in a long trace): a ValueError naming the user's column instead.
    ``schema``: ``schema_json``'s. Pure."""
    def uncarried(kind) -> bool:
        if isinstance(kind, str):
            return bool(_UNCARRIED_TYPE.fullmatch(kind))
        if kind.get("type") == "struct":
            return any(uncarried(field["type"]) for field in kind["fields"])
        if kind.get("type") == "array":
            return uncarried(kind["elementType"])
        if kind.get("type") == "map":
            return uncarried(kind["keyType"]) or uncarried(kind["valueType"])
        return False  # a user-defined type: Arrow carries its storage type

    bad = [field["name"] for field in schema["fields"] if uncarried(field["type"])]
    if bad:
        raise ValueError(f"TypologyClassifier: column(s) {', '.join(bad)} hold a year-month or calendar interval, which Spark cannot hand to Python through Arrow; cast them (e.g. to string) or drop them before transform and join them back by your key")


def _transform_batches(spec: score.ScorerSpec, columns: dict[str, str], outputs: int):
    """The function ``mapInArrow`` runs: the input columns the model reads go to pandas; every
    column goes back as the Arrow batch it came in. A round trip of the whole row through pandas
    (``mapInPandas``) turned a nullable bigint into float64 (9007199254740995 came back ...996),
    failed on timestamps outside 1677-2262 (a 9999-12-31 sentinel) and moved ones in a
    daylight-saving fall-back hour."""
    import pyarrow as pa

    fields = (("typology", pa.string()), ("confidence", pa.float64()), ("source", pa.string()), ("note", pa.string()))[:outputs]
    read = sorted({column for column in columns.values() if column})

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        scorer = score.Scorer.cached(spec)
        for batch in batches:
            frame = pa.Table.from_batches([batch]).select(read).to_pandas()
            result = scorer.score_frame(tasks_of(frame, columns, spec.text_normalization))
            added = [pa.array(result[field].to_numpy(), type=kind, from_pandas=True) for field, kind in fields]
            yield pa.RecordBatch.from_arrays([*batch.columns, *added], names=[*batch.schema.names, *(f"_out{i}" for i in range(outputs))])

    return run


def tasks_of(batch: pd.DataFrame, columns: dict[str, str], normalization: int = NORMALIZATION_VERSION) -> pd.DataFrame:
    """A DataFrame batch -> the score job's task rows (TASK_SCHEMA, plus image bytes). Pure."""
    n = len(batch)
    guid_column = columns.get("guidCol", "")  # the Transformer reads none: guids only find dataset images, which it is never given
    guid = batch[guid_column].astype("string").fillna("") if guid_column in batch else pd.Series([""] * n)
    description = batch[columns["descriptionCol"]] if columns["descriptionCol"] else pd.Series([None] * n)
    texts = [normalize(d if isinstance(d, str) else None, normalization) for d in description]
    kinds: list[str | None] = [None] * n
    refs: list[str | None] = [None] * n
    raw: list[bytes | None] = [None] * n
    if columns["imageCol"]:
        for i, value in enumerate(batch[columns["imageCol"]]):
            if value is not None:
                kinds[i], raw[i] = score.IMAGE_BYTES, bytes(value)
    if columns["imagePathCol"]:
        for i, value in enumerate(batch[columns["imagePathCol"]]):
            if kinds[i] is None and isinstance(value, str) and value:
                kinds[i], refs[i] = score.IMAGE_FILE, value
    notes = ["" if t else "description has no words" if isinstance(d, str) and d.strip() else "no description" for d, t in zip(description, texts)]
    return pd.DataFrame({"row": range(n), "guid": guid.to_numpy(), "text": texts, "image_kind": kinds, "image_ref": refs, "note": notes, "image_bytes": raw})
