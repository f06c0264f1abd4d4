"""Settings: the packaged defaults, then a ``--conf`` file, then ``--set key=value`` overrides.

Settings are a plain nested dict read from TOML. ``Settings.get("images.max_side")`` reads a
dotted key; a missing key is an error that names the key, never a silent default. A ``--conf``
file or ``--set`` may only name keys the defaults define (``spark.conf`` excepted), with values of
the default's type: a typo is an error, not a setting nothing reads.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONF_NAME = "default.toml"
DATA_ENV_VAR = "MUSEUM_DATA"
WORK_DIR_ENV_VAR = "MUSEUM_WORK_DIR"


class ConfigError(ValueError):
    """A settings file or override that cannot be used; the message says which and why."""


def default_conf_path() -> Path:
    """The default settings file: ``conf/default.toml`` of the checkout, or the copy packaged
    inside the library (wheels and ``--py-files`` zips carry it as ``museum_typology/conf``)."""
    packaged = Path(__file__).with_name("conf") / DEFAULT_CONF_NAME
    checkout = Path(__file__).resolve().parents[2] / "conf" / DEFAULT_CONF_NAME
    for candidate in (checkout, packaged):
        if candidate.is_file():
            return candidate
    # Inside a zip shipped with --py-files the file is not on disk; read it as package data.
    return packaged


def packaged_defaults() -> dict[str, Any]:
    """conf/default.toml as shipped (what a setting is when no layer sets it)."""
    return _read_default()


def _read_default() -> dict[str, Any]:
    path = default_conf_path()
    if path.is_file():
        return tomllib.loads(path.read_text(encoding="utf-8"))
    from importlib.resources import files

    text = files("museum_typology").joinpath("conf", DEFAULT_CONF_NAME).read_text(encoding="utf-8")
    return tomllib.loads(text)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; tables merge, values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_NOT_TOML = object()  # a --set value that is no TOML literal (a bare word, a path)
_MISSING = object()  # a --set key that the defaults do not define

_EXPECTED = {
    bool: "a boolean (true/false/yes/no/1/0)",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a TOML array, e.g. [1, 2]",
    dict: "a TOML inline table, e.g. {key = 1}",
}
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _toml_literal(raw: str) -> Any:
    """The value of ``raw`` read as a TOML literal, or ``_NOT_TOML``."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return _NOT_TOML


def _has_datetime(value: Any) -> bool:
    # TOML reads 2024-05-01 as a date; settings are dumped to conf.json at the end of a job,
    # and json can't write dates, so a date would only fail there, after all the work.
    if isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime is a date
        return True
    if isinstance(value, list):
        return any(map(_has_datetime, value))
    if isinstance(value, dict):
        return any(map(_has_datetime, value.values()))
    return False


def _default_at(defaults: Mapping[str, Any], keys: list[str], assignment: str) -> Any:
    """The default value at ``keys``, or ``_MISSING`` when the defaults don't define it."""
    node: Any = defaults
    for depth, key in enumerate(keys):
        if not isinstance(node, Mapping):
            raise ConfigError(
                f"--set {assignment!r}: {'.'.join(keys[:depth])} is {_EXPECTED.get(type(node), type(node).__name__)} setting, not a table"
            )
        if key not in node:
            return _MISSING
        node = node[key]
    return node


def _coerce(raw: str, default: Any, dotted: str, assignment: str) -> Any:
    """``raw`` (the text after ``=``) as a value of the default's type, or a ``ConfigError``."""
    literal = _toml_literal(raw)
    kind = type(default)
    value: Any = _NOT_TOML
    if kind is bool:
        value = literal if isinstance(literal, bool) else _BOOLEANS.get(raw.lower(), _NOT_TOML)
    elif kind is str:
        # A quoted TOML string gives its content; anything else is kept as written, so a file
        # name "2021" or "2024-05-01" stays text instead of becoming a number or a date.
        value = literal if isinstance(literal, str) else raw
    elif kind in (int, float):
        # bool is an int subclass: "true" is not a number. An int default also takes a float:
        # several float knobs are written as whole numbers in the defaults (crawl.host_rate = 0,
        # crawl.progress_interval_s = 10), so the default's type can't tell them from counts.
        if isinstance(literal, (int, float)) and not isinstance(literal, bool):
            value = float(literal) if kind is float else literal
    elif kind in (list, dict):
        if isinstance(literal, kind) and not _has_datetime(literal):
            value = literal
    else:  # no such defaults today; keep whatever TOML gives rather than guess
        value = literal if literal is not _NOT_TOML and not _has_datetime(literal) else raw
    if value is _NOT_TOML:
        raise ConfigError(
            f"--set {assignment!r}: {dotted} expects {_EXPECTED.get(kind, kind.__name__)} (its default is {default!r}), got {raw!r}"
        )
    return value


