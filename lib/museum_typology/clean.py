"""clean job: find noisy labels in the out-of-fold probabilities, decide keep / relabel / drop per
row, and write a cleaned manifest and a review page. Nothing in the source data is changed.

read the OOF files (text, image, or both; joined on guid, probabilities averaged where a guid has
both) -> per-row confident-learning evidence (pure numpy) -> Spark MLlib KMeans over the
probability vectors, per given label and overall (the edge) -> cluster table (size, purity,
dominant predicted class) -> decisions by the ``[clean]`` rules, each with a reason -> write
``cleaned_manifest.parquet`` / ``.csv``, ``clusters.csv``, ``summary.json``, ``conf.json`` and
``review/`` (HTML + PNG montages) into the output directory, atomically.

Confident learning (Northcutt et al., the method behind cleanlab): class j's threshold t_j is the
mean probability of j over the rows labelled j; a row "confidently" belongs to the most likely
class among those with p_j >= t_j. The counts of (given, confident) pairs, calibrated to the label
counts, say how many rows of each given class are really another class; in each given class the
rows with the largest margin p_j - p_given towards that class are the suspects
("prune by noise rate", cleanlab's default). The clusters add group evidence: a cluster of one
label whose rows the models call another class is the "rare books under документы" pattern the
2021 baseline found by hand.
"""
from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import bundles, storage
from .config import ConfigError, Settings, checked_numbers
from .errors import InternalError
from .log import get_logger
from .schema import CLASS_INDEX, CLASSES
from .storage import S3Options

log = get_logger(__name__)

NUM_CLASSES = len(CLASSES)
KEEP, RELABEL, DROP = "keep", "relabel", "drop"
ACTIONS = (KEEP, RELABEL, DROP)
FILTERS = ("noise_rate", "confident_joint", "both")
ALL_SCOPE = "(all)"  # the scope name of the clustering over every row

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("guid", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),  # the given label
        pa.field("new_label", pa.string()),  # the label to train on; null = drop the row
        pa.field("action", pa.string(), nullable=False),  # keep / relabel / drop
        pa.field("reason", pa.string(), nullable=False),
        pa.field("sources", pa.string(), nullable=False),  # which OOF files held the row: text, image, text+image
        pa.field("predicted", pa.string(), nullable=False),  # argmax of the (averaged) probabilities
        pa.field("p_given", pa.float32(), nullable=False),
        pa.field("threshold_given", pa.float32(), nullable=False),
        pa.field("other_class", pa.string(), nullable=False),  # the most likely class other than the given one
        pa.field("p_other", pa.float32(), nullable=False),
        pa.field("threshold_other", pa.float32(), nullable=False),
        pa.field("margin", pa.float32(), nullable=False),  # p_other - p_given
        pa.field("confident_class", pa.string()),  # confident learning's class for the row (null: none above its threshold)
        pa.field("suspected", pa.bool_(), nullable=False),  # flagged by confident learning or by its cluster
        pa.field("label_cluster", pa.int32(), nullable=False),  # cluster id inside the given label (0 = largest)
        pa.field("cluster", pa.int32(), nullable=False),  # cluster id in the clustering over every row
    ]
)


