"""Layered configuration: conf/base.yml overlaid by conf/<env>.yml, placeholders resolved."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

CONF_DIR_ENV = "LAKEHOUSE_CONF_DIR"
DATA_ROOT_ENV = "LAKEHOUSE_DATA_ROOT"
CATALOG_ENV = "LAKEHOUSE_CATALOG"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class ConfigError(ValueError):
    """A configuration file or key is missing or malformed."""


def default_conf_dir() -> Path:
    """The conf/ folder: $LAKEHOUSE_CONF_DIR, else the one in the installed wheel
    (lakehouse/conf), else the one beside the package in a source checkout."""
    if os.environ.get(CONF_DIR_ENV):
        return Path(os.environ[CONF_DIR_ENV])
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Return base updated by overlay, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _resolve(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, variables) for v in value]
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, "
                          f"found {type(content).__name__}")
    return content


@dataclass(frozen=True)
class Config:
    """Resolved settings of one environment."""

    env: str
    values: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        """Return a top-level section, failing with the known sections listed."""
        if name not in self.values:
            raise ConfigError(f"no section {name!r} in conf for env {self.env!r}; "
                              f"sections are {sorted(self.values)}")
        return dict(self.values[name])

    def table(self, name: str) -> str:
        """Return the location (Delta path or table name) of a logical table."""
        tables = self.values["tables"]
        if name not in tables:
            raise ConfigError(f"unknown table {name!r}; configured tables are {sorted(tables)}")
        return str(tables[name])

    @property
    def landing(self) -> str:
        return str(self.values["landing"])

    @property
    def checkpoints(self) -> str:
        return str(self.values["checkpoints"])

    @property
    def data_root(self) -> str:
        return str(self.values["data_root"])


def load_config(env: str = "local", conf_dir: Path | str | None = None,
                overrides: dict[str, Any] | None = None, catalog: str | None = None) -> Config:
    """Load conf/base.yml overlaid by conf/<env>.yml and optional overrides.

    Args:
        env: environment name; conf/<env>.yml must exist.
        conf_dir: folder holding the YAML files (default, or empty: default_conf_dir()).
        overrides: values merged last, e.g. {"data_root": "/tmp/x"} in tests.
        catalog: the Unity Catalog catalog ${catalog} names, over $LAKEHOUSE_CATALOG and the
            conf's key (a notebook's widget; empty: not given).

    Returns:
        The resolved Config.
    """
    folder = Path(conf_dir) if conf_dir else default_conf_dir()
    env_file = folder / f"{env}.yml"
    if not env_file.exists():
        known = sorted(p.stem for p in folder.glob("*.yml") if p.stem != "base")
        raise ConfigError(f"unknown env {env!r}: {env_file} does not exist; known envs are {known}")
    values = deep_merge(_read_yaml(folder / "base.yml"), _read_yaml(env_file))
    if os.environ.get(DATA_ROOT_ENV):
        values["data_root"] = os.environ[DATA_ROOT_ENV]
    if os.environ.get(CATALOG_ENV):
        values["catalog"] = os.environ[CATALOG_ENV]
    if catalog:
        values["catalog"] = catalog
    values = deep_merge(values, overrides or {})
    variables = {"catalog": str(values["catalog"])} if values.get("catalog") else {}
    root = _resolve(str(values.get("data_root", "data")), variables)
    if "://" not in root and not os.path.isabs(root):
        root = str(Path(root).resolve())
    values["data_root"] = root
    resolved = _resolve(values, {**variables, "data_root": root})
    _check_resolved(resolved, f"{folder}/base.yml + {env}.yml")
    from_env = bool(os.environ.get(DATA_ROOT_ENV)) and "data_root" not in (overrides or {})
    _check_literal(resolved, f"{folder}/base.yml + {env}.yml", from_env)
    return Config(env=env, values=resolved)


# Hadoop's glob characters: a folder Spark lists or streams from is read as a pattern.
_GLOB = re.compile(r"[{}\[\]*?\\]")


def _check_literal(values: dict[str, Any], where: str, root_from_env: bool) -> None:
    """Fail when the landing folder holds a glob character: Spark's file sources (the landing
    listings, the file stream) read their folder as a pattern, so such a folder would read
    nothing, or another folder's files. (Delta paths and stream checkpoints are not read as
    patterns.) The usual cause is the data root, named when the landing folder lies in it."""
    landing = str(values.get("landing") or "")
    if found := _GLOB.search(landing):
        root = str(values.get("data_root") or "")
        cause = (f" (in data_root {root!r}"
                 + (f", from ${DATA_ROOT_ENV}" if root_from_env else "") + ")"
                 if root and landing.startswith(root + "/") and _GLOB.search(root) else "")
        raise ConfigError(f"{where}: landing = {landing!r}{cause} holds {found.group(0)!r}, "
                          f"a glob character Spark's file sources would read as a pattern; "
                          f"choose a folder without any of {{ }} [ ] * ? \\")


def _check_resolved(values: Any, where: str, key: str = "") -> None:
    """Fail naming the key whose value still holds a ${placeholder} nothing defined."""
    if isinstance(values, dict):
        for name, value in values.items():
            _check_resolved(value, where, f"{key}.{name}" if key else str(name))
    elif isinstance(values, list):
        for value in values:
            _check_resolved(value, where, key)
    elif isinstance(values, str) and (match := _PLACEHOLDER.search(values)):
        raise ConfigError(f"{where}: {key} = {values!r} uses {match.group(0)}, which is not "
                          f"set; placeholders are ${{data_root}} and ${{catalog}} (set by the "
                          f"top-level key or ${DATA_ROOT_ENV} / ${CATALOG_ENV}; the catalog "
                          f"also by the CLI's --catalog or a notebook's catalog widget)")


_REQUIRED: Any = object()


def _setting(section: dict[str, Any], where: str, key: str, default: Any) -> Any:
    value = section.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ConfigError(f"{where}.{key}: missing")
    return default


def whole_number(section: dict[str, Any], where: str, key: str, default: Any = _REQUIRED,
                 minimum: int = 1) -> int:
    """section[key] as a whole number >= minimum, or a ConfigError naming where.key."""
    value = _setting(section, where, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected a whole number >= {minimum}, got {value!r}")
    return value


def number(section: dict[str, Any], where: str, key: str, default: Any = _REQUIRED,
           above: float = 0.0, at_most: float = float("inf")) -> float:
    """section[key] as a number > above and <= at_most, or a ConfigError naming where.key."""
    value = _setting(section, where, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not above < value <= at_most:
        bounds = (f"in ({above:g}, {at_most:g}]" if at_most != float("inf")
                  else f"> {above:g}")
        raise ConfigError(f"{where}.{key}: expected a number {bounds}, got {value!r}")
    return float(value)


def share(section: dict[str, Any], where: str, key: str, default: Any = _REQUIRED) -> float:
    """section[key] as a share in [0, 1], or a ConfigError naming where.key (5 meant as 5%
    would switch a limit off)."""
    value = _setting(section, where, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where}.{key}: expected a share in [0, 1], got {value!r}")
    return float(value)


def flag(section: dict[str, Any], where: str, key: str, default: Any = _REQUIRED) -> bool:
    """section[key] as true or false (a quoted "false" is a string, which bool() makes true)."""
    value = _setting(section, where, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def names(section: dict[str, Any], where: str, key: str, default: Any = _REQUIRED) -> list[str]:
    """section[key] as a list of names (a bare string would be iterated letter by letter)."""
    value = _setting(section, where, key, default)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of names, got {value!r}")
    return list(value)


def client_options(settings: dict[str, Any], key: str) -> dict[str, str]:
    """A source's extra client options (settings[key], e.g. Kafka security settings), with
    each value written `env:NAME` read from the environment variable NAME when used, so that
    secrets stay out of conf files (on Databricks, a cluster environment variable set from a
    secret: `{{secrets/<scope>/<key>}}`)."""
    options = settings.get(key) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{key}: expected a mapping of option names to values, got "
                          f"{options!r}")
    return {str(name): secret(str(value), f"{key}.{name}") for name, value in options.items()}


def secret(text: str, key: str) -> str:
    """A conf value, or, written `env:NAME`, the environment variable NAME's (read when used:
    secrets stay out of conf files; on Databricks a cluster environment variable set from a
    secret, `{{secrets/<scope>/<key>}}`). key names the value in the error of an unset one."""
    if not text.startswith("env:"):
        return text
    variable = text.removeprefix("env:")
    if variable not in os.environ:
        raise ConfigError(f"{key} reads the environment variable {variable}, which is not set")
    return os.environ[variable]


def is_url(location: str) -> bool:
    """Whether a location names another file system than the local one: a scheme of two
    letters or more (s3a://, abfss://, dbfs:/), file: excepted (a one-letter one is a Windows
    drive)."""
    scheme = urlparse(location).scheme
    return len(scheme) > 1 and scheme != "file"
