"""Typed configuration dataclasses that reject unknown keys.

Every config in luma-pl is a dataclass with a docstring per field; ``from_dict`` builds one
from a plain mapping (YAML, a checkpoint) and fails loudly on a key it does not know, naming
the key and the valid ones, so a typo never silently falls back to a default. Values are checked
against the field's annotation at the boundary (``coerce``): a string where an int belongs, a
bool where a number belongs, a list where a dict belongs (valid YAML or JSON of the wrong type) is a
``ConfigError`` naming the field, the value and the type expected, before any code uses it. An int
is accepted for a float (and becomes one); a mapping for a nested config is built with its own
``from_dict``.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T", bound="StrictConfig")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key, the value and the fix."""


@dataclasses.dataclass
class StrictConfig:
    """Base class: subclasses are dataclasses; ``validate`` checks value ranges."""

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}"
            )
        hints = _hints(cls)
        checked = {k: coerce(v, hints.get(k, Any), f"{cls.__name__}.{k}") for k, v in values.items()}
        obj = cls(**checked)
        obj.validate()
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Override to check ranges; raise ``ConfigError`` naming field, value and fix."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (see the module docstring); ``where``
    names the field in the error. Annotations it does not know pass the value through."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where}={value!r} is invalid: expected {_name(hint)}, got {type(value).__name__}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}={value!r} is invalid: use one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} is invalid: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r} is invalid: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {coerce(k, kt, f"{where} key"): coerce(v, vt, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, StrictConfig):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value)
        raise ConfigError(f"{where}={value!r} is invalid: expected a mapping of {hint.__name__}'s fields, "
                          f"got {type(value).__name__}")
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f"{where}={value!r} is invalid: expected true or false, got {type(value).__name__}")
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        raise ConfigError(f"{where}={value!r} is invalid: expected an int, got {type(value).__name__}")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise ConfigError(f"{where}={value!r} is invalid: expected a number, got {type(value).__name__}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r} is invalid: expected a string, got {type(value).__name__}")
    return value


def require(condition: bool, owner: str, field: str, value: Any, fix: str) -> None:
    """Raise ``ConfigError('<owner>.<field>=<value>: <fix>')`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{owner}.{field}={value!r} is invalid: {fix}")


def as_config(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """A config object from a config object, a plain mapping (YAML, hparams) or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        value.validate()
        return value
    return cls.from_dict(value)
