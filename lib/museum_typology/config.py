"""Settings: the packaged defaults, then a ``--conf`` file, then ``--set key=value`` overrides.

Settings are a plain nested dict read from TOML. ``Settings.get("images.max_side")`` reads a
dotted key; a missing key is an error that names the key, never a silent default.
"""
from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Iterable, Mapping
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


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``"images.max_side=384"`` -> (["images", "max_side"], 384).

    The value is read as a TOML literal (numbers, booleans, quoted strings, arrays) and,
    failing that, taken as a bare string, so ``--set paths.work_dir=/tmp/x`` just works.
    Keys may be quoted to hold dots: ``spark.conf."spark.executor.memory"=8g``.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    raw_key, raw_value = assignment.split("=", 1)
    try:
        parsed = tomllib.loads(f"{raw_key.strip()} = 0")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--set {assignment!r}: bad key ({exc})") from None
    keys: list[str] = []
    node: Any = parsed
    while isinstance(node, dict):
        (only_key,) = node.keys()
        keys.append(only_key)
        node = node[only_key]
    try:
        value = tomllib.loads(f"v = {raw_value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value.strip()
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
    settings = Settings(_read_default(), [str(default_conf_path())])
    if environ.get(DATA_ENV_VAR):
        settings = settings.set(["paths", "data"], environ[DATA_ENV_VAR], f"${DATA_ENV_VAR}")
    if environ.get(WORK_DIR_ENV_VAR):
        settings = settings.set(["paths", "work_dir"], environ[WORK_DIR_ENV_VAR], f"${WORK_DIR_ENV_VAR}")
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
        settings = settings.with_values(loaded, str(path))
    for assignment in overrides:
        keys, value = parse_override(assignment)
        settings = settings.set(keys, value, f"--set {assignment}")
    return settings
