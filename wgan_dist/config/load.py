"""Building a Config: defaults, then a preset's YAML, then dotted overrides, each value
converted to its field's declared type; validated at the end.

Presets are small YAML files in ``configs/`` read as plain YAML (``ConfigYamlLoader``: a
``!!python/...`` tag, an alias or a file over 1 MiB is refused, in one line). The resolved tree is written into the run directory as
``config.yaml`` so a run can always be reproduced.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from .schema import Config, ConfigError
from .validate import validate

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _as_int(value: Any, key: str) -> int:
    """An integer, or a float / numeric string with no fractional part (``1e3``); else refused
    (``8.7`` must not quietly become 8)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return int(number)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        return _as_int(value, key)
    if typ is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        return "" if value is None else str(value)
    return value


def apply_values(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set the fields of a (nested) dataclass from a nested dict, converting each value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of settings, "
                          f"got {type(values).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting {dotted!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is a section; give its fields, e.g. {dotted}.<field>=...")
            apply_values(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def resolve_preset(name_or_path: str) -> Path:
    """A preset by path, or by name from configs/ (`celeba128` -> configs/celeba128.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} not found; presets: {', '.join(known)}")


# Presets are a few KB. Bigger files are refused before parsing: PyYAML takes minutes over a
# 100 MB quoted string.
MAX_CONFIG_BYTES = 1 << 20
MAX_OVERRIDE_CHARS = 1 << 16


class ConfigYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``). No config needs them, and nine
    nested lists of nine aliases each ("billion laughs", 452 bytes) expand to 9**9 values,
    gigabytes, the moment anything walks or prints them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor}: configs take no YAML anchors or aliases; "
                            f"write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml_text(text: str) -> Any:
    """Plain YAML (safe tags only, no aliases)."""
    return yaml.load(text, Loader=ConfigYamlLoader)  # noqa: S506 -- a SafeLoader subclass


def read_config_text(path: Path) -> str:
    with open(path, "rb") as f:  # read(n): also bounded for /dev/zero or a pipe
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few "
                          f"KB of settings (is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_yaml(path: Path) -> Any:
    """A config file as plain YAML (``load_yaml_text``), size-checked first, with any refusal
    or syntax error as one ConfigError line."""
    text = read_config_text(path)
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not a plain YAML config ({problem})") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.batch_size=64', ...] -> nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if len(raw) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"override {key.strip()}=...: the value is longer than "
                              f"{MAX_OVERRIDE_CHARS} characters")
        try:
            node[parts[-1]] = load_yaml_text(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not a YAML scalar") from None
    return nested


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the preset's YAML, then dotted overrides; validated."""
    cfg = Config()
    if preset:
        path = resolve_preset(preset)
        values = read_yaml(path) or {}
        if isinstance(values, dict):
            values.setdefault("name", path.stem)
        apply_values(cfg, values)
    if overrides:
        apply_values(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from to_dict() output (e.g. one stored in a checkpoint)."""
    cfg = Config()
    apply_values(cfg, values)
    return cfg


def thawed(cfg: Config) -> Config:
    """A changeable copy of a (possibly frozen) config."""
    return config_from_dict(to_dict(cfg))


def updated(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``values`` (a nested dict) applied, validated, and frozen like it."""
    from .schema import freeze, is_frozen

    out = thawed(cfg)
    apply_values(out, values)
    validate(out)
    return freeze(out) if is_frozen(cfg) else out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
