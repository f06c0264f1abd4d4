"""The image backbone as TensorFlow Lite, for its forward passes on CPUs (scoring, fold features).

The same network and weights as the Keras backbone, converted to a float32 TensorFlow Lite
flatbuffer (once when a bundle is written; by each fold-job process for its frozen features) and
run by TF Lite's interpreter with its XNNPACK CPU kernels. On the 2-core machine that is about 2x
the images/s of the compiled Keras graph, with features equal within float rounding
(``benchmarks/image_runtime.py`` measures both side by side). No new dependency: the converter
and the interpreter ship inside ``tensorflow``.

The interpreter only runs on CPUs: runtime "auto" (``score.image_runtime``,
``image.feature_runtime``) picks the Keras graph where TensorFlow sees a GPU.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from . import backbone as backbone_lib

FILE_NAME = "backbone.tflite"
RUNTIMES = ("auto", "tflite", "keras")


def resolve_runtime(runtime: str, has_gpu: bool | None = None) -> str:
    """"tflite" or "keras" for ``runtime`` ("auto": the Keras graph when a GPU is visible to
    TensorFlow, else TF Lite). ``has_gpu`` None = ask TensorFlow."""
    if runtime not in RUNTIMES:
        raise ValueError(f"backbone runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime != "auto":
        return runtime
    if has_gpu is None:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    return "keras" if has_gpu else "tflite"


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow;
    os.cpu_count() counts the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def convert(model, image_size: int) -> bytes:
    """``model`` (a Keras backbone: N x size x size x 3 pixels -> N x FEATURES) as a TF Lite
    flatbuffer with a free batch dimension. Plain float32, no quantisation, so the features are
    the Keras ones up to float rounding. About 5 s on 2 cores."""
    import tensorflow as tf

    signature = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature)
    # The converter saves the function with the object that owns its variables. Handing it the
    # Keras model makes it trace every layer's functions for that save (25-55 s here); a bare
    # module that holds just the variables gives the same flatbuffer in a fifth of the time.
    owner = tf.Module()
    owner.backbone_variables = list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], owner).convert()


def task_threads() -> int:
    """CPU threads for one scorer: inside an executor task, the task's ``spark.task.cpus`` (the
    executor runs its other tasks on the other cores, and interpreter threads beyond the task's
    share would only fight them); outside Spark, every core this process may use."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        return max(1, int(context.cpus()))
    return machine_cores()


class TfliteBackbone:
    """Views (N x size x size x 3 float pixels 0..255) -> N x FEATURES, on TF Lite's CPU kernels.
    Calls are serialised: an interpreter holds one set of tensors."""

    def __init__(self, flatbuffer: bytes, threads: int):
        import tensorflow as tf

        self._interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0
        self._lock = threading.Lock()
        self.threads = threads

    def __call__(self, views) -> np.ndarray:
        views = np.ascontiguousarray(views, dtype=np.float32)
        n = len(views)
        if n == 0:
            return np.zeros((0, backbone_lib.FEATURES), np.float32)
        with self._lock:
            if n != self._batch:
                # Batches keep one size but the last; re-planning the tensors is cheap next to a batch.
                self._interpreter.resize_tensor_input(self._input, list(views.shape))
                self._interpreter.allocate_tensors()
                self._batch = n
            self._interpreter.set_tensor(self._input, views)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output)  # a copy already
