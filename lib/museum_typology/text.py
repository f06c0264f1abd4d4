"""Text normalisation shared by training and scoring: one function, so a model never sees text
prepared differently from how it was trained.

Catalogue titles are short and messy: mixed case, ё/е, pre-reform letters (ѣ, і, ѳ, ѵ, final ъ),
Latin look-alike letters inside Cyrillic words, abbreviations (г., гг., см., ок., СПб.), numbers
that mean years, sizes or denominations, quotes of every kind. Numbers are kept as coarse shape
tokens (a year, a century, a plain number) because their kind is informative ("1789 г." points to
coins and documents) while the exact value is not.
"""
from __future__ import annotations

import re
import unicodedata

# Pre-reform orthography -> modern letters.
_PRE_REFORM = str.maketrans({"ѣ": "е", "і": "и", "ї": "и", "ѳ": "ф", "ѵ": "и", "ё": "е"})
# Latin letters that look Cyrillic, used by typists inside Russian words ("Xрам", "oбраз").
_LATIN_TO_CYRILLIC = str.maketrans({"a": "а", "c": "с", "e": "е", "o": "о", "p": "р", "x": "х", "y": "у", "k": "к", "m": "м", "t": "т", "h": "н", "b": "в"})
_CYRILLIC = re.compile(r"[а-я]")
_LATIN = re.compile(r"[a-z]")

