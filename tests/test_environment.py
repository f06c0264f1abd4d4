"""The pinned stack really works together: every package imports at its locked version, and
horovod.spark.run starts 2 local processes that do a real allreduce over Gloo."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "pyspark": "pyspark",
    "petastorm": "petastorm",
    "horovod": "horovod",
    "tensorflow": "tensorflow",
    "gensim": "gensim",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "PIL": "pillow",
    "boto3": "boto3",
    "pyarrow": "pyarrow",
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "natasha": "natasha",
    "pymorphy3": "pymorphy3",
}


def _locked_versions() -> dict[str, str]:
    pins = {}
    for path in (ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "horovod.txt"):
        for line in path.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
            if match:
                pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_package_imports_at_locked_version(module):
    from importlib.metadata import version

    importlib.import_module(module)
    distribution = PACKAGES[module]
    assert version(distribution) == _locked_versions()[distribution], f"{distribution} differs from the lock"


def test_horovod_built_with_tensorflow_and_gloo_without_mpi():
    from horovod.common.util import gloo_built, mpi_built
    import horovod.tensorflow as hvd

    assert gloo_built()
    assert not mpi_built()
    assert hvd.size  # the TensorFlow ops library loaded


def _allreduce(values):
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    rank = hvd.rank()
    total = hvd.allreduce(tf.constant(values[rank], dtype=tf.float32), op=hvd.Sum)
    return rank, hvd.size(), total.numpy().tolist()


def test_horovod_spark_run_allreduce_with_two_processes(spark):
    import sys

    import cloudpickle
    import horovod.spark

    # The worker processes cannot import this test module: ship _allreduce by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    results = horovod.spark.run(_allreduce, args=([[1.0, 2.0], [10.0, 20.0]],), num_proc=2, use_gloo=True, verbose=0, start_timeout=120)
    assert sorted(r[0] for r in results) == [0, 1]
    for rank, size, total in results:
        assert size == 2
        assert total == [11.0, 22.0]
