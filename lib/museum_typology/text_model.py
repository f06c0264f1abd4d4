"""The text model: word vectors (FastText skip-gram + navec) feeding a BiLSTM, blended with a
linear member (character/word TF-IDF next to pooled word vectors, LinearSVC), calibrated on
out-of-fold predictions.

Training runs K stratified, grouped folds; the K fold models of each member are the bundle, and
their out-of-fold probabilities are what the blend weight and the temperature are fitted on. The
temperature makes the blend's confidences roughly honest; the per-class offsets fitted after it
for macro-F1 skew them again (README: ECE and how often a confidence >= 0.7 is right).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import InputRow
from .config import ConfigError, Settings, checked_numbers, number_within
from .log import get_logger
from .schema import CLASS_INDEX, CLASSES
from .text import normalize

log = get_logger(__name__)
NUM_CLASSES = len(CLASSES)
LSTM_POOLINGS = ("max_avg", "max_attention")  # text.lstm_pooling
LSTM_BACKWARDS = ("keras_unrolled", "reversed")  # text.lstm_backward


@dataclass(frozen=True)
class TextSettings:
    folds: int
    seed: int
    max_len: int
    w2v_dim: int
    w2v_window: int
    w2v_epochs: int
    w2v_min_count: int
    w2v_buckets: int
    use_navec: bool
    lstm_units: int
    projection_dim: int
    dropout: float
    epochs: int
    batch_size: int
    learning_rate: float
    tfidf_C: float
    baseline_C: float
    blend_grid: tuple[float, ...]
    # Weight of the pooled word vectors beside the TF-IDF features in the linear member; 0 = the
    # TF-IDF-only member of bundles written before it existed (their conf.json lacks the key).
    tfidf_vectors_weight: float = 0.0
    # BiLSTM shape; the defaults are the architecture of bundles written before these existed.
    lstm_layers: int = 2
    lstm_pooling: str = "max_avg"
    lstm_seeds: int = 1  # BiLSTMs per fold, averaged
    # How the backward LSTM reads a title (see bidirectional_lstm); bundles written before the setting
    # existed ran Keras' own unrolled Bidirectional, and are scored with it.
    lstm_backward: str = "keras_unrolled"

    def __post_init__(self) -> None:
        # checked when the settings are read, not minutes later when the first network is built
        if self.lstm_pooling not in LSTM_POOLINGS:
            raise ConfigError(f"text.lstm_pooling: {self.lstm_pooling!r} is none of {', '.join(LSTM_POOLINGS)}")
        if self.lstm_backward not in LSTM_BACKWARDS:
            raise ConfigError(f"text.lstm_backward: {self.lstm_backward!r} is none of {', '.join(LSTM_BACKWARDS)}")

    @classmethod
    def from_settings(cls, settings: Settings) -> TextSettings:
        """The [text] settings, each checked for its range here: ``lstm_seeds = 0`` trained a bundle
        whose every text probability was NaN at scoring, ``folds = 0`` or ``5.5`` failed after the
        image stage with a traceback."""
        section = settings.section("text")
        counts = [name for name, spec in cls.__dataclass_fields__.items() if spec.type == "int"]
        values = checked_numbers("text", {name: section[name] for name in cls.__dataclass_fields__}, counts, TEXT_COUNT_MINIMUM, TEXT_NUMBER_RANGES)
        grid = values["blend_grid"]
        if not isinstance(grid, list) or not grid:
            raise ConfigError(f"text.blend_grid = {grid!r}: must be a non-empty list of BiLSTM weights in [0, 1]")
        values["blend_grid"] = tuple(number_within("text.blend_grid", x, 0.0, 1.0) for x in grid)
        return cls(**values)


# Smallest values of the [text] counts (1 unless named); ranges (low, high, low included, high
# included) of its real-valued settings.
TEXT_COUNT_MINIMUM = {"folds": 2, "seed": 0, "w2v_min_count": 0}  # gensim reads min_count 0 as 1
TEXT_NUMBER_RANGES = {
    "dropout": (0.0, 1.0, True, False),
    "learning_rate": (0.0, float("inf"), False, True),
    "tfidf_C": (0.0, float("inf"), False, True),
    "baseline_C": (0.0, float("inf"), False, True),
    "tfidf_vectors_weight": (0.0, float("inf"), True, True),
}


@dataclass
class LabelledTexts:
    guids: list[str]
    texts: list[str]  # normalised
    y: np.ndarray  # class indices in CLASSES order

    def __len__(self) -> int:
        return len(self.guids)


def labelled_texts(rows: Sequence[InputRow]) -> LabelledTexts:
    """The rows a text model can learn from: accepted, labelled, with a description that has words
    (one such as "—" normalises to nothing: score gives it no text prediction, so its out-of-fold
    row would be one scoring can never make)."""
    accepted = [r for r in rows if r.rejected_reason is None and r.typology is not None and r.description]
    chosen = [(r, text) for r in accepted if (text := normalize(r.description))]
    return LabelledTexts(
        guids=[r.guid for r, _ in chosen],  # type: ignore[misc]
        texts=[text for _, text in chosen],
        y=np.array([CLASS_INDEX[r.typology] for r, _ in chosen], dtype=np.int64),  # type: ignore[index]
    )


def data_hash(data: LabelledTexts) -> str:
    digest = hashlib.sha256()
    for guid, text, label in sorted(zip(data.guids, data.texts, data.y.tolist())):
        digest.update(f"{guid}\t{text}\t{label}\n".encode())
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    # Reaches child processes only: this process's str hashes were seeded when it started, so
    # nothing that reaches a result may depend on the iteration order of a set or dict of strings.
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fold_ids(data: LabelledTexts, folds: int, seed: int) -> np.ndarray:
    """Stratified folds with identical normalised titles grouped, so a duplicate title never
    sits on both sides of a split (the 2021 data has many).

    Greedy and deterministic: each group (largest first, ties in seeded random order) goes to the
    fold holding the fewest rows of the group's majority class, then the fewest rows overall.
    sklearn's StratifiedGroupKFold can leave a fold empty when groups are few and even.
    """
    rng = np.random.default_rng(seed)
    group_of = np.unique(np.array(data.texts), return_inverse=True)[1]
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(int(g), []).append(i)
    order = list(members)
    rng.shuffle(order)
    order.sort(key=lambda g: -len(members[g]))
    per_class = np.zeros((folds, NUM_CLASSES), dtype=np.int64)
    totals = np.zeros(folds, dtype=np.int64)
    result = np.full(len(data), -1, dtype=np.int64)
    for g in order:
        rows = members[g]
        majority = int(np.bincount(data.y[rows], minlength=NUM_CLASSES).argmax())
        fold = min(range(folds), key=lambda k: (per_class[k, majority], totals[k], k))
        result[rows] = fold
        per_class[fold] += np.bincount(data.y[rows], minlength=NUM_CLASSES)
        totals[fold] += len(rows)
    return result


# ---------------------------------------------------------------- the TF-IDF members


def tfidf_features(char_range: tuple[int, int] = (2, 5)):
    """Character n-grams (robust to typos, inflection, pre-reform spelling) + word uni/bigrams."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(
        TfidfVectorizer(analyzer="char_wb", ngram_range=char_range, min_df=2, sublinear_tf=True),
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"\S+"),
    )


