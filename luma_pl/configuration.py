"""Typed configuration dataclasses that reject unknown keys.

Every config in luma-pl is a dataclass with a docstring per field; ``from_dict`` builds one
from a plain mapping (YAML, a checkpoint) and fails loudly on a key it does not know, naming
the key and the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

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
        obj = cls(**dict(values))
        obj.validate()
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Override to check ranges; raise ``ConfigError`` naming field, value and fix."""


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
