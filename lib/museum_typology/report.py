"""Metrics, tables and plots shared by every model's report. Pure functions plus PNG writers."""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from .schema import CLASSES


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Macro-F1 over the given labels (default: the classes present in y_true), the task's metric.

    Class indices are counted with one bincount: the cascade's grid search scores millions of
    pairs at every point, where scikit-learn's f1_score took 0.5 s a call. The same value as
    ``f1_score(..., average="macro", zero_division=0)`` to the bit (2tp / (true + predicted) per
    label, averaged in label order: its own formula); anything but non-negative integers goes
    to scikit-learn."""
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    labels_array = np.unique(true) if labels is None else np.asarray(list(labels))
    if true.shape != pred.shape or true.ndim != 1 or not all(a.dtype.kind in "iu" and (a.size == 0 or a.min() >= 0) for a in (true, pred, labels_array)) or labels_array.size == 0 or true.size == 0:
        labels = sorted(set(y_true)) if labels is None else list(labels)
        return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    k = int(max(true.max(), pred.max(initial=0), labels_array.max())) + 1
    counts = np.bincount(true.astype(np.int64) * k + pred.astype(np.int64), minlength=k * k).reshape(k, k)
    true_positive = np.diag(counts)[labels_array].astype(np.float64)
    denominator = (counts.sum(axis=1)[labels_array] + counts.sum(axis=0)[labels_array]).astype(np.float64)
    f1 = np.where(denominator > 0, 2.0 * true_positive / np.where(denominator > 0, denominator, 1.0), 0.0)
    return float(np.average(f1))


def per_class_table(y_true: Sequence[int], y_pred: Sequence[int]) -> list[dict[str, Any]]:
    labels = list(range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {"class": CLASSES[i], "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in labels
    ]


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: how far "0.7" is from being right 70% of the time."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        mask = (confidence > low) & (confidence <= high)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str], floats: str = "{:.3f}") -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [floats.format(row[c]) if isinstance(row[c], float) else "–" if row[c] is None else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


NO_PREDICTION_COLUMN = "(no prediction)"


def no_prediction_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> np.ndarray:
    """Per given class (``CLASSES`` order), its rows without a prediction (``y_pred`` -1). Pure."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true[y_pred < 0], minlength=len(CLASSES))


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """Counts, rows = given class, columns = predicted class in ``CLASSES`` order, plus a last
    column "(no prediction)" when some rows have none (``y_pred`` -1, as evaluate marks a truth
    row without a prediction): each row then sums to its class's support, as recall counts it.
    Pure."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(CLASSES)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels) if len(y_true) else np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    columns = list(CLASSES)
    missing = no_prediction_counts(y_true, y_pred)
    if missing.any():
        matrix, columns = np.column_stack([matrix, missing]), [*columns, NO_PREDICTION_COLUMN]
    return matrix, columns


def confusion_png(y_true: Sequence[int], y_pred: Sequence[int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix, columns = confusion_counts(y_true, y_pred)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(11, 9))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), [c[:28] for c in columns], rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(len(CLASSES)), [c[:28] for c in CLASSES], fontsize=8)
    for i in range(len(CLASSES)):
        for j in range(len(columns)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("given label")
    ax.set_title(title)
    return _figure_png(fig)


def reliability_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 10) -> bytes:
    """Reliability diagram: accuracy against top-class confidence, one line per named model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for name, (proba, y_true) in curves.items():
        confidence = proba.max(axis=1)
        correct = proba.argmax(axis=1) == y_true
        xs, ys = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            mask = (confidence > low) & (confidence <= high)
            if mask.sum() >= 5:
                xs.append(confidence[mask].mean())
                ys.append(correct[mask].mean())
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {expected_calibration_error(proba, y_true):.3f})")
    ax.set_xlabel("top-class confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title("reliability (out-of-fold)")
    return _figure_png(fig)