# Tables whose keys the defaults do not fix: Spark's own settings, passed to Spark as given.
OPEN_TABLES = (("spark", "conf"),)


def _open_table(keys: list[str]) -> tuple[str, ...] | None:
    """The open table ``keys`` name an entry of, or None."""
    return next((table for table in OPEN_TABLES if tuple(keys[: len(table)]) == table and len(keys) > len(table)), None)


def _in_open_table(keys: list[str]) -> bool:
    return _open_table(keys) is not None


def _check_open_key(keys: list[str], where: str) -> None:
    """A Spark setting is one key holding dots: ``spark.conf.spark.executor.memory`` (unquoted)
    is four nested tables, which Spark would get as one setting named "spark" and ignore."""
    table = _open_table(keys)
    if len(keys) > len(table) + 1:
        inner = ".".join(keys[len(table):])
        raise ConfigError(f'{where}: {inner} reads as nested keys; quote a Spark setting whole: {".".join(table)}."{inner}"')


def _check_open_value(keys: list[str], value: Any, where: str) -> None:
    """An entry of an open table is a Spark setting: a string, number or boolean, under one
    quoted key. ``spark.driver.memory = "8g"`` unquoted in a file is a table ``spark`` holding
    ``driver``, which Spark got as a setting named "spark" and ignored: the 8g never applied."""
    if isinstance(value, Mapping) and not value:
        raise ConfigError(f"{where}: {'.'.join(keys)} is an empty table; a Spark setting is a string, number or boolean")
    if isinstance(value, Mapping):
        path, node = keys[len(_open_table(keys)):], value
        while isinstance(node, Mapping) and node:
            key = next(iter(node))
            path, node = [*path, key], node[key]
        raise ConfigError(f'{where}: {".".join(keys)} is a table, not a Spark setting; quote the whole key, as in "{".".join(path)}" = ...')
    if isinstance(value, list):
        raise ConfigError(f"{where}: {'.'.join(keys)} is a list; a Spark setting is a string, number or boolean (a list is one comma-separated string)")


