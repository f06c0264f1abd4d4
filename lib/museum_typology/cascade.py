"""The cascade: text and image probabilities in, (typology, confidence, source) out. Pure.

The decision of the 2021 baseline, with its thresholds and blend weight made settings and tuned on
out-of-fold predictions:
- text, when the row has words and the text model's calibrated top probability is >= ``t_text``;
- else image, when the row has a usable image and the image model's top probability is >= ``t_image``;
- else, when both exist, a blend ``w_text * text + (1 - w_text) * image``;
- one modality only -> that one, whatever its confidence;
- neither -> ``default_class`` with confidence 0, source ``default``.

Tuning: the shared data has almost no item with both a description and an image (20 of 3,961), so
the thresholds cannot be fitted on real pairs alone. ``paired_oof`` builds virtual items by pairing
each image out-of-fold row with text out-of-fold rows of the same given label: this assumes the two
modalities are independent given the class (true enough for a title and a photo of an object), and
real pairs are reported beside it.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import numpy as np

from .config import ConfigError
from .report import macro_f1
from .schema import CLASSES

SOURCE_TEXT, SOURCE_IMAGE, SOURCE_BLEND, SOURCE_DEFAULT = "text", "image", "blend", "default"
SOURCES = (SOURCE_TEXT, SOURCE_IMAGE, SOURCE_BLEND, SOURCE_DEFAULT)
NUM_CLASSES = len(CLASSES)


def _is_number(value: object) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class CascadeParams:
    t_text: float = 0.7
    t_image: float = 0.7
    w_text: float = 0.5
    default_class: str = CLASSES[-1]

    def __post_init__(self) -> None:
        if self.default_class not in CLASSES:
            raise ConfigError(f"cascade default_class {self.default_class!r} is not one of the 15 classes")
        if not (_is_number(self.w_text) and 0.0 <= self.w_text <= 1.0):
            raise ConfigError(f"cascade w_text must be a number in [0, 1], got {self.w_text!r}")
        for name in ("t_text", "t_image"):  # above 1: never trusted; NaN would silently be the same
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value < math.inf):
                raise ConfigError(f"cascade {name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], tuned: bool = False) -> CascadeParams:
        """From settings or a tuned bundle's ``params``. ``tuned``: the three tuned values must
        all be there (a damaged cascade.json scored with the defaults under the bundle's name)."""
        missing = [k for k in ("t_text", "t_image", "w_text") if k not in values]
        if tuned and missing:
            raise KeyError(f"no {', '.join(missing)}")
        return cls(**{k: values[k] for k in ("t_text", "t_image", "w_text", "default_class") if k in values})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """Per row: the class index, its confidence and the source that decided (arrays of length n)."""

    label: np.ndarray
    confidence: np.ndarray
    source: np.ndarray

    def typologies(self) -> list[str]:
        return [CLASSES[i] for i in self.label]


class Routing:
    """What the cascade's decision needs of each row, computed once: which modalities are usable,
    their top probabilities and classes. ``tune`` decides the same rows for every point of a grid
    from one Routing (at 180K images' pairs each ``decide`` from scratch took 3.5 s a point)."""

    def __init__(self, text: np.ndarray, image: np.ndarray, has_text: np.ndarray, has_image: np.ndarray):
        # A row whose probabilities are not all finite counts as missing that modality: NaN would
        # otherwise compare false against every threshold and decide class 0 with NaN confidence.
        self.text, self.image = text, image
        self.has_text = np.asarray(has_text, bool) & np.isfinite(text).all(axis=1)
        self.has_image = np.asarray(has_image, bool) & np.isfinite(image).all(axis=1)
        self.text_top, self.image_top = text.max(axis=1), image.max(axis=1)
        self.text_label, self.image_label = text.argmax(axis=1), image.argmax(axis=1)
        self._blend_labels: dict[float, np.ndarray] = {}  # only the classes: a blend is n x 15 floats

    def blend(self, w_text: float) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):  # rows with a non-finite value are never blended
            return w_text * self.text + (1.0 - w_text) * self.image

    def blend_label(self, w_text: float) -> np.ndarray:
        if w_text not in self._blend_labels:
            self._blend_labels[w_text] = self.blend(w_text).argmax(axis=1)
        return self._blend_labels[w_text]

    def routes(self, params: CascadeParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(use_text, use_image, use_blend) masks; rows in none of them take the default class."""
        use_text = self.has_text & (~self.has_image | (self.text_top >= params.t_text))
        use_image = ~use_text & self.has_image & (~self.has_text | (self.image_top >= params.t_image))
        use_blend = self.has_text & self.has_image & ~use_text & ~use_image
        return use_text, use_image, use_blend

    def labels(self, params: CascadeParams) -> np.ndarray:
        """``decide(...).label`` without the confidences and sources."""
        use_text, use_image, use_blend = self.routes(params)
        blend_label = self.blend_label(params.w_text) if use_blend.any() else 0
        default = CLASSES.index(params.default_class)
        return np.where(use_text, self.text_label, np.where(use_image, self.image_label, np.where(use_blend, blend_label, default))).astype(np.int64)


def decide(text: np.ndarray, image: np.ndarray, has_text: np.ndarray, has_image: np.ndarray, params: CascadeParams) -> Decision:
    """Vectorised cascade. ``text``/``image`` are [n, 15] probabilities; their rows are ignored
    where ``has_text``/``has_image`` is false (so callers may fill them with anything), and where
    they are not all finite."""
    routing = Routing(text, image, has_text, has_image)
    n = len(routing.has_text)
    label = np.full(n, CLASSES.index(params.default_class), dtype=np.int64)
    confidence = np.zeros(n, dtype=np.float64)
    source = np.full(n, SOURCE_DEFAULT, dtype=object)
    use_text, use_image, use_blend = routing.routes(params)
    for mask, classes, top, name in ((use_text, routing.text_label, routing.text_top, SOURCE_TEXT), (use_image, routing.image_label, routing.image_top, SOURCE_IMAGE)):
        label[mask], confidence[mask], source[mask] = classes[mask], top[mask], name
    if use_blend.any():
        blended = routing.blend(params.w_text)[use_blend]
        label[use_blend], confidence[use_blend], source[use_blend] = blended.argmax(axis=1), blended.max(axis=1), SOURCE_BLEND
    return Decision(label, confidence, source)


def paired_oof(text: np.ndarray, text_y: np.ndarray, image: np.ndarray, image_y: np.ndarray, per_image: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Virtual items with both modalities: each image row is paired with ``per_image`` text rows of
    the same label (drawn with replacement, seeded). Labels without text rows are skipped.
    Returns (text_proba, image_proba, y, image_row) where image_row says which image row each
    pair came from (cross-fitting must keep an image's pairs together)."""
    rng = np.random.default_rng(seed)
    by_label = {c: np.flatnonzero(text_y == c) for c in np.unique(text_y)}
    t_rows, i_rows = [], []
    for i, c in enumerate(image_y):
        pool = by_label.get(c)
        if pool is None or len(pool) == 0:
            continue
        t_rows.extend(rng.choice(pool, size=per_image, replace=True))
        i_rows.extend([i] * per_image)
    t_rows, i_rows = np.asarray(t_rows, dtype=np.int64), np.asarray(i_rows, dtype=np.int64)
    return text[t_rows], image[i_rows], image_y[i_rows], i_rows


def tune(text: np.ndarray, image: np.ndarray, y: np.ndarray, t_grid: Sequence[float], w_grid: Sequence[float], default_class: str) -> tuple[CascadeParams, list[dict[str, float]]]:
    """The (t_text, t_image, w_text) of the grid with the best macro-F1 on rows that have both
    modalities. Ties go to the first in grid order, which lists the baseline's 0.7 first, so a flat
    surface keeps the baseline's thresholds. Returns the best and every point's score."""
    ones = np.ones(len(y), dtype=bool)
    routing = Routing(text, image, ones, ones)
    present = np.unique(y)  # macro_f1's default labels, found once rather than at every point
    table, best, best_score = [], None, -1.0
    for t_text, t_image, w_text in product(t_grid, t_grid, w_grid):
        params = CascadeParams(float(t_text), float(t_image), float(w_text), default_class)
        score = macro_f1(y, routing.labels(params), present)
        table.append({"t_text": float(t_text), "t_image": float(t_image), "w_text": float(w_text), "macro_f1": score})
        if score > best_score + 1e-12:
            best, best_score = params, score
    if best is None:  # an empty grid, or no rows (macro-F1 of no rows is NaN, which beats nothing)
        raise ValueError(f"cascade tuning: nothing to choose from ({len(table)} grid points, {len(y)} rows)")
    return best, table


def cross_fitted(text: np.ndarray, image: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, t_grid: Sequence[float], w_grid: Sequence[float], default_class: str, seed: int) -> np.ndarray:
    """Each group's (image row's) pairs decided by parameters tuned on the other folds' pairs:
    the estimate of what tuning buys, since the grid search sees only ~150 images here. Held out
    on the image side only: the text rows are drawn from the whole text pool, so most held-out
    pairs share a text row with the pairs tuned on (keeping those out moved the shared data's
    figure from 0.787 to 0.784). Needs ``folds`` >= 2: with one fold nothing is left to tune on."""
    if folds < 2:
        raise ValueError(f"cascade cross-fitting needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    unique = rng.permutation(np.unique(groups))
    fold_of = {g: k % folds for k, g in enumerate(unique)}
    fold = np.array([fold_of[g] for g in groups])
    out = np.zeros(len(y), dtype=np.int64)
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        params, _ = tune(text[~held], image[~held], y[~held], t_grid, w_grid, default_class)
        ones = np.ones(int(held.sum()), dtype=bool)
        out[held] = decide(text[held], image[held], ones, ones, params).label
    return out


def source_breakdown(decision: Decision, y: np.ndarray) -> dict[str, dict[str, float]]:
    """Rows and accuracy per source (for the tuning report)."""
    out = {}
    for name in SOURCES:
        mask = decision.source == name
        if mask.any():
            out[name] = {"rows": int(mask.sum()), "accuracy": float((decision.label[mask] == y[mask]).mean())}
    return out