class OofError(storage.StorageError):
    """An out-of-fold file that is missing or cannot be used; the message names the file."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class CleanSettings:
    filter: str = "noise_rate"
    use_clusters: bool = True
    min_threshold: float = 0.05
    relabel_min_proba: float = 0.5
    relabel_min_margin: float = 0.3
    drop_max_self_confidence: float = 0.1
    overall_k: tuple[int, ...] = (8, 12, 16, 24)
    label_k: tuple[int, ...] = (2, 3, 4, 6)
    min_cluster_size: int = 5
    seed: int = 13
    max_iter: int = 30
    parallel_fits: int = 2
    suspicious_min_size: int = 5
    suspicious_min_purity: float = 0.6
    overall_max_agreement: float = 0.8
    review_thumbnails: int = 12
    review_titles: int = 40
    review_max_clusters: int = 40

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanSettings:
        values = {name: settings.get(f"clean.{name}") for name in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        for name, v in values.items():
            if name.endswith("_k") and not (isinstance(v, list) and v and all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in v)):
                raise ConfigError(f"clean.{name} = {v!r}: expected a non-empty list of whole numbers >= 2 (the k values tried)")
        # Counts whole and in range, shares in [0, 1], as the image and text settings: 2.5 or -1
        # iterations failed inside Spark's KMeans, a review count of -1 cut the page's last row.
        values = checked_numbers(
            "clean",
            values,
            ("min_cluster_size", "seed", "max_iter", "parallel_fits", "suspicious_min_size", "review_thumbnails", "review_titles", "review_max_clusters"),
            {"seed": 0, "review_thumbnails": 0, "review_titles": 0, "review_max_clusters": 0},
            {name: (0.0, 1.0, True, True) for name in ("min_threshold", "relabel_min_proba", "relabel_min_margin", "drop_max_self_confidence", "suspicious_min_purity", "overall_max_agreement")},
        )
        cs = cls(**{name: tuple(v) if name.endswith("_k") else v for name, v in values.items()})
        if cs.filter not in FILTERS:
            raise ConfigError(f"clean.filter = {cs.filter!r}: expected one of {FILTERS}")
        return cs


# ---------------------------------------------------------------- reading the OOF files


@dataclass
class Oof:
    """Out-of-fold probabilities of one or more models, one row per guid."""

    guids: list[str]
    y: np.ndarray  # given label, class index
    proba: np.ndarray  # (n, 15), rows sum to 1, CLASSES order
    sources: list[str]  # per row: "text", "image", "text+image"
    fold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # first source's fold
    model_versions: tuple[str, ...] = ()  # the bundle versions its file names (model_version column)

    def __len__(self) -> int:
        return len(self.guids)


def oof_source(table: pa.Table, url: str) -> str:
    """Which kind of model made an OOF file, "text" or "image": as its metadata records it
    (``bundles.write_oof``), else, for files written before it did, as its name says
    (``…/oof/text.parquet``). train-* with another --model-dir write ``DIR/oof.parquet``: its name
    says nothing, and a guess would lose the review page's images and the labels' lineage."""
    recorded = (table.schema.metadata or {}).get(bundles.OOF_SOURCE_KEY)
    if recorded is not None:
        source = recorded.decode("utf-8", "replace")
        if source not in bundles.OOF_SOURCES:
            raise OofError(f"{url}: records out-of-fold predictions of a {source!r} model; expected {' or '.join(bundles.OOF_SOURCES)}")
        return source
    base = url.rstrip("/").rsplit("/", 1)[-1]
    name = base[: -len(".parquet")] if base.endswith(".parquet") else base
    if name not in bundles.OOF_SOURCES:
        raise OofError(f"{url}: does not record whether text or image models made it (files written before 2026-11-28 do not); rename it text.parquet or image.parquet (or train again with --retrain, which records it)")
    return name


def check_oof_urls(urls: Sequence[str]) -> None:
    """At least one out-of-fold file, each once: a file given twice was averaged in twice, so
    its model carried twice the weight of the other (``text,text,image``: two thirds)."""
    if not urls:
        raise OofError("clean: no --oof file given")
    seen = [storage.absolute(url) for url in urls]
    repeated = sorted({url for url in seen if seen.count(url) > 1})
    if repeated:
        raise OofError(f"clean: --oof names {', '.join(repeated)} more than once; each out-of-fold file counts once")


def read_oof(url: str, s3: S3Options | None = None) -> Oof:
    """Read and check one OOF file (guid, label, fold, proba[15]); an unusable file is an
    ``OofError`` that says what is wrong, never a half-read."""
    return oof_from_table(read_oof_table(url, s3), url)


def read_oof_table(url: str, s3: S3Options | None = None) -> pa.Table:
    """The raw table of an OOF file (unchecked: ``oof_from_table`` checks it). tune-cascade reads
    its files through here too, so both jobs accept and refuse the same files."""
    if not storage.exists(url, s3):
        raise OofError(f"{url}: no such out-of-fold file (train-text / train-image write oof/text.parquet and oof/image.parquet)")
    try:
        with storage.open_input_file(url, s3) as f:
            return pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise OofError(f"{url}: not a readable Parquet file ({exc})") from None


def oof_from_table(table: pa.Table, name: str) -> Oof:
    """Check an OOF table and turn it into an ``Oof``; anything unusable is an ``OofError`` naming ``name``."""
    missing = [c for c in ("guid", "label", "proba") if c not in table.column_names]
    if missing:
        raise OofError(f"{name}: missing column(s) {', '.join(missing)} (expected guid, label, fold, proba)")
    if table.num_rows == 0:
        # Checked here, where the file is read, so the CLI's pre-check refuses it before Spark starts.
        raise OofError(f"{name}: no rows (an out-of-fold file holds one row per labelled item)")
    guids = _distinct_text_guids(table, name)
    labels = table.column("label").to_pylist()
    unknown = sorted({str(t) for t in labels if t not in CLASS_INDEX})
    if unknown:
        raise OofError(f"{name}: unknown label(s) {unknown[:3]} (labels must be among the {NUM_CLASSES} classes)")
    raw = table.column("proba").to_pylist()
    not_lists = [i for i, p in enumerate(raw) if p is not None and not isinstance(p, (list, tuple))]
    if not_lists:
        raise OofError(f"{name}: row {not_lists[0]} (guid {guids[not_lists[0]]}) has a proba of {raw[not_lists[0]]!r}, expected a list of {NUM_CLASSES} probabilities in CLASSES order")
    bad = [i for i, p in enumerate(raw) if p is None or len(p) != NUM_CLASSES]
    if bad:
        raise OofError(f"{name}: row {bad[0]} (guid {guids[bad[0]]}) has a proba of length {len(raw[bad[0]] or [])}, expected {NUM_CLASSES} in CLASSES order")
    try:
        proba = np.asarray(raw, dtype=np.float64).reshape(len(raw), NUM_CLASSES)
    except (TypeError, ValueError) as exc:  # a None or a string inside a list
        raise OofError(f"{name}: proba holds values that are not numbers ({exc})") from None
    unusable = ~np.isfinite(proba).all(axis=1) | (proba < -1e-6).any(axis=1)
    if unusable.any():
        i = int(np.argmax(unusable))
        raise OofError(f"{name}: probabilities must be finite and non-negative; {int(unusable.sum())} row(s) are not, e.g. row {i} (guid {guids[i]})")
    sums = proba.sum(axis=1)
    off = np.abs(sums - 1.0) > 1e-3
    if off.any():
        i = int(np.argmax(off))
        raise OofError(f"{name}: probabilities of guid {guids[i]} sum to {sums[i]:.4f}, not 1")
    proba = np.clip(proba, 0.0, None)
    proba /= proba.sum(axis=1, keepdims=True)  # float32 storage leaves sums of 1 +- 1e-7
    folds = table.column("fold").to_pylist() if "fold" in table.column_names else [0] * len(guids)
    if any(f is None for f in folds):
        i = next(i for i, f in enumerate(folds) if f is None)
        raise OofError(f"{name}: empty fold in {sum(f is None for f in folds)} row(s), e.g. guid {guids[i]}")
    whole = [
        (isinstance(f, (int, np.integer)) and not isinstance(f, bool)) or (isinstance(f, float) and f.is_integer()) or (isinstance(f, str) and f.strip().isascii() and f.strip().isdigit())
        for f in folds
    ]
    if not all(whole):
        i = whole.index(False)
        raise OofError(f"{name}: fold must hold whole numbers; {whole.count(False)} row(s) do not, e.g. guid {guids[i]}: {folds[i]!r}")
    fold = np.asarray(folds, dtype=np.int64)
    source = oof_source(table, name)
    versions = tuple(sorted({v for v in table.column("model_version").to_pylist() if v})) if "model_version" in table.column_names else ()
    return Oof(guids, np.array([CLASS_INDEX[t] for t in labels], dtype=np.int64), proba, [source] * len(guids), fold, versions)


def combine(oofs: list[Oof]) -> Oof:
    """One row per guid over every file: the mean of the probabilities of the files that hold it
    (an equal-weight ensemble of the text and the image model). Files must agree on the given label."""
    if not oofs:
        raise OofError("no out-of-fold file given")
    index: dict[str, int] = {}
    guids: list[str] = []
    y: list[int] = []
    fold: list[int] = []
    sums: list[np.ndarray] = []
    counts: list[int] = []
    sources: list[list[str]] = []
    for oof in oofs:
        for i, guid in enumerate(oof.guids):
            j = index.get(guid)
            if j is None:
                index[guid] = len(guids)
                guids.append(guid)
                y.append(int(oof.y[i]))
                fold.append(int(oof.fold[i]) if len(oof.fold) else 0)
                sums.append(oof.proba[i].copy())
                counts.append(1)
                sources.append([oof.sources[i]])
                continue
            if y[j] != int(oof.y[i]):
                raise OofError(f"guid {guid}: the OOF files disagree on its given label ({CLASSES[y[j]]} in {sources[j][0]}, {CLASSES[oof.y[i]]} in {oof.sources[i]}); were they trained on the same data?")
            sums[j] += oof.proba[i]
            counts[j] += 1
            sources[j].append(oof.sources[i])
    if not guids:  # read_oof refuses an empty file; this guards Oofs built in code
        raise OofError("the out-of-fold files hold no rows")
    proba = np.stack(sums) / np.asarray(counts, dtype=np.float64)[:, None]
    return Oof(guids, np.asarray(y, dtype=np.int64), proba, ["+".join(s) for s in sources], np.asarray(fold, dtype=np.int64))


# ---------------------------------------------------------------- evidence (pure)


def class_thresholds(proba: np.ndarray, y: np.ndarray, min_threshold: float = 0.0) -> np.ndarray:
    """t_j = mean p_j over the rows labelled j (confident learning's per-class threshold). A class
    with no rows gets 1.0 (nothing is ever confidently it); ``min_threshold`` keeps a class the
    models never predict from making every row "confident" at p = 0.01."""
    t = np.ones(proba.shape[1])
    for j in range(proba.shape[1]):
        rows = y == j
        if rows.any():
            t[j] = max(float(proba[rows, j].mean()), min_threshold)
    return t


def evidence(proba: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: p of the given label, the most likely other class and its p, the margin between
    them, the argmax, and confident learning's class (-1 when no class reaches its threshold)."""
    n = len(y)
    rows = np.arange(n)
    p_given = proba[rows, y]
    others = proba.copy()
    others[rows, y] = -np.inf
    other = others.argmax(axis=1)
    p_other = proba[rows, other]
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    return {
        "p_given": p_given,
        "threshold_given": thresholds[y],
        "other": other,
        "p_other": p_other,
        "threshold_other": thresholds[other],
        "margin": p_other - p_given,
        "predicted": proba.argmax(axis=1),
        "confident": confident,
    }


def confident_joint(y: np.ndarray, confident: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """C[i, j] = rows given i whose confident class is j, calibrated so that row i sums to the
    number of rows given i (the rows with no confident class are spread like the others)."""
    joint = np.zeros((num_classes, num_classes))
    has = confident >= 0
    np.add.at(joint, (y[has], confident[has]), 1)
    label_counts = np.bincount(y, minlength=num_classes).astype(float)
    row_sums = joint.sum(axis=1)
    calibrated = np.where(row_sums[:, None] > 0, joint / np.maximum(row_sums, 1)[:, None] * label_counts[:, None], 0.0)
    return np.round(calibrated).astype(np.int64)


def noise_rate_issues(proba: np.ndarray, y: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """Prune by noise rate: in given class i, the joint[i, j] rows (j != i) with the largest margin
    p_j - p_i are suspects. Each class keeps at least one row; a row whose argmax is its given
    label is never a suspect (the models agree with the label)."""
    mask = np.zeros(len(y), dtype=bool)
    for i in range(joint.shape[0]):
        members = np.where(y == i)[0]
        if len(members) == 0:
            continue
        budget = len(members) - 1  # keep at least one row per class
        for j in np.argsort(-joint[i], kind="stable"):  # ties in a fixed order (the default sort may use SIMD on some CPUs)
            count = int(min(joint[i, j], budget))
            if j == i or count <= 0:
                continue
            margin = proba[members, j] - proba[members, i]
            chosen = members[np.argsort(-margin, kind="stable")[:count]]
            budget -= int((~mask[chosen]).sum())
            mask[chosen] = True
    mask[proba.argmax(axis=1) == y] = False
    return mask


def suspects(proba: np.ndarray, y: np.ndarray, ev: dict[str, np.ndarray], how: str) -> np.ndarray:
    """Confident learning's suspects: ``noise_rate`` (cleanlab's default), ``confident_joint``
    (the off-diagonal rows of the confident joint), or ``both`` (in both sets: fewer, surer)."""
    off_diagonal = (ev["confident"] >= 0) & (ev["confident"] != y)
    if how == "confident_joint":
        return off_diagonal
    by_rate = noise_rate_issues(proba, y, confident_joint(y, ev["confident"], proba.shape[1]))
    return by_rate & off_diagonal if how == "both" else by_rate


# ---------------------------------------------------------------- clusters (pure parts)


def renumber_by_size(assign: np.ndarray) -> np.ndarray:
    """Cluster ids 0, 1, 2, … in decreasing size (ties by the old id), so ids read the same across runs."""
    ids, counts = np.unique(assign, return_counts=True)
    order = sorted(zip(-counts, ids))
    mapping = {old: new for new, (_, old) in enumerate(order)}
    return np.array([mapping[a] for a in assign], dtype=np.int64)


def cluster_table(scope_of: np.ndarray, assign: np.ndarray, y: np.ndarray, predicted: np.ndarray, cs: CleanSettings, per_label: bool) -> list[dict[str, Any]]:
    """One record per cluster: size, dominant predicted class, purity (share predicted as it),
    the share whose given label is it, the given-label mix, and whether it is suspicious.

    Per label (``per_label``): suspicious = the dominant predicted class is another class, with at
    least ``suspicious_min_size`` rows and purity >= ``suspicious_min_purity`` (a group of this
    label that the models call something else). Overall: purity >= ``suspicious_min_purity``, at
    least ``suspicious_min_size`` rows labelled other than the dominant predicted class, and they
    are more than 1 - ``overall_max_agreement`` of the cluster (a confident cluster that holds a
    group of another label, rather than the few stray rows every big cluster has).
    """
    records = []
    for key in sorted(set(zip(scope_of.tolist(), assign.tolist()))):
        scope, cid = key
        members = np.where((scope_of == scope) & (assign == cid))[0]
        counts = np.bincount(predicted[members], minlength=NUM_CLASSES)
        dominant = int(counts.argmax())
        purity = counts[dominant] / len(members)
        given = Counter(CLASSES[i] for i in y[members])
        disagree = int((y[members] != dominant).sum())
        if per_label:
            suspicious = CLASSES[dominant] != scope and len(members) >= cs.suspicious_min_size and purity >= cs.suspicious_min_purity
        else:
            agreement = 1.0 - disagree / len(members)
            suspicious = disagree >= cs.suspicious_min_size and purity >= cs.suspicious_min_purity and agreement <= cs.overall_max_agreement
        records.append(
            {
                "scope": scope,
                "cluster": int(cid),
                "size": int(len(members)),
                "dominant_predicted": CLASSES[dominant],
                "purity": round(float(purity), 4),
                "label_agreement": round(float((y[members] == dominant).mean()), 4),
                "given_labels": "; ".join(f"{k} {v}" for k, v in given.most_common(4)),
                "suspicious": bool(suspicious),
            }
        )
    return records


# ---------------------------------------------------------------- decisions (pure)


def decide(proba: np.ndarray, y: np.ndarray, ev: dict[str, np.ndarray], suspected_cl: np.ndarray, cluster_class: np.ndarray, cluster_names: list[str], cs: CleanSettings) -> tuple[list[str], list[str | None], list[str], np.ndarray]:
    """keep / relabel / drop per row, with a reason naming the numbers that decided it.

    ``cluster_class``: per row, the dominant predicted class of its label cluster when that
    cluster is suspicious, else -1. suspected = confident learning says so, or (``use_clusters``)
    the row is predicted as its suspicious cluster's class and its given label is below its
    threshold. A suspect is relabelled to its most likely other class when that class is backed
    (it is the row's confident class, or with ``use_clusters`` the row's cluster's class), with p >= ``relabel_min_proba``
    and a margin >= ``relabel_min_margin``; dropped when it cannot be relabelled and p_given <
    ``drop_max_self_confidence``; kept otherwise (the evidence is too weak to change anything a
    curator would have to undo).
    """
    n = len(y)
    if cs.use_clusters:
        by_cluster = (cluster_class >= 0) & (ev["predicted"] == cluster_class) & (ev["predicted"] != y) & (ev["p_given"] < ev["threshold_given"])
    else:
        by_cluster = np.zeros(n, dtype=bool)
    suspected = suspected_cl | by_cluster
    actions: list[str] = []
    new_labels: list[str | None] = []
    reasons: list[str] = []
    for i in range(n):
        given, other = CLASSES[y[i]], CLASSES[ev["other"][i]]
        p_g, t_g, p_o, t_o, margin = ev["p_given"][i], ev["threshold_given"][i], ev["p_other"][i], ev["threshold_other"][i], ev["margin"][i]
        numbers = f"p({given})={p_g:.2f} (threshold {t_g:.2f}), p({other})={p_o:.2f} (threshold {t_o:.2f}), margin {margin:+.2f}"
        if not suspected[i]:
            actions.append(KEEP)
            new_labels.append(given)
            why = "label consistent" if p_g >= t_g or ev["predicted"][i] == y[i] else "not a confident-learning suspect"
            reasons.append(f"{why}: {numbers}")
            continue
        evidence_names = []
        if suspected_cl[i]:
            evidence_names.append("confident learning")
        if by_cluster[i]:
            evidence_names.append(f"cluster {cluster_names[i]}")
        flagged_by = " and ".join(evidence_names)
        # Backed as the docstring says: the row's cluster's class counts whether or not the
        # cluster itself flagged the row (a confident-learning suspect whose p_given is just over
        # its threshold was kept beside its cluster's 16 relabelled rows).
        backed = ev["confident"][i] == ev["other"][i] or (cs.use_clusters and cluster_class[i] == ev["other"][i])
        why = "is confident" if ev["confident"][i] == ev["other"][i] else "is its cluster's class"
        if backed and p_o >= cs.relabel_min_proba and margin >= cs.relabel_min_margin:
            actions.append(RELABEL)
            new_labels.append(other)
            reasons.append(f"suspected by {flagged_by}; {other} {why}: {numbers}")
        elif p_g < cs.drop_max_self_confidence:
            actions.append(DROP)
            new_labels.append(None)
            short = f"{other} {why} but short of p >= {cs.relabel_min_proba} and margin >= {cs.relabel_min_margin}" if backed else "no confident other class"
            reasons.append(f"suspected by {flagged_by}; {short}, and p({given}) < {cs.drop_max_self_confidence}: {numbers}")
        else:
            actions.append(KEEP)
            new_labels.append(given)
            reasons.append(f"suspected by {flagged_by} but the evidence is weak (kept for review): {numbers}")
    return actions, new_labels, reasons, suspected


def per_class_counts(y: np.ndarray, actions: list[str], new_labels: list[str | None], suspected: np.ndarray) -> list[dict[str, Any]]:
    """Per given class: rows, suspected, kept, relabelled (away), dropped, relabelled into it."""
    into = Counter(new for new, a in zip(new_labels, actions) if a == RELABEL)
    table = []
    for j, name in enumerate(CLASSES):
        rows = np.where(y == j)[0]
        acts = Counter(actions[i] for i in rows)
        table.append(
            {
                "class": name,
                "rows": int(len(rows)),
                "suspected": int(suspected[rows].sum()),
                "kept": acts[KEEP],
                "relabelled": acts[RELABEL],
                "dropped": acts[DROP],
                "relabelled_into": into[name],
            }
        )
    return table


@dataclass
class Cleaned:
    """Everything the job decided: per row (in ``oof`` order), the clusters, the thresholds."""

    oof: Oof
    ev: dict[str, np.ndarray]
    thresholds: np.ndarray
    suspected_cl: np.ndarray
    suspected: np.ndarray
    actions: list[str]
    new_labels: list[str | None]
    reasons: list[str]
    label_cluster: np.ndarray
    cluster: np.ndarray
    clusters: list[dict[str, Any]]
    k_choice: dict[str, Any]


def clean_labels(oof: Oof, cs: CleanSettings, label_cluster: np.ndarray, cluster: np.ndarray, k_choice: dict[str, Any] | None = None) -> Cleaned:
    """The pure core: evidence, clusters' table, decisions, given each row's cluster ids."""
    thresholds = class_thresholds(oof.proba, oof.y, cs.min_threshold)
    ev = evidence(oof.proba, oof.y, thresholds)
    suspected_cl = suspects(oof.proba, oof.y, ev, cs.filter)
    label_names = np.array([CLASSES[i] for i in oof.y], dtype=object)
    clusters = cluster_table(label_names, label_cluster, oof.y, ev["predicted"], cs, per_label=True)
    clusters += cluster_table(np.full(len(oof), ALL_SCOPE, dtype=object), cluster, oof.y, ev["predicted"], cs, per_label=False)
    suspicious = {(c["scope"], c["cluster"]): CLASS_INDEX[c["dominant_predicted"]] for c in clusters if c["suspicious"] and c["scope"] != ALL_SCOPE}
    cluster_class = np.array([suspicious.get((label_names[i], int(label_cluster[i])), -1) for i in range(len(oof))], dtype=np.int64)
    names = [f"{label_names[i]}#{int(label_cluster[i])}" for i in range(len(oof))]
    actions, new_labels, reasons, suspected = decide(oof.proba, oof.y, ev, suspected_cl, cluster_class, names, cs)
    # Per cluster: what was decided for its rows (the review page sorts by it).
    for c in clusters:
        members = (label_names == c["scope"]) & (label_cluster == c["cluster"]) if c["scope"] != ALL_SCOPE else cluster == c["cluster"]
        acts = Counter(actions[i] for i in np.where(members)[0])
        c.update(suspected=int(suspected[members].sum()), relabelled=acts[RELABEL], dropped=acts[DROP])
    return Cleaned(oof, ev, thresholds, suspected_cl, suspected, actions, new_labels, reasons, label_cluster, cluster, clusters, k_choice or {})


def manifest_table(c: Cleaned) -> pa.Table:
    ev, oof = c.ev, c.oof
    f32 = lambda a: pa.array(np.asarray(a, dtype=np.float32), pa.float32())  # noqa: E731
    return pa.table(
        {
            "guid": pa.array(oof.guids, pa.string()),
            "label": pa.array([CLASSES[i] for i in oof.y], pa.string()),
            "new_label": pa.array(c.new_labels, pa.string()),
            "action": pa.array(c.actions, pa.string()),
            "reason": pa.array(c.reasons, pa.string()),
            "sources": pa.array(oof.sources, pa.string()),
            "predicted": pa.array([CLASSES[i] for i in ev["predicted"]], pa.string()),
            "p_given": f32(ev["p_given"]),
            "threshold_given": f32(ev["threshold_given"]),
            "other_class": pa.array([CLASSES[i] for i in ev["other"]], pa.string()),
            "p_other": f32(ev["p_other"]),
            "threshold_other": f32(ev["threshold_other"]),
            "margin": f32(ev["margin"]),
            "confident_class": pa.array([CLASSES[i] if i >= 0 else None for i in ev["confident"]], pa.string()),
            "suspected": pa.array(c.suspected, pa.bool_()),
            "label_cluster": pa.array(c.label_cluster.astype(np.int32), pa.int32()),
            "cluster": pa.array(c.cluster.astype(np.int32), pa.int32()),
        },
        schema=MANIFEST_SCHEMA,
    )


# ---------------------------------------------------------------- Spark MLlib clustering (the edge)


def k_candidates(grid: tuple[int, ...], rows: int, min_cluster_size: int, distinct: int | None = None) -> list[int]:
    """The grid's k that leave at least ``min_cluster_size`` rows per cluster on average and, given
    ``distinct`` (the number of distinct probability vectors), no more clusters than distinct rows:
    Spark's KMeans initialisation finds at most that many centres, and its block solver then fails
    with an ArrayIndexOutOfBoundsException (rows of identical titles have identical vectors)."""
    most = rows if distinct is None else min(rows, distinct)
    return sorted({k for k in grid if k >= 2 and k * min_cluster_size <= rows and k <= most})


def distinct_rows(x: np.ndarray) -> int:
    """How many distinct rows ``x`` holds (exact equality, as Spark's KMeans compares points)."""
    return int(len(np.unique(x, axis=0))) if len(x) else 0


def _fit_best_k(df, ks: list[int], cs: CleanSettings) -> tuple[int, dict[str, float], Any]:
    """KMeans for each k; keep the k with the best silhouette (ties -> the smaller k)."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.evaluation import ClusteringEvaluator

    evaluator = ClusteringEvaluator(featuresCol="features", predictionCol="k", metricName="silhouette", distanceMeasure="squaredEuclidean")
    scores: dict[str, float] = {}
    best: tuple[float, int, Any] | None = None
    for k in ks:
        model = KMeans(k=k, seed=cs.seed, maxIter=cs.max_iter, featuresCol="features", predictionCol="k").fit(df)
        predicted = model.transform(df)
        if len(ks) == 1:
            return k, {}, predicted  # nothing to choose: skip the silhouette pass
        # Silhouette needs two non-empty clusters; KMeans can leave clusters empty on tied points.
        populated = sum(1 for size in model.summary.clusterSizes if size > 0)
        score = evaluator.evaluate(predicted) if populated >= 2 else -1.0
        scores[str(k)] = round(float(score), 4)
        if best is None or score > best[0] + 1e-9:
            best = (score, k, predicted)
    assert best is not None
    return best[1], scores, best[2]


def clustering_frame(spark, frame):
    """The rows KMeans reads, in an order that is the same on every run: at most 2 partitions,
    each sorted by row.

    Spark's KMeans picks its starting centres by walking each partition in row order, and it
    and the silhouette sum partial results in the order tasks finish. After a shuffle a cluster
    fetches blocks in random order, so without the sort the same seed gave other clusters from
    run to run; with 3 or more partitions float sums can differ in their last bits (2 add
    commutatively). Up to ~10^5 rows of 15 numbers need no more partitions."""
    partitions = max(1, min(2, spark.sparkContext.defaultParallelism, len(frame) // 1000 + 1))
    return spark.createDataFrame(frame, "row long, label string, x array<double>").repartition(partitions, "row").sortWithinPartitions("row")


def spark_clusters(spark, oof: Oof, cs: CleanSettings) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Cluster ids per row: per given label and over every row, by Spark MLlib KMeans on sqrt(p).

    sqrt(p) turns Euclidean distance into the Hellinger distance between probability vectors, so
    KMeans' geometry is one that fits distributions (in raw p, 0.01 vs 0.05 counts as nothing).
    k is chosen per scope from the settings' grid by the silhouette. A label with too few rows for
    any k of the grid is one cluster.
    """
    import pandas as pd
    from pyspark.ml.functions import array_to_vector

    n = len(oof)
    features = np.sqrt(oof.proba)
    frame = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "label": [CLASSES[i] for i in oof.y], "x": list(features)})
    df = clustering_frame(spark, frame).withColumn("features", array_to_vector("x")).drop("x").cache()
    label_cluster = np.zeros(n, dtype=np.int64)
    cluster = np.zeros(n, dtype=np.int64)
    k_choice: dict[str, Any] = {}

    def one_scope(scope: str, part, rows: int) -> None:
        distinct = distinct_rows(features if scope == ALL_SCOPE else features[oof.y == CLASS_INDEX[scope]])
        ks = k_candidates(cs.overall_k if scope == ALL_SCOPE else cs.label_k, rows, cs.min_cluster_size, distinct)
        if not ks:
            k_choice[scope] = {"k": 1, "rows": rows, "distinct": distinct, "silhouette": {}}
            return  # one cluster (too few rows, or fewer than 2 distinct vectors): the zeros already there
        started = time.time()
        k, scores, predicted = _fit_best_k(part, ks, cs)
        got = predicted.select("row", "k").toPandas()
        target = cluster if scope == ALL_SCOPE else label_cluster
        target[got["row"].to_numpy()] = renumber_by_size(got["k"].to_numpy())  # scopes never share rows
        k_choice[scope] = {"k": k, "rows": rows, "distinct": distinct, "silhouette": scores}
        log.info("clusters of %s: %d rows, k=%d (silhouette by k: %s) in %.1f s", scope, rows, k, scores, time.time() - started)

    counts = Counter(frame["label"])
    scopes: list[tuple[str, Any, int]] = [(ALL_SCOPE, df, n)] + [(label, df.filter(df.label == label), counts[label]) for label in sorted(counts)]
    try:
        # A KMeans fit on thousands of rows is mostly Spark job latency (one job per iteration), not
        # computation: fits submitted from several driver threads overlap that latency. Each fit is
        # seeded and independent, so the result does not depend on the order they finish in.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, cs.parallel_fits)) as pool:
            for future in [pool.submit(one_scope, *scope) for scope in scopes]:
                future.result()
    finally:
        df.unpersist()
    k_choice = {scope: k_choice[scope] for scope, _, _ in scopes}
    return label_cluster, cluster, k_choice


# ---------------------------------------------------------------- the cleaned manifest, read back


# Hand-made manifests' ``keep`` cells. An empty cell means "not kept", whether the file is CSV
# (where it reads as null) or Parquet (null, or ""), so one manifest means the same in both formats.
_KEEP_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_KEEP_FALSE = frozenset({"false", "f", "0", "no", "n", ""})
# Read as text, never inferred: a guid "1001" must stay the string "1001" (not the integer 1001)
# and a guid "NA" or "null" must stay itself (not null), or they would never match the data's guids.
_MANIFEST_TEXT_COLUMNS = ("guid", "new_label", "action", "typology", "keep")


def _keep_flag(value: Any, url: str, guid: str) -> bool:
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _KEEP_TRUE:
        return True
    if text in _KEEP_FALSE:
        return False
    raise OofError(f"{url}: guid {guid}: keep = {value!r} is not a yes/no value (true/false, 1/0, yes/no; empty = false)")


@dataclass(frozen=True)
class CleanedManifest:
    """A cleaned manifest as a training job uses it: ``labels`` (``read_cleaned_labels``) and
    ``lineage``, what a model trained on it records of it: the URL, the sha256 of the very bytes
    the labels were parsed from, and, when the clean job wrote it (``summary.json`` beside it),
    the out-of-fold files and bundle versions its decisions came from (``made_from``)."""

    labels: dict[str, str | None]
    lineage: dict[str, Any]


def read_cleaned_manifest(url: str, s3: S3Options | None = None) -> CleanedManifest:
    """Read the manifest at ``url`` once: its labels and its lineage come from the same bytes, so
    a manifest rewritten while a job reads it cannot be recorded with another file's hash."""
    raw = _manifest_bytes(url, s3)
    lineage: dict[str, Any] = {"url": url, "sha256": hashlib.sha256(raw).hexdigest()}
    parent = url.rstrip("/").rpartition("/")[0]
    summary = storage.read_json_object(storage.join(parent, "summary.json"), s3) if parent else None
    if summary and "input_models" in summary:
        lineage["made_from"] = summary["input_models"]
    return CleanedManifest(labels=_parse_cleaned_labels(url, raw), lineage=lineage)


def image_fold_runs(lineage: Any) -> list[str]:
    """The image bundle versions whose out-of-fold predictions a ``CleanedManifest.lineage`` says
    the labels were cleaned with (its ``made_from`` entries of source ``image``), sorted; [] when
    it names none (no manifest, a hand-made one, text predictions only, or a malformed record)."""
    made_from = lineage.get("made_from") if isinstance(lineage, dict) else None
    if not isinstance(made_from, dict):
        return []
    versions = set()
    for entry in made_from.values():
        if isinstance(entry, dict) and entry.get("source") == "image" and isinstance(entry.get("versions"), list):
            versions.update(v for v in entry["versions"] if isinstance(v, str) and v)
    return sorted(versions)


def read_cleaned_labels(url: str, s3: S3Options | None = None) -> dict[str, str | None]:
    """guid -> the label to train on, or None to leave the row out.

    Reads the clean job's manifest (guid, new_label, action; Parquet or CSV) and, for manifests
    made by hand, the older shape guid, typology[, keep]. Guids it does not name keep their label.
    In a hand-made manifest, a row is kept when ``keep`` is true/1/yes (or the column is absent)
    and left out when it is false/0/no or empty (an empty CSV cell and a null or "" Parquet value
    are the same: not kept), or when its typology is empty. Every guid must be non-empty and
    appear once; new_label may be empty only on a ``drop`` row. CSV columns are read as text.
    """
    return _parse_cleaned_labels(url, _manifest_bytes(url, s3))  # no lineage: train-text records none


def _manifest_bytes(url: str, s3: S3Options | None) -> bytes:
    if not storage.exists(url, s3):
        raise OofError(f"{url}: no such cleaned manifest (run the clean job first)")
    return storage.read_bytes(url, s3)


def _distinct_text_guids(table: pa.Table, name: str, why_distinct: str = "") -> list[str]:
    """The table's guid column, stripped as every reader of guids strips them ("a " and "a" are
    one guid); an ``OofError`` naming ``name`` when it holds something other than text (guids are
    matched as strings everywhere: an integer 1001 would never match "1001"), an empty guid, or a
    guid twice (``why_distinct`` says why that matters)."""
    kind = table.schema.field("guid").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise OofError(f"{name}: the guid column holds {kind}, expected text (guids are matched as strings)")
    guids = [g.strip() if g is not None else "" for g in table.column("guid").to_pylist()]
    empty = [n for n, g in enumerate(guids) if not g]
    if empty:
        raise OofError(f"{name}: empty guid in {len(empty)} row(s), e.g. data row {empty[0] + 1}")
    duplicated = [g for g, n in Counter(guids).items() if n > 1]
    if duplicated:
        raise OofError(f"{name}: {len(duplicated)} guid(s) appear more than once, e.g. {duplicated[0]}{why_distinct}")
    return guids


def _parse_cleaned_labels(url: str, raw: bytes) -> dict[str, str | None]:
    """``read_cleaned_labels`` on the manifest's bytes (``url`` names it in errors)."""
    try:
        if url.endswith(".csv"):
            # Only an unquoted empty cell is null (how Arrow writes a null); "" stays an empty string, as in Parquet.
            options = pacsv.ConvertOptions(column_types={c: pa.string() for c in _MANIFEST_TEXT_COLUMNS}, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False)
            table = pacsv.read_csv(io.BytesIO(raw), convert_options=options)
        else:
            table = bundles.read_parquet_bytes(raw)  # not pq.read_table: it could abort the process at exit
    except (pa.ArrowInvalid, OSError) as exc:
        raise OofError(f"{url}: not a readable cleaned manifest ({exc})") from None
    columns = set(table.column_names)
    if "guid" in columns:  # a hand-made "abc " must still name "abc"
        guids = _distinct_text_guids(table, url, " (a manifest says one thing per row)")
        table = table.set_column(table.column_names.index("guid"), "guid", pa.array(guids, pa.string()))
    rows = table.to_pylist()
    result: dict[str, str | None] = {}
    if {"guid", "new_label", "action"} <= columns:
        for r in rows:
            if r["action"] not in ACTIONS:
                raise OofError(f"{url}: guid {r['guid']}: unknown action {r['action']!r} (expected {', '.join(ACTIONS)})")
            if r["action"] != DROP and not r["new_label"]:
                raise OofError(f"{url}: guid {r['guid']}: action {r['action']} with an empty new_label (only a drop row has none)")
            result[r["guid"]] = None if r["action"] == DROP else r["new_label"]
    elif {"guid", "typology"} <= columns:
        has_keep = "keep" in columns
        for r in rows:
            keep = _keep_flag(r["keep"], url, r["guid"]) if has_keep else True
            result[r["guid"]] = r["typology"] if keep and r["typology"] else None
    else:
        raise OofError(f"{url}: a cleaned manifest needs guid, new_label, action (or guid, typology[, keep]) columns; found {', '.join(sorted(columns))}")
    unknown = sorted({t for t in result.values() if t is not None and t not in CLASS_INDEX})
    if unknown:
        raise OofError(f"{url}: unknown label(s) {unknown[:3]}")
    return result


def relabel(labels: Mapping[str, str], cleaned: Mapping[str, str | None], what: str) -> dict[str, str]:
    """guid -> typology after a cleaned manifest, for the text and image trainings alike: the
    guids it relabels take its label, those it drops leave, the others keep theirs. A manifest
    guid that is not among ``labels`` (``what``: the labelled rows the training reads) changes
    nothing, with a warning: a hand-made file naming a test row must not make it a training row."""
    outside = set(cleaned) - set(labels)
    if outside:
        log.warning("cleaned labels: %d manifest guid(s) are not among the %d %s and change nothing, e.g. %s", len(outside), len(labels), what, sorted(outside)[:3])
    result = {g: cleaned.get(g, t) for g, t in labels.items()}
    kept = {g: t for g, t in result.items() if t is not None}
    changed = sum(kept[g] != labels[g] for g in kept)
    log.info("cleaned labels: %d of %d %s kept, %d relabelled", len(kept), len(labels), what, changed)
    return kept


def apply_cleaned_labels(data, cleaned: dict[str, str | None]):
    """A ``text_model.LabelledTexts`` with the cleaned labels (``relabel``)."""
    kept = relabel({g: CLASSES[y] for g, y in zip(data.guids, data.y)}, cleaned, "labelled titles")
    keep = [i for i, g in enumerate(data.guids) if g in kept]
    y = np.array([CLASS_INDEX[kept[data.guids[i]]] for i in keep], dtype=np.int64)
    return type(data)(guids=[data.guids[i] for i in keep], texts=[data.texts[i] for i in keep], y=y)


# ---------------------------------------------------------------- the job


def run(spark, settings: Settings, oof_urls: list[str], output_url: str, dataset_url: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Run the clean job; returns the summary also written to ``OUTPUT/summary.json``.

    ``dataset_url`` (petastorm, for the montages) defaults to WORK_DIR/ingest/dataset and
    ``data_dir`` (the CSVs, for the titles) to paths.data; either may be missing: the review page
    then says so instead of showing images or titles.
    """
    from . import ingest, review

    started = time.time()
    s3 = S3Options.from_settings(settings.section("s3"))
    cs = CleanSettings.from_settings(settings)
    check_oof_urls(oof_urls)
    storage.check_replaceable(output_url, ("cleaned_manifest.parquet",), "clean", s3)
    inputs = [read_oof(url, s3) for url in oof_urls]
    oof = combine(inputs)
    log.info("clean: %d rows from %s (%s)", len(oof), ", ".join(oof_urls), dict(Counter(oof.sources)))
    label_cluster, cluster, k_choice = spark_clusters(spark, oof, cs)
    cleaned = clean_labels(oof, cs, label_cluster, cluster, k_choice)
    table = manifest_table(cleaned)
    # Against the rows read from the files, not against ``oof`` (the manifest is built from it, so
    # that comparison could never fail): a guid lost or doubled by combine or later fails here.
    read_guids = {g for one in inputs for g in one.guids}
    written = table.column("guid").to_pylist()
    if len(written) != len(read_guids) or set(written) != read_guids:
        lost, extra = len(read_guids - set(written)), len(written) - len(set(written) & read_guids)
        raise InternalError(f"clean: the manifest does not hold every input row exactly once ({len(read_guids)} guids read, {len(written)} rows written: {lost} missing, {extra} doubled or unknown)")

    per_class = per_class_counts(oof.y, cleaned.actions, cleaned.new_labels, cleaned.suspected)
    summary: dict[str, Any] = {
        "rows": len(oof),
        "inputs": list(oof_urls),
        # The bundles whose out-of-fold predictions decided: a final model trained on this
        # manifest names them through ``read_cleaned_manifest``.
        "input_models": {url: {"source": one.sources[0], "versions": list(one.model_versions)} for url, one in zip(oof_urls, inputs)},
        "sources": dict(Counter(oof.sources)),
        "actions": {a: cleaned.actions.count(a) for a in ACTIONS},
        "suspected": int(cleaned.suspected.sum()),
        "suspected_by_confident_learning": int(cleaned.suspected_cl.sum()),
        "filter": cs.filter,
        "thresholds": dict(zip(CLASSES, np.round(cleaned.thresholds, 4).tolist())),
        "per_class": per_class,
        "k": k_choice,
        "suspicious_clusters": [c for c in cleaned.clusters if c["suspicious"]],
        "output": output_url,
        "manifest": storage.join(output_url, "cleaned_manifest.parquet"),
        "manifest_csv": storage.join(output_url, "cleaned_manifest.csv"),
        "review": storage.join(output_url, "review", "index.html"),
    }
    work_dir = settings.get("paths.work_dir")
    page = review.build(
        cleaned,
        per_class,
        cs,
        dataset_url or ingest.dataset_of(ingest.default_output(work_dir)),
        data_dir or settings.get("paths.data"),
        settings,
        s3,
    )
    with storage.atomic_directory(output_url, s3, job="clean") as staging:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_bytes(storage.join(staging, "cleaned_manifest.parquet"), sink.getvalue().to_pybytes(), s3)
        storage.write_bytes(storage.join(staging, "cleaned_manifest.csv"), table_csv(table), s3)
        storage.write_bytes(storage.join(staging, "clusters.csv"), table_csv(pa.Table.from_pylist(cleaned.clusters)), s3)
        for name, data in page.files.items():
            storage.write_bytes(storage.join(staging, "review", name), data, s3)
        summary["seconds"] = round(time.time() - started, 1)
        summary["review_montages"] = page.montages
        storage.write_json(storage.join(staging, "summary.json"), summary, s3)
        storage.write_json(storage.join(staging, "conf.json"), settings.values, s3)
    log.info("clean: %d rows -> keep %d, relabel %d, drop %d; %d suspicious clusters; %s", len(oof), *(summary["actions"][a] for a in ACTIONS), len(summary["suspicious_clusters"]), output_url)
    return summary


def table_csv(table: pa.Table) -> bytes:
    """UTF-8 CSV with a header; floats as written by Arrow (full precision)."""
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()