def _dotted_names(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    names: list[str] = []
    for key, value in node.items():
        names.append(prefix + key)
        if isinstance(value, Mapping):
            names.extend(_dotted_names(value, f"{prefix}{key}."))
    return names


def _unknown_setting(keys: list[str], defaults: Mapping[str, Any], where: str) -> ConfigError:
    dotted = ".".join(keys)
    close = difflib.get_close_matches(dotted, _dotted_names(defaults), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{where}: no setting {dotted} in conf/default.toml, which lists every one{hint}")


def _fits(value: Any, default: Any) -> bool:
    """Whether a settings file's ``value`` has the type of the key's ``default`` (as ``_coerce``
    reads a --set value: an int default also takes a float, never a boolean)."""
    kind = type(default)
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def whole_number(name: str, value: Any, minimum: int, why: str = "", maximum: int | None = None) -> int:
    """A count setting as an int. A settings file or --set may write a count as 5.0 (an int
    default takes a float, see ``_coerce``), which is 5; 5.5, a string, or a number below
    ``minimum`` (or above ``maximum``) is an error naming the setting, raised when the settings
    are read, not as a TypeError or an empty fold after hours of earlier stages."""
    whole = not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()
    if not whole or value < minimum or (maximum is not None and value > maximum):
        wanted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{name} = {value!r}: must be a whole number {wanted}" + (f" ({why})" if why else ""))
    return int(value)


def count_argument(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (``--folds 0`` was taken as "not given")."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def number_argument(low: float, high: float = float("inf")) -> Callable[[str], float]:
    """An argparse type: a number in [``low``, ``high``]."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {raw!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], not {raw}")
        return value

    return parse


def number_within(name: str, value: Any, low: float, high: float = float("inf"), *, low_included: bool = True, high_included: bool = True) -> float:
    """A real-valued setting as a float, or an error naming it and its range."""
    above = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= low if low_included else value > low)
    if not (above and (value <= high if high_included else value < high)):
        if high == float("inf"):
            wanted = f"{'>=' if low_included else '>'} {low:g}"
        else:
            wanted = f"in {'[' if low_included else '('}{low:g}, {high:g}{']' if high_included else ')'}"
        raise ConfigError(f"{name} = {value!r}: must be a number {wanted}")
    return float(value)


def checked_numbers(section: str, values: Mapping[str, Any], counts: Iterable[str], count_minimum: Mapping[str, int], ranges: Mapping[str, tuple[float, float, bool, bool]]) -> dict[str, Any]:
    """``values`` of ``section`` with each count in ``counts`` (at least 1 unless ``count_minimum``
    names it) and each number in ``ranges`` ((low, high, low included, high included)) checked and
    converted; the other values as given."""
    out = dict(values)
    for name in counts:
        out[name] = whole_number(f"{section}.{name}", values[name], count_minimum.get(name, 1))
    for name, (low, high, low_included, high_included) in ranges.items():
        out[name] = number_within(f"{section}.{name}", values[name], low, high, low_included=low_included, high_included=high_included)
    return out


def check_layer(layer: Mapping[str, Any], defaults: Mapping[str, Any], where: str, prefix: tuple[str, ...] = ()) -> None:
    """Refuse a settings file's key that conf/default.toml does not define (outside
    ``OPEN_TABLES``), a value of another type than the default's (``"false"`` for a boolean would
    be true), and dates (conf.json, written at the end of a job, cannot hold them)."""
    for key, value in layer.items():
        keys = [*prefix, key]
        if _in_open_table(keys):
            if _has_datetime(value):
                raise ConfigError(f"{where}: {'.'.join(keys)} is a date; quote it as a string")
            _check_open_value(keys, value, where)
            continue
        default = _default_at(defaults, keys, ".".join(keys))
        if default is _MISSING:
            raise _unknown_setting(keys, defaults, where)
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            check_layer(value, defaults, where, tuple(keys))
        elif not _fits(value, default) or _has_datetime(value):
            kind = type(default)
            # A file's booleans are TOML's true and false; yes/no/1/0 are for --set only.
            expected = "a boolean (true or false)" if kind is bool else _EXPECTED.get(kind, kind.__name__)
            raise ConfigError(f"{where}: {'.'.join(keys)} expects {expected} (its default is {default!r}), got {value!r}")


def parse_override(assignment: str, defaults: Mapping[str, Any] | None = None) -> tuple[list[str], Any]:
    """``"images.max_side=384"`` -> (["images", "max_side"], 384).

    A key that ``defaults`` (the packaged defaults unless given) defines takes a value of the
    default's type or is refused with an error naming the key, the value and the expected type:
    booleans also accept yes/no/1/0 in any case (``crawl.labelled=False`` must not become the
    truthy string 'False'), strings keep the text as written (unless quoted), numbers, arrays
    and tables are TOML literals.
    A key the defaults don't define is an error naming the nearest known one (a typo must not
    pass as a new setting that nothing reads), except inside ``OPEN_TABLES`` (a new
    ``spark.conf`` entry): that is read as a TOML literal and, failing that, taken as a bare
    string.
    Dates are never produced: an unquoted date is kept as its text.
    Keys may be quoted to hold dots: ``spark.conf."spark.executor.memory"=8g``.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    raw_key, raw_value = assignment.split("=", 1)
    try:
        parsed = tomllib.loads(f"{raw_key.strip()} = 0")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--set {assignment!r}: bad key ({exc})") from None
    if not parsed:  # "#x" is a TOML comment: nothing left of the key
        raise ConfigError(f"--set {assignment!r}: bad key (no key before '='; a key starting with '#' must be quoted)")
    keys: list[str] = []
    node: Any = parsed
    while isinstance(node, dict):
        (only_key,) = node.keys()
        keys.append(only_key)
        node = node[only_key]
    raw = raw_value.strip()
    defaults = _read_default() if defaults is None else defaults
    default = _default_at(defaults, keys, assignment)
    if default is not _MISSING:
        value = _coerce(raw, default, ".".join(keys), assignment)
        if isinstance(default, Mapping):  # a whole table: its keys and values as a file's would be
            check_layer(value, defaults, f"--set {assignment!r}", tuple(keys))
        return keys, value
    if not _in_open_table(keys):
        raise _unknown_setting(keys, defaults, f"--set {assignment!r}")
    _check_open_key(keys, f"--set {assignment!r}")
    value = _toml_literal(raw)
    if value is _NOT_TOML or isinstance(value, (datetime.date, datetime.time)):
        return keys, raw
    if _has_datetime(value):
        raise ConfigError(f"--set {assignment!r}: dates are not supported in settings; quote them as strings")
    _check_open_value(keys, value, f"--set {assignment!r}")
    return keys, value