def make_linear_svc(C: float, seed: int):
    """Char+word TF-IDF + LinearSVC with balanced class weights, at ``text.baseline_C``: the simple
    baseline we must beat, trained in the same folds as the model (``LinearMember`` is these
    features plus word vectors)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    return make_pipeline(tfidf_features(), LinearSVC(C=C, class_weight="balanced", random_state=seed))


class LinearMember:
    """The linear member: the baseline's char+word TF-IDF features next to the pooled word vectors
    of each title (``Embedder.pooled``, scaled by ``vectors_weight``), one LinearSVC with balanced
    class weights. The TF-IDF n-grams only know strings seen in training; the vectors let
    "халцедон" or "буссоль" borrow from words with similar contexts (FastText over every
    description, navec over Russian news). Cross-validated on the shared data this beat the
    TF-IDF-only SVC by 0.012-0.024 macro-F1 on each of four fold seeds.

    ``decision_function(texts, vectors)``: ``vectors`` are ``Embedder.pooled(texts)``.
    """

    def __init__(self, C: float, vectors_weight: float, seed: int):
        from sklearn.svm import LinearSVC

        self.features = tfidf_features()
        self.vectors_weight = float(vectors_weight)
        self.svc = LinearSVC(C=C, class_weight="balanced", random_state=seed)

    def _matrix(self, texts: Sequence[str], vectors: np.ndarray | None, fit: bool = False, sparse=None):
        import scipy.sparse as sp

        if sparse is None:
            sparse = self.features.fit_transform(list(texts)) if fit else self.features.transform(list(texts))
        if not self.vectors_weight:
            return sparse
        if vectors is None or len(vectors) != len(texts):
            raise ValueError("the linear member needs the pooled word vectors of its texts")
        return sp.hstack([sparse, sp.csr_matrix(self.vectors_weight * np.asarray(vectors, dtype=np.float64))], format="csr")

    def fit(self, texts: Sequence[str], vectors: np.ndarray | None, y: np.ndarray) -> LinearMember:
        self.svc.fit(self._matrix(texts, vectors, fit=True), y)
        return self

    @property
    def classes_(self) -> np.ndarray:
        return self.svc.classes_

    def decision_function(self, texts: Sequence[str], vectors: np.ndarray | None = None, sparse=None) -> np.ndarray:
        """``sparse``: the texts' TF-IDF features when already made (``FoldFeatures``)."""
        return self.svc.decision_function(self._matrix(texts, vectors, sparse=sparse))


