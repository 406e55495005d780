"""Typed, strict configuration: dataclasses are the single source of truth.

A stage's config is a tree of dataclasses. The same fields load from a YAML file and from
command-line overrides (``--optim.lr 1e-5`` or ``--optim.lr=1e-5``). Unknown keys, wrong types and
values outside a ``Literal`` are errors that name the key.

Field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, enums, nested dataclasses,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]`` and unions of these (``float | None``,
``str | dict[str, float]``). A union takes the first member, in the order written, that the value
fits. On the command line a value is read as YAML (``1e-5`` is a float, ``null`` is None,
``'{rm: 1.0, vader: 0.5}'`` and ``'{"rm": 1.0}'`` are mappings, ``[a, b]`` a list); when that
reading does not fit the field but the field takes a string, the text is taken as it was typed, so
``--model.name 123`` names a model "123". A mapping in a file or given whole on the command line
replaces the field's mapping; a dotted key sets one entry of the mapping below it (the file's, else
the default): ``--reward.weights.vader 0.5``. A section (a nested dataclass) given in part, in a file or
on the command line, keeps its default for the keys left out: the preset's section where the field
defaults to one (``tuneloop ppo --optim.lr 3e-4`` keeps PPO's linear schedule), and ``--help-config``
shows those defaults. Each field's documentation is the string
literal written right under it in the class body (read with ``ast``), so ``--help`` and the docs show
the same text as the code.

Usage::

    cfg = load_config(SFTConfig, yaml_path="sft.yaml", overrides=["--optim.lr", "1e-5"])
    print(dump_yaml(cfg))
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import inspect
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds an impossible value."""


# ---------------------------------------------------------------------------------------------
# Field documentation (the string literal under each field)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


# ---------------------------------------------------------------------------------------------
# Type checking and coercion


def _type_name(tp: Any) -> str:
    """How ``--help-config`` and error messages spell a field type (``dict[str, float] or null``)."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if _is_union(tp):
        members = [a for a in get_args(tp) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in members)
        return names + " or null" if len(members) < len(get_args(tp)) else names
    if origin in (list, tuple, dict):
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = args[:1]
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


class Entries(dict):
    """Keys set one by one on the command line (``--reward.weights.vader 0.5``): they update the mapping
    below them (the file's, else the field's default) instead of replacing it."""


@dataclasses.dataclass(frozen=True)
class CliValue:
    """A value typed on the command line, kept as text until the field's type is known."""

    text: str

    @property
    def parsed(self) -> Any:
        return _parse_scalar(self.text)


