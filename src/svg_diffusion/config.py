"""Typed configuration: dataclasses loaded from YAML (or dicts) with strict validation.

Unknown keys, missing required keys and values of the wrong type are errors that name the offending key,
e.g. ``model.depth: expected int, got 'six'``. Every config class in the package is a plain dataclass;
``load_config(cls, path)`` is the only entry point that reads files.

Fields annotated ``ConfigPath`` (a file or folder) or ``PathOrName`` (also a name such as an encoder's) are
made absolute by ``load_config``: a relative path in the file against the file's own folder, so a config
means the same from any working directory; a relative path given by an override (``--set``) against the
current folder, as a shell user expects. A ``PathOrName`` value is a path when it has a ``/`` (``./my_encoder``
for a folder beside the config); a bare word stays a name, whatever folders exist.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import SVGError

T = TypeVar("T")

_PATH, _PATH_OR_NAME = "config path", "config path or name"
ConfigPath = Annotated[str, _PATH]
PathOrName = Annotated[str, _PATH_OR_NAME]


class ConfigError(SVGError):
    """A config value or file is invalid."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (dicts to dataclasses, lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {_convert(k, key_type, where): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (valid keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def to_dict(config: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-ready data; tuples become lists."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return {} if data is None else data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file; ``overrides`` are ``dotted.key=value`` strings parsed as YAML scalars.

    Path fields come out absolute (see the module docstring).
    """
    data = load_yaml(path)
    overridden = [apply_override(data, item) for item in overrides or []]
    try:
        config = from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    resolve_paths(config, Path(path).resolve().parent, overridden)
    return config


def apply_override(data: dict, item: str) -> str:
    """Set ``a.b.c=value`` in a nested dict (value parsed as YAML, so ``1e-4``, ``true`` and ``[1, 2]`` work);
    return the dotted key."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping")
    node[leaf] = yaml.safe_load(raw)
    return key


def resolve_paths(config: Any, base: Path, overridden: list[str] = (), where: str = "") -> None:
    """Make the ``ConfigPath`` / ``PathOrName`` fields of a dataclass tree absolute, in place: against ``base``,
    or against the current folder for the fields under a dotted key in ``overridden``."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for field in dataclasses.fields(config):
        key, value = f"{where}{field.name}", getattr(config, field.name)
        kind = _path_kind(hints[field.name])
        if kind is not None and isinstance(value, str):
            by_override = any(key == item or key.startswith(f"{item}.") for item in overridden)
            setattr(config, field.name, _resolve(value, Path.cwd() if by_override else base, kind))
        elif dataclasses.is_dataclass(value):
            resolve_paths(value, base, overridden, f"{key}.")


def _path_kind(annotation: Any) -> str | None:
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for option in options:
        if get_origin(option) is Annotated and option.__metadata__[0] in (_PATH, _PATH_OR_NAME):
            return option.__metadata__[0]
    return None


def _resolve(value: str, base: Path, kind: str) -> str:
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if kind == _PATH_OR_NAME and "/" not in value:
        return value  # a name (an encoder architecture, a shipped model)
    return os.path.abspath(base / path)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