MISSING_CLASS_MARGIN = -10.0


def margins(model, texts: Sequence[str], vectors: np.ndarray | None = None, sparse=None) -> np.ndarray:
    """decision_function over all 15 classes (a fold may lack a rare class: a very low margin).
    ``model`` is a ``make_linear_svc`` pipeline or a ``LinearMember`` (which also takes the
    texts' pooled word vectors, and their TF-IDF features when ``FoldFeatures`` made them)."""
    scores = model.decision_function(list(texts), vectors, sparse) if isinstance(model, LinearMember) else model.decision_function(list(texts))
    if scores.ndim == 1:  # a model of two classes gives one margin per text: for classes_[1] over classes_[0]
        scores = np.stack([-scores, scores], axis=1)
    full = np.full((len(texts), NUM_CLASSES), MISSING_CLASS_MARGIN, dtype=np.float64)
    full[:, model.classes_] = scores
    return full


class FoldFeatures:
    """Every fold member's TF-IDF features of the same texts from one pass of n-gram analysis.

    Each fold's vectorisers learnt their own vocabulary and idf, so scoring cut a chunk's titles
    into character and word n-grams once per fold, 5 times over: three quarters of the linear
    members' time. Here the n-grams are counted once, over the union of the folds' vocabularies,
    and each fold takes its own columns of those counts: the very counts its vectoriser would
    make, so its own idf and norm give its features to the bit.
    """

    def __init__(self, unions: Sequence[Any]):
        from sklearn.feature_extraction.text import CountVectorizer

        self.folds = len(unions)
        self.counters: list[Any] = []
        self.vectorisers: list[list[Any]] = []  # [part of the union][fold]
        self.columns: list[list[np.ndarray]] = []  # [part][fold]: the fold's feature j is the counts' column columns[j]
        count_params = set(CountVectorizer().get_params())
        for part in zip(*(union.transformer_list for union in unions)):
            vectorisers = [vectoriser for _name, vectoriser in part]
            params = {k: v for k, v in vectorisers[0].get_params().items() if k in count_params}
            vocabulary: dict[str, int] = {}
            columns = []
            for vectoriser in vectorisers:
                column = np.empty(len(vectoriser.vocabulary_), dtype=np.int64)
                for term, j in vectoriser.vocabulary_.items():
                    column[j] = vocabulary.setdefault(term, len(vocabulary))
                columns.append(column)
            self.counters.append(CountVectorizer(**{**params, "vocabulary": vocabulary, "min_df": 1, "max_df": 1.0, "max_features": None}))
            self.vectorisers.append(vectorisers)
            self.columns.append(columns)

    @classmethod
    def of(cls, members: Sequence[Any]) -> FoldFeatures | None:
        """For fold members whose vectorisers cut text alike; None otherwise (older bundles'
        pipelines, or settings that differ between folds): each fold then makes its own."""
        if len(members) < 2 or not all(isinstance(m, LinearMember) for m in members):
            return None
        unions = [m.features for m in members]
        shapes = {tuple(name for name, _ in union.transformer_list) for union in unions}
        if len(shapes) != 1 or any(union.transformer_weights for union in unions):
            return None
        if not all(hasattr(part, "vocabulary_") and hasattr(part, "_tfidf") for union in unions for _name, part in union.transformer_list):
            return None  # a part dropped or passed through, or not a fitted TF-IDF vectoriser
        for part in zip(*(union.transformer_list for union in unions)):
            settings = [{k: v for k, v in vectoriser.get_params().items() if k != "vocabulary"} for _name, vectoriser in part]
            if any(s != settings[0] for s in settings[1:]) or any(getattr(v, "fixed_vocabulary_", False) for _name, v in part):
                return None
        return cls(unions)

    def transform(self, texts: Sequence[str]) -> list[Any]:
        """[fold] -> the texts' features as that fold's ``features.transform`` makes them."""
        import scipy.sparse as sp

        counts = [counter.transform(list(texts)) for counter in self.counters]
        out = []
        for fold in range(self.folds):
            parts = []
            for part, counted in enumerate(counts):
                vectoriser = self.vectorisers[part][fold]
                chosen = counted[:, self.columns[part][fold]]
                chosen.sort_indices()
                if vectoriser.binary:
                    chosen.data.fill(1)
                parts.append(vectoriser._tfidf.transform(chosen, copy=False))
            out.append(sp.hstack(parts).tocsr())
        return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- word vectors


