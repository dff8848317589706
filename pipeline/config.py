"""Typed configuration: dataclasses loaded from YAML with `key=value` overrides.

Every stage has one dataclass config. `load_config(cls, path, overrides)` reads an
optional YAML file, applies dotted `key=value` overrides (`model.n_layer=6`), and
rejects unknown keys and wrongly typed values with an error that names them. The
resolved config is a plain dict (`to_dict`) stored next to every output.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Type, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_digest(cfg: Any) -> str:
    """Stable short hash of a config (sorted JSON), for ids and provenance."""
    blob = json.dumps(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert `value` against the annotation `tp`; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:  # try the next member of the union
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: Type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for "
            f"{cls.__name__}; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """`["a.b=3", "c=[1,2]"]` -> nested dict; values parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: Type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file plus `key=value` overrides (overrides win)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides))
    try:
        return _build(cls, data)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{cls.__name__}: {e}") from None


def from_dict(cls: Type[T], data: dict) -> T:
    return _build(cls, data)


def stage_parser(prog: str, description: str, epilog: str, config_example: str,
                 overrides_example: str, ray: bool = True) -> argparse.ArgumentParser:
    """The command line every stage shares: --config, --address, --num-cpus, key=value overrides, --verbose, --version."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help=f"YAML config file (e.g. {config_example})")
    if ray:  # a stage that runs on Ray
        p.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster address ('auto', 'ray://host:10001'); default: start a local Ray")
        p.add_argument("--num-cpus", type=float, default=None, metavar="N",
                       help="logical CPUs of a locally started Ray (default: all cores); ignored with --address")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {overrides_example}")
    add_common_flags(p, prog)
    return p


def add_common_flags(p: argparse.ArgumentParser, prog: str) -> None:
    """--verbose and --version, which every `tart` stage takes (the console reads --verbose: cli.start_console)."""
    from .cli import version

    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's and MLflow's own log lines and progress bars here, not only in the log file")
    p.add_argument("--version", action="version", version=f"{prog} {version()}")


def defaults_epilog(cfg: Any, field_help: dict[str, str], examples: list[str]) -> str:
    """`--help` epilog: every key of `cfg` (nested dataclasses dotted) with its default and help, then examples."""
    lines = ["config keys (YAML file and/or key=value overrides; defaults shown):"]

    def walk(obj: Any, prefix: str = "") -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.")
            else:
                lines.append(f"  {key + '=' + json.dumps(value):<36} {field_help.get(key, '')}")

    walk(cfg)
    return "\n".join(lines + ["", "examples:", *examples])
