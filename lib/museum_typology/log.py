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


def setup_logging(level: str | None = None) -> None:
    """Log lines with time, level and module to stderr; ``MUSEUM_LOG_LEVEL`` changes the level."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    logging.basicConfig(
        level=(level or os.environ.get("MUSEUM_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # petastorm 0.13 calls pyarrow's legacy dataset API (pinned on purpose, see README): its
    # FutureWarnings say nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(petastorm|pyarrow|museum_typology)\.")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(legacy|deprecated as of).*")
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
