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
        # ... nor villages, towns or centuries (version 1 read them so in about 4% of the titles)
        ("Письмо М.И. Ульяновой В.С. Попову", "письмо м и ульяновой в с попову"),
        ("Степанова Г.Д. в роли", "степанова г д в роли"),
        ("Портрет Руднева В. В.", "портрет руднева в в"),
        ("Фотография С. Прокудина-Горского", "фотография с прокудина-горского"),
        ("Открытка. с. Ивановка, г. Тверь", "открытка село ивановка город тверь"),  # lower-case ones still are
        ("ХIХ в.", "<century> век"),  # a Cyrillic Х beside a Latin I
        ("Cпб., 1909", "санкт-петербург <year>"),  # a Latin C in an abbreviation
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
    for raw in ["Монета. 1789 г.", "Домъ XIX в.", "Фото ч/б", "Xрам 15 коп.", "Cпб., 1909", "Письмо М.И. Ульяновой"]:
        once = normalize(raw)
        assert normalize(once) == once


def test_version_1_rules_stay_for_the_bundles_trained_on_them():
    """A text bundle is scored with the rules it was trained on: version 1 must not change."""
    assert normalize("Письмо В.С. Попову", 1) == "письмо в село попову"
    assert normalize("Портрет Руднева В. В.", 1) == "портрет руднева в век"
    assert normalize("ХIХ в.", 1) == "хiх век" and normalize("Cпб., 1909", 1) == "спб <year>"
    assert normalize("Монета. 1789 г.", 1) == normalize("Монета. 1789 г.", 2) == "монета <year> год"
    with pytest.raises(ValueError, match="unknown text normalisation version 3"):
        normalize("x", 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Сборник Т. 1", "сборник том <num>"),  # a volume, a page, a sheet: not initials
        ("Книга С. 25", "книга страниц <num>"),
        ("Журнал Л. 5", "журнал лист <num>"),
        ("Гартман Ф. 1911", "гартман ф <year>"),  # an initial before a year stays one
    ],
)
def test_volume_page_and_sheet_before_a_number_are_not_initials(raw, expected):
    assert normalize(raw) == expected