@dataclass
class Settings:
    """The resolved settings of one run, and where each layer came from."""

    values: dict[str, Any]
    sources: list[str] = field(default_factory=list)

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"setting {dotted!r} is not defined (sources: {', '.join(self.sources)})")
            node = node[part]
        return copy.deepcopy(node)

    def section(self, name: str) -> dict[str, Any]:
        value = self.get(name)
        if not isinstance(value, dict):
            raise ConfigError(f"setting {name!r} is not a table")
        return value

    def with_values(self, overrides: Mapping[str, Any], source: str) -> Settings:
        return Settings(_merge(self.values, overrides), [*self.sources, source])

    def set(self, dotted_keys: list[str], value: Any, source: str) -> Settings:
        override: dict[str, Any] = {}
        node = override
        for key in dotted_keys[:-1]:
            node = node.setdefault(key, {})
        node[dotted_keys[-1]] = value
        return self.with_values(override, source)


def load_settings(
    conf_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults <- environment (MUSEUM_DATA, MUSEUM_WORK_DIR) <- conf file <- ``--set`` overrides."""
    environ = os.environ if environ is None else environ
    defaults = _read_default()
    settings = Settings(defaults, [str(default_conf_path())])
    if environ.get(DATA_ENV_VAR):
        settings = settings.set(["paths", "data"], environ[DATA_ENV_VAR], f"${DATA_ENV_VAR}")
    if environ.get(WORK_DIR_ENV_VAR):
        settings = settings.set(["paths", "work_dir"], environ[WORK_DIR_ENV_VAR], f"${WORK_DIR_ENV_VAR}")
    if conf_file is not None and not str(conf_file).strip():
        raise ConfigError("--conf '': an empty path (an unset variable?); name a settings file, or leave --conf out for the defaults")
    if conf_file:
        path = Path(conf_file)
        if not path.is_file():
            # spark-submit --files puts the file in the driver's working directory under its base name.
            if Path(path.name).is_file():
                path = Path(path.name)
            else:
                raise ConfigError(f"--conf {conf_file}: no such file (nor {path.name} in the working directory, where spark-submit --files puts it)")
        try:
            loaded = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--conf {conf_file}: not valid TOML ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--conf {conf_file}: not UTF-8 text (byte {exc.start}); a settings file is TOML, saved as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"--conf {conf_file}: cannot read ({exc.strerror or exc})") from None
        check_layer(loaded, defaults, f"--conf {conf_file}")
        settings = settings.with_values(loaded, str(path))
    for assignment in overrides:
        # Typed against the packaged defaults: a --set value is text and must be read as what
        # the code expects. (Settings.set itself takes typed values from code as they are.)
        keys, value = parse_override(assignment, defaults)
        settings = settings.set(keys, value, f"--set {assignment}")
    return settings
