"""A frozen model-config dataclass base: field type checks and a JSON round trip, shared by every model config.

Configs are saved beside each checkpoint as JSON, so loading must give back exactly the types the model expects
(tuples, floats) and refuse keys it does not know.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from stages.errors import ConfigError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for frozen dataclasses whose annotations are the strings 'int', 'float', 'bool', 'tuple[int, ...]'."""

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            if f.type.startswith("tuple"):  # JSON gives lists back
                if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                               for v in value):
                    raise ConfigError(f"{f.name} must be a list of integers, got {value!r}")
                object.__setattr__(self, f.name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**d)
