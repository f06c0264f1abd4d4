"""Text normalisation: the one function training and scoring share."""
from __future__ import annotations

import pytest

from museum_typology.text import normalize, tokenize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Монета. Екатерина II. Две копейки. 1789 г.", "монета екатерина ii две копейки <year> год"),
        ("Ёлка с ЁЖИКОМ", "елка с ежиком"),  # ё -> е, case folded
        ("Домъ купца Ѳедорова, XIX в.", "дом купца федорова <century> век"),  # pre-reform letters, century
        ("Xрам Cпаса", "храм спаса"),  # Latin look-alikes inside Cyrillic words
        ("Magdeburg", "magdeburg"),  # real Latin words stay Latin
        ("Брошюра. СПб., 1909.", "брошюра санкт-петербург <year>"),
        ("Фото ч/б. На з-де \"Микрон\"", "фото черно-белая на завод микрон"),
        ("Монета номиналом 15  копеек", "монета номиналом <num> копеек"),
        ("«Кот манул». Рисунок,\nакварель", "кот манул рисунок акварель"),  # quotes, newline
        ("Лунёв В.И. \"Яхты\"", "лунев в и яхты"),  # initials are not centuries
        ("", ""),
        (None, ""),
        ("... ,,, !!!", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_tokenize_is_normalize_split():
    assert tokenize("Сосуд. Фрагмент.") == ["сосуд", "фрагмент"]


def test_normalize_is_idempotent():
    # Scoring may see text that was already normalised (e.g. a cleaned manifest); it must not drift.
    for raw in ["Монета. 1789 г.", "Домъ XIX в.", "Фото ч/б", "Xрам 15 коп."]:
        once = normalize(raw)
        assert normalize(once) == once
