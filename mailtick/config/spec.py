"""Config: how the schema table is written (Key, Section, Many). Touches nothing.

A Key written without a default takes it from the field of the same name of its Section's
`make` dataclass (sections.py), and is REQUIRED when that field has no default: the dataclass
is the one place a default is written. Only a key whose absence means something other than a
default (a port that follows the security mode, a password source not given) says so itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mailtick.config.checks import Check, Context


class _Marker(Enum):
    REQUIRED = "required"
    FIELD = "field"


REQUIRED = _Marker.REQUIRED  # Key default for a key that must be given
FIELD = _Marker.FIELD  # Key default: the default of the section dataclass's field

Values = dict[str, Any]
Finish = Callable[[Values, Mapping[str, object], str, Context], None]


@dataclass(frozen=True)
class Key:
    check: Check  # returns the converted value or raises Invalid
    default: object = FIELD  # REQUIRED, or the value used when the key is absent


@dataclass(frozen=True)
class Many:
    """An array of tables such as [[agents]], each read with `section`."""

    section: Section


@dataclass(frozen=True)
class Section:
    keys: Mapping[str, Key | Section | Many]
    required: bool = False
    make: Callable[..., Any] | None = None  # builds the result; None: a plain dict
    finish: Finish | None = None  # cross-key checks and derived values, after the keys

    def __post_init__(self) -> None:
        """Resolve every FIELD default now, so `keys` holds the values the reader uses."""
        keys = {name: self._resolved(name, spec) for name, spec in self.keys.items()}
        object.__setattr__(self, "keys", keys)

    def _resolved(self, name: str, spec: Key | Section | Many) -> Key | Section | Many:
        if not isinstance(spec, Key) or spec.default is not FIELD:
            return spec
        if self.make is None:
            raise TypeError(f"key {name!r}: FIELD default in a section without a dataclass")
        return Key(spec.check, field_default(self.make, name))


def field_default(cls: Any, name: str) -> object:
    """The default of field `name` of dataclass `cls`; REQUIRED when it has none."""
    found = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if found is None:
        raise TypeError(f"{cls.__name__} has no field {name!r}")
    if found.default is not dataclasses.MISSING:
        return found.default
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return REQUIRED