class Embedder:
    """Token -> vector: navec (pretrained, 300d; zeros when unknown) next to FastText trained on
    our own descriptions (subword n-grams give typos and unseen words a vector too)."""

    def __init__(self, fasttext_vectors, navec_table: dict[str, np.ndarray], max_len: int):
        self.fasttext = fasttext_vectors  # gensim FastTextKeyedVectors
        self.navec = navec_table
        self.max_len = max_len
        self.navec_dim = len(next(iter(navec_table.values()))) if navec_table else 0
        self.dim = self.fasttext.vector_size + self.navec_dim
        self._cache: dict[str, np.ndarray] = {}

    def vector(self, token: str) -> np.ndarray:
        cached = self._cache.get(token)
        if cached is None:
            parts = [self.fasttext[token]]
            if self.navec_dim:
                parts.append(self.navec.get(token, np.zeros(self.navec_dim, dtype=np.float32)))
            cached = np.concatenate(parts).astype(np.float32)
            if len(self._cache) < 500_000:
                self._cache[token] = cached
        return cached

    def pooled(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised texts -> [n, 2 * dim] float32: the mean of each title's token vectors next to
        its first token's vector (titles mostly open with the object's type: "монета",
        "фотография", "брошюра"), scaled to unit length; zeros for an empty title."""
        out = np.zeros((len(texts), 2 * self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            tokens = text.split()
            if not tokens:
                continue
            vectors = np.stack([self.vector(token) for token in tokens])
            row = np.concatenate([vectors.mean(axis=0), vectors[0]])
            out[i] = row / max(float(np.linalg.norm(row)), 1e-9)
        return out

    def token_ids(self, texts: Sequence[str]) -> TokenIds:
        """Normalised texts -> their first ``max_len`` tokens as ids into one table of the texts'
        distinct words' vectors (the BiLSTM's input, looked up a batch at a time)."""
        index: dict[str, int] = {}
        ids = np.zeros((len(texts), self.max_len), dtype=np.int32)
        for i, text in enumerate(texts):
            for j, token in enumerate(text.split()[: self.max_len]):
                ids[i, j] = index.setdefault(token, len(index) + 1)
        table = np.zeros((len(index) + 1, self.dim), dtype=np.float32)
        for token, k in index.items():
            table[k] = self.vector(token)
        return TokenIds(ids, table)


@dataclass(frozen=True)
class TokenIds:
    """Titles as token ids (``ids``: [n, max_len] int32, 0 = padding) into a table of word vectors
    (``table``: [distinct tokens + 1, dim] float32, row 0 zeros). The BiLSTM reads [max_len, dim]
    vectors per title; built for every title at once they were n x 24 x 400 floats (7 GB at 180K
    titles, and each fold's training rows copied again), while the ids and the table of a
    catalogue's vocabulary are a few hundred MB."""

    ids: np.ndarray
    table: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: np.ndarray) -> TokenIds:
        return TokenIds(self.ids[index], self.table)

    def vectors(self) -> np.ndarray:
        """[n, max_len, dim] float32: each title's word vectors, zeros where it has no token."""
        return self.table[self.ids]


def load_navec_table(vocabulary: set[str]) -> dict[str, np.ndarray]:
    """The navec vectors of the words we need (the full table is 250K x 300, unpacked on demand).
    navec's own ``as_gensim`` breaks with gensim 4.3, so its product-quantised table is read here."""
    from navec import Navec
    from natasha.emb import NEWS_EMBEDDING  # the file natasha ships

    navec = Navec.load(NEWS_EMBEDDING)
    table = navec.pq.unpack()
    found = {}
    for word in sorted(vocabulary):
        index = navec.vocab.get(word)
        if index is not None:
            found[word] = table[index].astype(np.float32)
    return equalise_navec_scale(found)