def _check_value(key: str, tp: Any, value: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError that names ``key``.

    A ``CliValue`` is tried as YAML first; if that does not fit and ``tp`` takes a string, its text is
    used as typed (``--model.name 123``, ``--data.train yes``).
    """
    if isinstance(value, CliValue):
        parsed = value.parsed
        try:
            return _check_value(key, tp, parsed)
        except ConfigError:
            if isinstance(parsed, (dict, list)) or not _accepts_str(tp):
                raise  # a mistyped mapping or list is an error, never silently a string
            return _check_value(key, tp, value.text)
    if _is_union(tp):
        members = [m for m in get_args(tp) if m is not type(None)]
        if value is None and len(members) < len(get_args(tp)):
            return None
        errors = []
        for member in members:
            try:
                return _check_value(key, member, value)
            except ConfigError as err:
                errors.append((member, err))
        # When one member has the value's shape (a mapping, a list), its error says what inside is wrong.
        same_shape = [err for member, err in errors if _shape(member) == _shape(value) is not None]
        if len(errors) == 1 or len(same_shape) == 1:
            raise (same_shape or [errors[0][1]])[0]
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_check_value(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)} (a mapping), got {value!r} "
                              f"({type(value).__name__})")
        key_tp, value_tp = get_args(tp) or (Any, Any)
        out = {}
        for name, item in value.items():
            checked_name = _check_value(f"{key} (the key {name!r})", key_tp, name)
            out[checked_name] = _check_value(f"{key}.{name}", value_tp, item)
        return out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _shape(tp_or_value: Any) -> str | None:
    """'mapping' or 'list' for such a type or value, else None."""
    tp = tp_or_value if isinstance(tp_or_value, type) or get_origin(tp_or_value) else type(tp_or_value)
    origin = get_origin(tp) or tp
    if origin is dict or dataclasses.is_dataclass(origin):
        return "mapping"
    if origin in (list, tuple):
        return "list"
    return None


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    return _is_union(tp) and any(_accepts_str(m) for m in get_args(tp))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, strictly. ``base`` is the instance the fields left
    out take their values from (a preset's default section, e.g. PPO's linear policy schedule); without
    it they take the class defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'{where}; known keys: {known}")
    hints = _hints(cls)
    kwargs = {name: copy.deepcopy(getattr(base, name)) for name in fields if name not in data} if base is not None else {}
    for name, value in data.items():
        default = getattr(base, name) if base is not None else _default(fields[name])
        if isinstance(value, CliValue) and dataclasses.is_dataclass(hints[name]) and isinstance(value.parsed, dict):
            value = value.parsed  # a whole section on the command line: --optim '{lr: 3e-4}'
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, prefix + name + ".",
                                  default if dataclasses.is_dataclass(default) else None)
            continue
        if isinstance(value, Entries) and not dataclasses.is_dataclass(hints[name]):
            if isinstance(default, dict):  # --weights.vader 0.5 adds to (or changes) the default mapping
                value = {**default, **value}
        kwargs[name] = _check_value(prefix + name, hints[name], value)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (enums as their values) that round-trips through ``load_config``."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def _parse_scalar(text: str) -> Any:
    """Interpret a command-line value with YAML rules (``1e-5`` -> float, ``true`` -> bool, ``null``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-5" as a string; accept plain-number spellings people type.
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--optim.lr", "1e-5", "--data.packing=true"]`` -> ``{"optim": {"lr": CliValue("1e-5")}, ...}``.

    Leaves stay ``CliValue`` text until ``load_config`` knows each field's type (module docstring).
    """
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected a --section.key override, got {arg!r}")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"config override '{arg}' has no value")
            key, text = arg[2:], args[i + 1]
            i += 2
        key = key.replace("-", "_")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, Entries())
            if not isinstance(node, dict):
                raise ConfigError(f"config override '--{key}' conflicts with an earlier one")
        node[parts[-1]] = CliValue(text)
    return nested


def merge_mappings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``; sections merge key by key, any other value (a whole mapping given as one
    command-line value included) replaces what was there."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: str | Path, kind: str, expected: str, error: type[Exception]) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: {}); ``error`` names the file and what is wrong
    (``kind`` file not found, not valid YAML, not ``expected`` at the top level). A UTF-8 BOM is fine."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise error(f"{path}: expected {expected} at the top level")
    return loaded or {}


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Any:
    """Build ``cls`` from its defaults, then a YAML file, then command-line overrides (last wins)."""
    data: dict[str, Any] = {}
    if yaml_path is not None:
        data = read_yaml_mapping(yaml_path, "config", "a mapping of config sections", ConfigError)
    if overrides:
        data = merge_mappings(data, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    return _build(cls, data)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def help_text(cls: type) -> str:
    """What ``--help-config`` prints: every key with its type, default and meaning."""
    return "".join(f"--{key}  ({tp}, default {default})\n      {doc}\n" for key, tp, default, doc in describe(cls))


def describe(cls: type, prefix: str = "", base: Any = None) -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, doc) for every leaf field, for ``--help`` and the docs; a section's
    defaults are those of the instance its field defaults to (a preset's own optimizer, say)."""
    rows = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(base, f.name) if base is not None else _default(f)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + ".", default if dataclasses.is_dataclass(default) else None))
            continue
        if isinstance(default, enum.Enum):
            default = default.value
        rows.append((prefix + f.name, _type_name(tp), repr(default), docs.get(f.name, "")))
    return rows