# Abbreviations expanded before punctuation is dropped (the dot is what makes them ambiguous).
# Each with a string that every one of its matches contains: a title holds few of them, and a
# substring test is far cheaper than running the pattern (19 patterns ran on every title).
_ABBREVIATIONS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (literal, re.compile(pattern), replacement)
    for literal, pattern, replacement in (
        ("гг.", r"\bгг\.", " годы "),
        ("г.", r"(?<=\d)\s*г\.", " год "),
        ("г.", r"\bг\.(?=\s*[а-я])", " город "),
        ("см.", r"\bсм\.", " см "),
        ("ок.", r"\bок\.", " около "),
        ("спб", r"\bспб\.?", " санкт-петербург "),
        ("дер.", r"\bдер\.", " деревня "),
        ("с.", r"\bс\.(?=\s*[а-я])", " село "),
        ("в.", r"\bв\.(?=\s*$|\s*[,.;])", " век "),
        ("вв.", r"\bвв\.", " века "),
        ("руб.", r"\bруб\.", " рублей "),
        ("коп.", r"\bкоп\.", " копеек "),
        ("ч/б", r"\bч/б\b", " черно-белая "),
        ("ф-ка", r"\bф-ка\b", " фабрика "),
        ("з-д", r"\bз-д(?:а|е|у|ом)?\b", " завод "),
        ("им.", r"\bим\.", " имени "),
        ("т.", r"\bт\.(?=\s*\d)", " том "),
        ("с.", r"\bс\.(?=\s*\d)", " страниц "),
        ("л.", r"\bл\.(?=\s*\d)", " лист "),
    )
)
# A Roman numeral (typed with Latin or Cyrillic х) before "век": a century, e.g. "xix в.".
_ROMAN_CENTURY = re.compile(r"\b(?=[xхvi]+\s)[xх]{0,3}(?:ix|iv|v?i{0,3})\s+(?=век|века|годы)")
# Version 2 also takes a Cyrillic х after the i ("хiх в.", typed with both scripts).
_ROMAN_CENTURY_2 = re.compile(r"\b(?=[xхvi]+\s)[xх]{0,3}(?:i[xх]|iv|v?i{0,3})\s+(?=век|века|годы)")
# Version 3 also leaves a decade's case ending alone: "1920-х гг." is the 1920s, not a century.
# Nor is anything right after a number or a number token (so a second pass keeps "<year> х годы").
_ROMAN_CENTURY_3 = re.compile(r"(?<!\d)(?<!\d-)(?<!\d )(?<!>)(?<!> )" + _ROMAN_CENTURY_2.pattern)
# Name initials, read before lower-casing (where case still tells them from abbreviations): two
# in a row ("М.И. Ульяновой", "В. В."), or one after a capitalised word ("Руднева В."). Version 1
# read them as abbreviations: "В.С. Попову" -> "в село попову", "Г.Д." -> "город д".
_TWO_INITIALS = re.compile(r"\b([А-ЯЁ])\.\s?([А-ЯЁ])\.")
# Not Т., С., Л. before a number: "Сборник Т. 1" is a volume, "С. 25" a page, "Л. 5" a sheet.
_INITIAL_AFTER_NAME = re.compile(r"\b([А-ЯЁ][а-яё]+\s+)(?![ТСЛ]\.\s*\d)([А-ЯЁ])\.(?!\w)")
# Version 3. A Roman numeral typed in both scripts ("ХIII", "IХ": a Cyrillic Х beside Latin I)
# reads as the Latin numeral; only a run of letters that is not one has its Latin i read as the
# pre-reform и ("русскiя" -> "русския"), which a plain i -> и would have done to "ХIII" as well.
_ROMAN = r"(?=[ivxlх])(?:xl|l?[xх]{0,3})(?:i[xх]|iv|v?i{0,3})"
_ROMAN_RUN = re.compile(_ROMAN)
_LETTER_RUN = re.compile(r"[а-яa-z]+")
_CYRILLIC_WORD = re.compile(r"\S*[а-я]\S*")
_LATIN_TO_CYRILLIC_3 = str.maketrans({**{chr(k): v for k, v in _LATIN_TO_CYRILLIC.items()}, "i": "и"})
# A lone Latin letter joined to Cyrillic ones by punctuation ("c.Покровское", "т.e.", "c/х") is a
# look-alike too, unless it can be a Roman numeral (i, v, x, l).
_LONE_LOOK_ALIKES = frozenset(_LATIN_TO_CYRILLIC) - {ord(c) for c in "ivxl"}
# Version 3: "в." / "вв." after a Roman numeral is a century whatever follows ("XIX в.\"",
# "(XX в.)", "III в. до н.э."; versions 1-2 read "в." only before a comma, dot, semicolon or the
# end), also glued to it ("нач. Xв.", "XIXв"), each end of a range too ("Х-ХIIIвв."). Not "в. кн."
# (великий князь: "Николай II в. кн."); see _century_after_roman for the lone х.
_CENTURY_AFTER_ROMAN = re.compile(rf"(?<![а-яa-z])(?:({_ROMAN})\s*[-–—]\s*)?({_ROMAN})(\s*)(вв|в)(?:(\.)(?!\s*кн\b)|(?![а-яa-z.]))")
# What a lone х after these is: a multiplication sign ("40 х в. 60", "ш х в."), not a numeral.
_SIZE_BEFORE = re.compile(r"(?:\d|\bш\.?)\s*$")
_FINAL_HARD_SIGN = re.compile(r"ъ\b")  # pre-reform spelling: "домъ" -> "дом"
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_TOKEN = re.compile(r"<[a-z]+>|[а-яa-z]+(?:-[а-яa-z]+)*")


def _fix_mixed_script(word: str) -> str:
    """A word with both Cyrillic and Latin letters is Cyrillic with look-alike typos."""
    if _CYRILLIC.search(word) and _LATIN.search(word):
        return word.translate(_LATIN_TO_CYRILLIC)
    return word


def _mend_run(run: str) -> str:
    """Version 3's reading of one run of letters inside a word with Cyrillic letters: in both
    scripts, a Roman numeral in Latin, else a Cyrillic word with Latin look-alikes (i among them);
    a lone Latin look-alike letter in Cyrillic; other Latin runs ("№" read as "no", "DT") stay."""
    if _CYRILLIC.search(run):
        if not _LATIN.search(run):
            return run
        return run.replace("х", "x") if _ROMAN_RUN.fullmatch(run) else run.translate(_LATIN_TO_CYRILLIC_3)
    return run.translate(_LATIN_TO_CYRILLIC) if len(run) == 1 and ord(run) in _LONE_LOOK_ALIKES else run