def equalise_navec_scale(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """navec's vectors are ~3x the scale of our FastText ones: divide them by their mean length so
    neither half of a token's vector dominates.

    The mean is summed over the words in sorted order, in float64: summed in the order of a set of
    words (which follows the process's string-hash seed), its last bits, and so every input of
    the BiLSTM, changed from run to run, and a fold's network trained differently."""
    if not table:
        return {}
    words = sorted(table)
    scale = float(np.mean([np.linalg.norm(table[w].astype(np.float64)) for w in words]))
    return {w: table[w] / np.float32(max(scale, 1e-6)) for w in words}


def train_word_vectors(corpus: Sequence[str], ts: TextSettings):
    from gensim.models import FastText

    sentences = [t.split() for t in corpus if t]
    model = FastText(
        vector_size=ts.w2v_dim,
        window=ts.w2v_window,
        sg=1,
        min_count=ts.w2v_min_count,
        bucket=ts.w2v_buckets,
        seed=ts.seed,
        workers=1,  # one worker: gensim is deterministic only single-threaded
    )
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=ts.w2v_epochs)
    vectors = model.wv
    # Unit-normalise the scale so navec and FastText halves weigh alike. All three arrays: gensim
    # does not save ``vectors`` but recomposes them from ``vectors_vocab`` and ``vectors_ngrams``
    # on load, so scaling only two of them gave scoring other word vectors than training had.
    norm = float(np.mean(np.linalg.norm(vectors.vectors, axis=1))) or 1.0
    vectors.vectors /= norm
    vectors.vectors_vocab /= norm
    vectors.vectors_ngrams /= norm
    return vectors


# ---------------------------------------------------------------- the BiLSTM member


