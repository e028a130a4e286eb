"""Configs as data: one typed mapping-to-dataclass builder, ``key=value`` overrides and YAML/JSON file reading,
shared by the training configs (:mod:`zero123.training.config`) and the image-to-3D configs and presets
(:mod:`zero123.pipelines.image_to_3d_config`).

A config is a mapping whose keys are a dataclass's fields; a nested dataclass field is a nested mapping. Unknown
keys are errors (usually typos) that name the dotted key. Values are checked against the field annotations:
``bool``, ``int`` (a float with an integral value is accepted), ``float`` (a YAML string such as ``1e-4`` too),
``str``, ``dict``, ``Optional``/``Union`` (the first member that fits), ``Tuple[T, ...]`` / ``Tuple[T1, T2]`` /
``Sequence[T]`` (a list; a tuple comes out, numbers of a ``float`` sequence kept as written, so a schedule
``[50, 0.7, 0.3, 200]`` keeps its integer steps) and a bare ``tuple`` (a tuple of floats).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import Zero123Error


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce_number_item(value, annotation, where: str):
    if annotation is float and not isinstance(value, bool) and isinstance(value, (int, float)):
        return value  # kept as written: a schedule's integer step stays an int
    return coerce(value, annotation, where)


def coerce(value: Any, annotation, where: str):
    """``value`` (parsed YAML/JSON) checked/converted against the field annotation ``annotation``; ``where`` is
    the dotted key, named in the one-line error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:
            try:
                return coerce(value, member, where)
            except Zero123Error:
                continue
        try:
            return coerce(value, inner[-1], where)
        except Zero123Error:
            if len(inner) == 1:
                raise
            raise Zero123Error(f"config: {where} must be {' or '.join(_name(a) for a in inner)}, "
                               f"got {value!r}") from None
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise Zero123Error(f"config: {where} must be a mapping, got {type(value).__name__}")
        return build_dataclass(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise Zero123Error(f"config: {where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise Zero123Error(f"config: {where} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Zero123Error(f"config: {where} must be a number, got {value!r}")
        try:
            return float(value)  # YAML reads "1e-4" (no dot) as a string
        except ValueError:
            raise Zero123Error(f"config: {where} must be a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise Zero123Error(f"config: {where} must be a string, got {value!r}")
        return str(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise Zero123Error(f"config: {where} must be a mapping, got {value!r}")
        return copy.deepcopy(value)
    if annotation is tuple or origin in (tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise Zero123Error(f"config: {where} must be a list, got {value!r}")
        if not args:                                   # bare ``tuple``: numbers
            return tuple(coerce(v, float, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise Zero123Error(f"config: {where} must be a list of {len(args)} values, got {value!r}")
            item_types = args
        else:
            item_types = (args[0],) * len(value)
        return tuple(_coerce_number_item(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    return value


def build_dataclass(cls, data: dict, where: str = ""):
    """An instance of the dataclass ``cls`` from the mapping ``data`` (fields left out keep their defaults)."""
    fields = _field_types(cls)
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    if unknown:
        raise Zero123Error(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(fields))})")
    return cls(**{k: coerce(v, fields[k], f"{prefix}{k}") for k, v in data.items()})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=VALUE"`` -> ``(["a", "b"], VALUE parsed as YAML)``."""
    import yaml

    if "=" not in text:
        raise Zero123Error(f"override {text!r} is not key=value (e.g. optim.lr=3e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise Zero123Error(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides=()) -> dict:
    """A copy of the mapping ``data`` with dotted ``key=value`` overrides set (missing sections created)."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise Zero123Error(f"override {text!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def merge_config(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra`` section by section (a nested mapping merges, any other value replaces)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path) -> dict:
    """The raw mapping of a ``.yaml``/``.yml``/``.json`` config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise Zero123Error(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Zero123Error(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                           f"{first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Zero123Error(f"{path}: the top level must be a mapping of config keys")
    return data