def _fix_mixed_script_3(text: str) -> str:
    return _CYRILLIC_WORD.sub(lambda word: _LETTER_RUN.sub(lambda run: _mend_run(run.group(0)), word.group(0)), text)


def _century_after_roman(match: re.Match[str]) -> str:
    first, last, space, abbreviation, dot = match.groups()
    if not (dot or not space):
        return match.group(0)  # "Наполеон I в России": the preposition
    if not dot and len(last) < 2:
        return match.group(0)  # "Xв" with no dot could be anything
    if last in ("х", "x") and not first and (not space and last == "х" or _SIZE_BEFORE.search(match.string, 0, match.start())):
        return match.group(0)  # "40 х в. 60", "ш х в.", "ХВ." (Христос Воскресе)
    word = "века" if abbreviation == "вв" else "век"
    return f" {first} {word} {last} {word} " if first else f" {last} {word} "


def _number_token(match: re.Match[str]) -> str:
    text = match.group(0)
    if re.fullmatch(r"\d{4}", text) and 1000 <= int(text) <= 2099:
        return " <year> "
    return " <num> "


# The rules' version. A text bundle records the version it was trained with and is scored with
# it (older bundles: 1), so a change here never feeds a model text prepared another way.
# 2: name initials kept as letters (not "село", "город", "век"); "хiх в." is a century; Latin
# look-alikes are mended before the abbreviations ("Cпб." is "СПб.").
# 3: Roman numerals typed in both scripts read as Latin ones and a Latin i in a Cyrillic word as
# и, both per run of letters ("хi-го" is "xi-го"); "в." / "вв." after a Roman numeral is a century
# before any character and when glued to it; "1920-х гг." is no century.
NORMALIZATION_VERSION = 3
KNOWN_VERSIONS = (1, 2, 3)


def normalize(text: str | None, version: int = NORMALIZATION_VERSION) -> str:
    """Lower-cased, letter-normalised, abbreviation-expanded text with number shape tokens, by
    the rules of ``version`` (see ``NORMALIZATION_VERSION``)."""
    if not text:
        return ""
    if version not in KNOWN_VERSIONS:
        raise ValueError(f"unknown text normalisation version {version!r} (this code knows {', '.join(map(str, KNOWN_VERSIONS))})")
    text = unicodedata.normalize("NFKC", text)
    if version >= 2 and "." in text:  # (the guards here and below skip patterns that cannot match)
        text = _TWO_INITIALS.sub(r" \1 \2 ", text)
        text = _INITIAL_AFTER_NAME.sub(r"\1\2 ", text)
    text = text.lower().translate(_PRE_REFORM)
    if "ъ" in text:
        text = _FINAL_HARD_SIGN.sub("", text)
    if version >= 3:
        text = _CENTURY_AFTER_ROMAN.sub(_century_after_roman, text)
        if _LATIN.search(text):  # with no Latin letter every run of letters stays as it is
            text = _fix_mixed_script_3(text)
    elif version == 2:
        text = " ".join(_fix_mixed_script(w) for w in re.split(r"(\s+)", text) if w and not w.isspace())
    for literal, pattern, replacement in _ABBREVIATIONS:
        if literal in text:
            text = pattern.sub(replacement, text)
    if "век" in text or "годы" in text:
        text = {1: _ROMAN_CENTURY, 2: _ROMAN_CENTURY_2}.get(version, _ROMAN_CENTURY_3).sub(" <century> ", text)
    text = _NUMBER.sub(_number_token, text)
    if version < 3:  # version 3 mended every run before the abbreviations, whose words come spaced
        text = " ".join(_fix_mixed_script(w) for w in re.split(r"\s+", text))
    return " ".join(_TOKEN.findall(text))


def tokenize(text: str | None, version: int = NORMALIZATION_VERSION) -> list[str]:
    """Tokens of the normalised text (the unit of the embeddings and the BiLSTM)."""
    return normalize(text, version).split()
