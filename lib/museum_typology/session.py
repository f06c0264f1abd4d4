"""The one SparkSession builder: master, app name, Arrow, and the executors' Python."""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


# Settings that spark-submit fixes before the Python driver starts: setting them again here would
# override spark-submit's value (the master) or be silently ignored (the driver JVM's memory).
_FIXED_UNDER_SUBMIT = frozenset({"spark.master", "spark.submit.deployMode", "spark.driver.memory", "spark.driver.extraJavaOptions", "spark.driver.extraClassPath"})


# The master URLs Spark takes (any other fails in the JVM, behind a Py4J traceback): Spark
# 3.5's own patterns (SparkMasterRegex), less local[0], which it refuses once started.
_MASTER = re.compile(r"local(\[(\*|0*[1-9]\d*)(\s*,\s*\d+)?\])?|local-cluster\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]|yarn|(spark|k8s|mesos)://\S+")


def check_master(master: str, where: str = "spark.master") -> None:
    """Refuse a master URL Spark would refuse, before Spark starts, in one line."""
    if not _MASTER.fullmatch(str(master).strip()):
        raise ConfigError(f"{where} = {master!r}: not a Spark master; use local, local[N], local[*], spark://HOST:PORT, yarn, k8s://URL or mesos://URL")


def build_spark(settings: Settings, app_suffix: str = "", master: str | None = None) -> SparkSession:
    """Get (or create) the SparkSession for a job.

    Under ``spark-submit`` the master comes from spark-submit and is not overridden here. Executors
    must run this environment's Python, or they cannot import horovod, petastorm or this package.
    """
    # Under spark-submit the driver and executors are told PYSPARK_PYTHON by spark-submit.sh.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    app_name = settings.get("spark.app_name") + (f"-{app_suffix}" if app_suffix else "")
    builder = SparkSession.builder.appName(app_name)
    submitted = _submitted_conf()
    under_submit = "spark.master" in submitted
    if master or not under_submit:
        check_master(master or settings.get("spark.master"), "--master" if master else "spark.master")
        builder = builder.master((master or settings.get("spark.master")).strip())
    from .config import packaged_defaults

    submitted = submitted if under_submit else {}
    packaged = packaged_defaults().get("spark", {}).get("conf", {})
    for key, value in spark_conf_to_set(settings.section("spark.conf"), packaged, submitted).items():
        builder = builder.config(key, value)
    builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MUSEUM_SPARK_LOG_LEVEL", "WARN").strip().upper())
    return spark


def spark_conf_to_set(conf: dict[str, object], packaged: dict[str, object], submitted: dict[str, str]) -> dict[str, str]:
    """The ``[spark.conf]`` entries this process sets. Pure. Under spark-submit (``submitted``:
    its settings), those it fixed before this code ran (``--master``, ``--driver-memory``, ...)
    are never set again, and a key it was given (``--conf key=value``, spark-defaults.conf) keeps
    spark-submit's value over this package's default; a value from ``--conf FILE`` or ``--set``
    (one that differs from the packaged default) still wins."""
    chosen = {}
    for key, value in conf.items():
        if submitted and key in _FIXED_UNDER_SUBMIT:
            continue
        if key in submitted and key in packaged and packaged[key] == value:
            continue
        chosen[key] = str(value)
    return chosen


def _submitted_conf() -> dict[str, str]:
    """Settings given by spark-submit, or {} when not running under spark-submit.

    spark-submit starts the Python driver with ``PYSPARK_GATEWAY_PORT`` set and keeps its settings
    (``--master``, ``--conf``, spark-defaults.conf) as system properties of its JVM. A ``SparkConf``
    made before pyspark has attached to that JVM is an empty Python-side dict, so attach first.
    """
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


@contextlib.contextmanager
def executor_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise on the driver, as itself, an error of one of ``kinds`` that an executor raised.
    Spark wraps it in a Py4JJavaError whose text holds the executor's Python traceback, which the
    CLI does not know for a user's error: the user got a Java stack trace instead of one line
    saying what to fix (e.g. an executor that decodes images otherwise than the driver). Only the
    error that ended the executor's last traceback counts: a bug raised while handling one of
    ``kinds`` stays the bug, with its traceback."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, kinds):
            raised = last_python_error(str(exc))
            for kind in kinds:
                marker = f"{kind.__module__}.{kind.__qualname__}: "
                if raised and raised.startswith(marker):
                    raise kind(raised[len(marker):]) from None
        raise


def last_python_error(text: str) -> str | None:
    """The ``module.Error: message`` that ends the last Python traceback in ``text`` (a Spark
    error's text), its message lines up to the Java frames that follow; None without one."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith("Traceback (most recent call last):")]
    if not starts:
        return None
    i = starts[-1] + 1
    while i < len(lines) and lines[i].startswith(" "):  # the frames: "  File ...", "    code"
        i += 1
    message: list[str] = []
    for line in lines[i:]:
        if line.startswith("\tat ") or line.startswith("Caused by:"):
            break
        message.append(line)
    return "\n".join(message).strip() or None