def build_bilstm(max_len: int, dim: int, ts: TextSettings):
    """Masked word vectors -> tanh projection -> ``lstm_layers`` bidirectional LSTMs -> pooled
    over the tokens (``lstm_pooling``: "max_avg", or "max_attention": max pooling next to an
    additive attention that learns which tokens name the object) -> dense -> softmax."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=(max_len, dim), name="tokens")
    x = layers.Masking(mask_value=0.0)(inputs)
    x = layers.SpatialDropout1D(ts.dropout / 2)(x)
    # Project the 400-d word vectors down first: the recurrent layers then cost a third as much.
    x = layers.Dense(ts.projection_dim, activation="tanh", name="projection")(x)
    token_mask = layers.Lambda(lambda t: tf.reduce_any(tf.not_equal(t, 0.0), -1), name="token_mask")(inputs)
    x = bidirectional_lstm(x, token_mask, ts.lstm_units, ts.lstm_backward, "lstm1")
    if ts.lstm_layers >= 2:
        x = bidirectional_lstm(x, token_mask, ts.lstm_units // 2, ts.lstm_backward, "lstm2")
    if ts.lstm_pooling == "max_avg":
        pooled = layers.Concatenate()([layers.GlobalMaxPooling1D()(x), layers.GlobalAveragePooling1D()(x)])
    else:  # "max_attention" (TextSettings refuses any other)
        scores = layers.Dense(1)(layers.Dense(64, activation="tanh")(x))
        scores = layers.Lambda(lambda s: tf.squeeze(s, -1), name="attention_scores")(scores)
        attention = layers.Softmax(name="attention")(scores, mask=token_mask)  # padding gets no weight
        pooled = layers.Concatenate()([layers.GlobalMaxPooling1D()(x), layers.Dot(axes=1)([attention, x])])
    x = layers.Dropout(ts.dropout)(pooled)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="proba")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.Adam(ts.learning_rate), loss="sparse_categorical_crossentropy")
    return model


def bidirectional_lstm(x, token_mask, units: int, backward: str, name: str):
    """An LSTM over each title's tokens forwards and one backwards (layers ``{name}_forward`` and
    ``{name}_backward``), their outputs side by side (layer ``name``; zeros at the padding after
    the title).

    unroll=True: titles are short (max_len steps), and Keras 2.15's LSTM otherwise builds a
    cuDNN/CPU backend-selection graph with gradients for every layer, ~20 s per model on 2 cores.
    But Keras 2.15's unrolled ``Bidirectional`` ("keras_unrolled") mis-masks its backward half: it
    zeroes the backward outputs by the mask of the unreversed sequence, so for a title padded at
    the end the outputs at its own tokens are zeroed and those of the padding kept, and those are
    zeros too (a masked step outputs zeros). For titles of up to half of ``max_len`` tokens (most of
    them) the backward half reads nothing; for longer ones it reads a shifted part. "reversed"
    turns each title's tokens around within its length (``tf.reverse_sequence``, the padding staying
    after it), runs a forward LSTM over them and turns its outputs back: the backward LSTM as meant
    (the unit test compares it with Keras' non-unrolled ``Bidirectional``).
    """
    import tensorflow as tf

    layers = tf.keras.layers
    if backward == "keras_unrolled":
        return layers.Bidirectional(layers.LSTM(units, return_sequences=True, unroll=True), name=name)(x)
    # A title's tokens come first and padding after, with no gap: a word's FastText vector is made
    # of its character n-grams and is never all zeros, so the count of unmasked steps is its length.
    lengths = layers.Lambda(lambda m: tf.reduce_sum(tf.cast(m, tf.int32), axis=1), name=f"{name}_lengths")(token_mask)
    turn = layers.Lambda(lambda pair: tf.reverse_sequence(pair[0], pair[1], seq_axis=1, batch_axis=0), name=f"{name}_turn")
    forward = layers.LSTM(units, return_sequences=True, unroll=True, zero_output_for_mask=True, name=f"{name}_forward")(x, mask=token_mask)
    backward_outputs = layers.LSTM(units, return_sequences=True, unroll=True, zero_output_for_mask=True, name=f"{name}_backward")(turn([x, lengths]), mask=token_mask)
    return layers.Concatenate(name=name)([forward, turn([backward_outputs, lengths])])


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights, square-rooted: rare classes count, without 40x gradients on 14 samples."""
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    weights = np.where(counts > 0, (len(y) / (NUM_CLASSES * np.maximum(counts, 1))) ** 0.5, 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


class BiLstmRunner:
    """One compiled Keras BiLSTM reused for every fold: each fold starts from the same initial
    weights and a zeroed optimizer. Building and tracing a recurrent Keras model costs tens of
    seconds on 2 cores, training one fold a few, so K folds share one graph.

    ``fit(tokens, y, seed_index)``: seed ``s`` starts from its own initial weights (drawn once, with
    ``text.seed + s``) and its own shuffling and dropout, so the ``text.lstm_seeds`` networks of a
    fold differ only by chance, which their average removes."""

    def __init__(self, max_len: int, dim: int, ts: TextSettings):
        self.ts = ts
        self.shape = (max_len, dim)
        self.model = build_bilstm(max_len, dim, ts)
        self.initial = {0: self.model.get_weights()}

    def _initial(self, seed_index: int) -> list[np.ndarray]:
        if seed_index not in self.initial:
            import tensorflow as tf

            tf.keras.utils.set_random_seed(self.ts.seed + seed_index)
            self.initial[seed_index] = build_bilstm(*self.shape, self.ts).get_weights()  # weights only: nothing is traced
        return self.initial[seed_index]

    def fit(self, tokens: TokenIds, y: np.ndarray, seed_index: int = 0) -> list[np.ndarray]:
        import tensorflow as tf
        from keras.src.engine import data_adapter

        self.model.set_weights(self._initial(seed_index))
        for variable in self.model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype.as_numpy_dtype))
        tf.keras.utils.set_random_seed(self.ts.seed + seed_index)
        # Keras' own batching of arrays (what ``fit(x, y, shuffle=True)`` builds: each epoch's
        # permutation, its batches gathered from the arrays) over the token ids, each batch's
        # word vectors looked up after the gather: the batches, and so the trained weights, are
        # those of fitting on the whole [titles, max_len, dim] array, which is never built. The
        # adapter is Keras 2.15's (pinned with TensorFlow for Horovod); the runner's unit test
        # compares against a fit on the whole array, so another version's batching shows there.
        titles = data_adapter.TensorLikeDataAdapter(tokens.ids, y, batch_size=self.ts.batch_size, epochs=self.ts.epochs, shuffle=True)
        batches = self._looked_up(titles.get_dataset(), tokens.table)
        self.model.fit(batches, epochs=self.ts.epochs, steps_per_epoch=titles.get_size(), class_weight=class_weights(y), verbose=0)
        return self.model.get_weights()

    def predict(self, weights: list[np.ndarray], tokens: TokenIds) -> np.ndarray:
        return self.predict_mean([weights], tokens)

    def predict_mean(self, networks: Sequence[list[np.ndarray]], tokens: TokenIds) -> np.ndarray:
        """The mean of the ``networks``' (weights') probabilities for ``tokens``, whose batches are
        set up once for all of them."""
        import tensorflow as tf

        batches = self._looked_up(tf.data.Dataset.from_tensor_slices(tokens.ids).batch(1024), tokens.table)
        outputs = []
        for weights in networks:
            self.model.set_weights(weights)
            outputs.append(self.model.predict(batches, verbose=0))
        return np.mean(outputs, axis=0)

    @staticmethod
    def _looked_up(batches, table: np.ndarray):
        """Batches of token ids (alone, or first of a tuple) -> the same batches with their word
        vectors in place of the ids (memory: the table, not every title's vectors)."""
        import tensorflow as tf

        vectors = tf.constant(table)

        def look_up(ids, *rest):
            found = tf.gather(vectors, ids)
            return (found, *rest) if rest else found

        return batches.map(look_up)


