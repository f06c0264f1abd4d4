"""The EfficientNet-Lite0 weight loader: the Keras model with the ImageNet weights read from the
packaged PyTorch checkpoint (without torch) reproduces features computed once with the reference
PyTorch implementation (tests/fixtures/make_backbone_reference.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from museum_typology import backbone

FIXTURE = Path(__file__).parent / "fixtures" / "backbone_reference.npz"


def _expand(small: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def model():
    return backbone.imagenet_backbone("efficientnet-lite0", include_top=True)


def test_reader_reads_the_packaged_checkpoint():
    state = backbone.read_torch_state_dict(backbone.weights_path("efficientnet-lite0"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024  # torch.load(...) counts the same (checked once)


def test_keras_model_reproduces_reference_features_and_logits(model, reference):
    import tensorflow as tf

    features_model = tf.keras.Model(model.input, model.get_layer("avg_pool").output)
    image = _expand(reference["small224"]).astype(np.float32)[None]
    features = features_model(image, training=False).numpy()[0]
    logits = model(image, training=False).numpy()[0]
    np.testing.assert_allclose(features, reference["features224"], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(logits, reference["logits224"], rtol=1e-4, atol=5e-4)
    assert np.argmax(logits) == np.argmax(reference["logits224"])

    small = _expand(reference["small96"]).astype(np.float32)[None]
    np.testing.assert_allclose(features_model(small, training=False).numpy()[0], reference["features96"], rtol=1e-4, atol=2e-4)


def test_zip_format_reader():
    """torch >= 1.6 saves a zip (data.pkl + data/<key>); the fixture script saved a tiny one with
    a non-contiguous (transposed) tensor, an int64 scalar and a float16 tensor."""
    state = backbone.read_torch_state_dict(FIXTURE.with_name("tiny_state_dict_zip.pt"))
    np.testing.assert_array_equal(state["transposed"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert state["count"] == 7 and state["count"].dtype == np.int64
    np.testing.assert_array_equal(state["half"], np.array([0.5, -2.0], dtype=np.float16))
