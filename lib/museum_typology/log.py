"""One logger setup and one place for progress display."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_CONFIGURED = False
PY4J_RETRY_MESSAGE = "Exception while sending command."
PY4J_INTERRUPTED_MESSAGE = "KeyboardInterrupt while sending command."


class _Py4jRetryFilter(logging.Filter):
    """py4j logs a command it is about to send again on a fresh connection (the JVM closed the
    pooled one: Horovod's Spark thread ends, say) at INFO on the root logger, with the traceback
    of the closed socket. The retry goes through; a failed one is logged at ERROR and kept. It
    also logs a Ctrl-C or SIGTERM that lands while it waits on the JVM as an ERROR with its
    traceback: the CLI says the job was interrupted, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        # record.msg, not getMessage(): formatting here would raise a library's bad log call
        # (logging.warning("%d", "x")) in its caller instead of logging's "--- Logging error ---".
        if record.name != "root" or record.args:
            return True
        return not ((record.levelno == logging.INFO and record.msg == PY4J_RETRY_MESSAGE) or record.msg == PY4J_INTERRUPTED_MESSAGE)


def quiet_library_warnings() -> None:
    """petastorm 0.13 calls pyarrow's legacy dataset API (pinned on purpose, see README): its
    FutureWarnings say nothing a user can act on. Per process: the driver, and each Horovod rank."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(petastorm|pyarrow|museum_typology)\.")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(legacy|deprecated as of).*")


# The levels the two variables may name (either case): Python's logging, and Spark's log4j.
LOG_LEVEL_VARIABLES = {
    "MUSEUM_LOG_LEVEL": tuple(logging.getLevelNamesMapping()),  # FATAL, WARN and NOTSET too
    "MUSEUM_SPARK_LOG_LEVEL": ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"),
}


def log_level_problem(environ: dict[str, str] | os._Environ) -> str | None:
    """What is wrong with the log-level variables of ``environ``, or None: a mistyped level was
    a traceback from logging before any job ran, or from Spark only after it had started."""
    for name, levels in LOG_LEVEL_VARIABLES.items():
        value = environ.get(name)
        if value is not None and value.strip().upper() not in levels:
            return f"${name}={value!r}: not a log level (one of {', '.join(levels)})"
    return None


def setup_logging(level: str | None = None) -> None:
    """Log lines with time, level and module to stderr; ``MUSEUM_LOG_LEVEL`` changes the level."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    logging.basicConfig(
        level=(level or os.environ.get("MUSEUM_LOG_LEVEL", "INFO")).strip().upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Py4jRetryFilter())
    quiet_library_warnings()
    # TensorFlow's C++ INFO lines (oneDNN, CPU features, each SavedModel read in the TF Lite
    # conversion) fill a run's log; its warnings and errors stay. Set before TensorFlow is
    # imported, and inherited by the Spark workers and Horovod ranks this process starts.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # py4j logs every gateway call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # gensim logs every epoch and lifecycle event at INFO.
    logging.getLogger("gensim").setLevel(logging.WARNING)
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A progress bar on a terminal, periodic log-friendly lines elsewhere (spark-submit logs)."""
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            unit=unit,
            disable=os.environ.get("MUSEUM_NO_PROGRESS") == "1",
            mininterval=0.5 if interactive else 10.0,
            dynamic_ncols=interactive,
            file=sys.stderr,
        )
    )