# ---------------------------------------------------------------- blend and calibration


def blend(lstm: np.ndarray, tfidf: np.ndarray, weight: float) -> np.ndarray:
    return weight * lstm + (1.0 - weight) * tfidf


def blend_logits(lstm: np.ndarray | float, tfidf: np.ndarray | float, weight: float) -> np.ndarray:
    """The log of the members' blend: what the class offsets are added to and the temperature
    divides, in training (on out-of-fold predictions) and in scoring alike."""
    return np.log(np.clip(blend(lstm, tfidf, weight), 1e-9, 1.0))


def fit_logit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log-loss of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    def nll(t: float) -> float:
        scaled = apply_temperature_logits(logits, t)
        return float(-np.mean(np.log(np.clip(scaled[np.arange(len(y)), y], 1e-12, 1.0))))

    return float(minimize_scalar(nll, bounds=(0.02, 10.0), method="bounded").x)


def apply_temperature_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(logits, temperature)


# ---------------------------------------------------------------- the trained model


@dataclass
class TextModel:
    """K fold models of each member plus the embedder, blend weight and temperature."""

    embedder: Embedder
    lstm_folds: list[list[np.ndarray]]  # weights of each fold's BiLSTMs (lstm_seeds per fold)
    tfidf_folds: list[Any]  # LinearMember per fold (make_linear_svc pipelines in older bundles)
    weight: float
    temperature: float
    version: str = ""
    tfidf_temperature: float = 1.0  # softmax temperature of the linear member's margins
    offsets: np.ndarray | None = None  # per-class log-probability offsets for macro-F1
    settings: TextSettings | None = None
    normalization: int = 1  # text.normalize's rules the model was trained on (bundles before the version: 1)
    _runner: BiLstmRunner | None = None
    _fold_features: FoldFeatures | None | bool = False  # False: not made yet (None: the folds cannot share)

    def fold_features(self) -> FoldFeatures | None:
        if self._fold_features is False:
            self._fold_features = FoldFeatures.of(self.tfidf_folds)
        return self._fold_features  # type: ignore[return-value]

    def runner(self) -> BiLstmRunner:
        if self._runner is None:
            assert self.settings is not None
            self._runner = BiLstmRunner(self.embedder.max_len, self.embedder.dim, self.settings)
        return self._runner

    def predict_proba(self, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
        """Calibrated probabilities [n, 15] for normalised texts (empty texts get uniform rows;
        callers decide what to do with them)."""
        out = np.zeros((len(texts), NUM_CLASSES), dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            if self.weight < 1:
                vectors = self.embedder.pooled(chunk) if any(isinstance(m, LinearMember) and m.vectors_weight for m in self.tfidf_folds) else None
                shared = self.fold_features()
                sparse = shared.transform(chunk) if shared is not None else [None] * len(self.tfidf_folds)
                tfidf = np.mean([softmax(margins(m, chunk, vectors, x), self.tfidf_temperature) for m, x in zip(self.tfidf_folds, sparse)], axis=0)
            else:
                tfidf = 0.0
            if self.weight > 0:
                tokens = self.embedder.token_ids(chunk)
                lstm = self.runner().predict_mean(self.lstm_folds, tokens)
            else:
                lstm = 0.0
            logits = blend_logits(lstm, tfidf, self.weight)
            if self.offsets is not None:  # zeros when the training run found they did not help
                logits = logits + self.offsets
            out[start : start + len(chunk)] = softmax(logits, self.temperature)
        return out

    # -- bundle I/O: a directory of plain files (the storage layer moves it to S3 if needed)

    def save(self, directory: Path, extra: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.embedder.fasttext.save(str(directory / "fasttext.kv"))
        # navec_dim, not -1: with text.use_navec off the table is empty, and reshape(0, -1) fails.
        np.save(directory / "navec_subset.npy", np.array([self.embedder.navec[w] for w in sorted(self.embedder.navec)], dtype=np.float32).reshape(len(self.embedder.navec), self.embedder.navec_dim))
        (directory / "navec_subset_words.json").write_text(json.dumps(sorted(self.embedder.navec), ensure_ascii=False))
        for k, weights in enumerate(self.lstm_folds):
            np.savez(directory / f"lstm_fold{k}.npz", *weights)
        with open(directory / "tfidf_folds.pkl", "wb") as handle:
            pickle.dump(self.tfidf_folds, handle, protocol=pickle.HIGHEST_PROTOCOL)
        (directory / "classes.json").write_text(json.dumps(list(CLASSES), ensure_ascii=False, indent=1))
        calibration = {"weight": self.weight, "temperature": self.temperature, "tfidf_temperature": self.tfidf_temperature,
            "offsets": None if self.offsets is None else self.offsets.tolist(), "max_len": self.embedder.max_len, "folds": len(self.tfidf_folds), "lstm_models": len(self.lstm_folds), "normalization": self.normalization}
        (directory / "calibration.json").write_text(json.dumps(calibration, indent=1))
        for name, value in extra.items():
            (directory / name).write_text(json.dumps(value, ensure_ascii=False, indent=1, default=str))

    @classmethod
    def load(cls, directory: Path) -> TextModel:
        from gensim.models.fasttext import FastTextKeyedVectors

        classes = json.loads((directory / "classes.json").read_text())
        if classes != list(CLASSES):
            raise ValueError(f"{directory}: bundle classes differ from this version's class order")
        calibration = json.loads((directory / "calibration.json").read_text())
        conf = json.loads((directory / "conf.json").read_text())
        ts = TextSettings(**{**conf["text"], "blend_grid": tuple(conf["text"]["blend_grid"])})
        words = json.loads((directory / "navec_subset_words.json").read_text())
        vectors = np.load(directory / "navec_subset.npy")
        embedder = Embedder(FastTextKeyedVectors.load(str(directory / "fasttext.kv")), dict(zip(words, vectors)), calibration["max_len"])
        lstm_folds = []
        for k in range(calibration.get("lstm_models", calibration["folds"])):
            with np.load(directory / f"lstm_fold{k}.npz") as arrays:
                lstm_folds.append([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        with open(directory / "tfidf_folds.pkl", "rb") as handle:
            tfidf_folds = pickle.load(handle)
        return cls(
            embedder,
            lstm_folds,
            tfidf_folds,
            calibration["weight"],
            calibration["temperature"],
            version=directory.name,
            tfidf_temperature=calibration["tfidf_temperature"],
            offsets=None if calibration.get("offsets") is None else np.array(calibration["offsets"]),
            settings=ts,
            normalization=int(calibration.get("normalization", 1)),
        )


def settings_dict(ts: TextSettings) -> dict[str, Any]:
    return asdict(ts)


# ---------------------------------------------------------------- macro-F1 class offsets


def fit_class_offsets(log_proba: np.ndarray, y: np.ndarray, rounds: int = 3, grid: Sequence[float] = tuple(np.linspace(-2.0, 2.0, 21))) -> np.ndarray:
    """Per-class additive offsets on log-probabilities that maximise macro-F1 (coordinate ascent).

    The metric weighs every class alike, while a probabilistic model trades rare-class recall for
    accuracy; offsets move each class's decision boundary back. Small steps, few rounds: 15
    numbers fitted on a few thousand rows.
    """
    from .report import macro_f1

    offsets = np.zeros(log_proba.shape[1])
    labels = sorted(set(y.tolist()))
    best = macro_f1(y, (log_proba + offsets).argmax(1), labels)
    for _ in range(rounds):
        improved = False
        for c in labels:
            for value in grid:
                trial = offsets.copy()
                trial[c] = value
                score = macro_f1(y, (log_proba + trial).argmax(1), labels)
                if score > best + 1e-9:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return offsets

