"""The domain of a setting (an integer range, a real interval, a choice, a list of them, a name), declared once on
the setting (stages.config.settings) and checked wherever a value enters: an option, a run-file key, a Params
field. Plain Python: the command line checks options with these before loading torch.

A failed check is a ConfigError naming the setting as given (`gamma` in the library, `--gamma` on the command
line), the rule and the value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from stages.errors import ConfigError

SEEDS = 2**32  # numpy's seed range: every seed here reaches np.random.seed
BIG = 10**6  # epochs, layers ...: beyond this a value is a typo, not a setting


def _fail(option: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{rule} (got {value!r})", option)


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    odd: bool = False
    multiple_of: int = 1

    def describe(self, many: bool = False) -> str:
        """The rule in a few words, for the help text: "an integer in [1, 64]", "odd integers in [1, 255]"."""
        kind = ("odd integer" if self.odd else "integer") + ("s" if many else "")
        extra = f", {'multiples' if many else 'a multiple'} of {self.multiple_of}" if self.multiple_of > 1 else ""
        return f"{'' if many else 'an '}{kind} in [{self.lo}, {self.hi}]{extra}"

    def check(self, option: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(option, "must be an integer", v)
        if not self.lo <= v <= self.hi:
            _fail(option, f"must be in [{self.lo}, {self.hi}]", v)
        if self.odd and v % 2 != 1:
            _fail(option, "must be odd (a centred window)", v)
        if v % self.multiple_of:
            _fail(option, f"must be a multiple of {self.multiple_of}", v)


@dataclass(frozen=True)
class Real:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def describe(self, many: bool = False) -> str:
        return (f"{'numbers' if many else 'a number'} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")

    def check(self, option: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(option, "must be a finite number", v)
        ok = (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)
        if not ok:
            _fail(option, f"must be in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                          f"{')' if self.hi_open else ']'}", v)


@dataclass(frozen=True)
class Choice:
    values: Sequence[str]

    def check(self, option: str, v: Any) -> None:
        if v not in self.values:
            _fail(option, f"must be one of {', '.join(self.values)}", v)


def split(text: str, option: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list or an empty item ('1,,2', '1,') is an error, not a default."""
    items = [v.strip() for v in text.split(",")]
    if not text.strip():
        _fail(option, "needs at least one value", text)
    if any(v == "" for v in items):
        _fail(option, "has an empty item; separate values by single commas", text)
    return items


def numbers(text: str, option: str, kind: type = float) -> tuple:
    """'0.5,0.9' -> (0.5, 0.9) of `kind`; malformed, empty or non-finite lists are one-line errors."""
    items = split(text, option)
    try:
        out = tuple(kind(v) for v in items)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option}: expected comma-separated {what} (got {text!r})") from None
    if kind is float and not all(math.isfinite(v) for v in out):
        _fail(option, "must hold finite numbers", text)
    return out


@dataclass(frozen=True)
class List:
    """A comma-separated list; each item must lie in `item`'s domain; `distinct`: a repeated value is an error."""
    item: Int | Real | Choice | None  # None: free names (categories)
    distinct: bool = True

    def parse(self, text: str, option: str) -> tuple:
        """'1, 2' -> (1, 2) as the items' kind (ints, floats or names)."""
        if isinstance(self.item, Int):
            return numbers(text, option, int)
        if isinstance(self.item, Real):
            return numbers(text, option, float)
        return tuple(split(text, option))

    def check(self, option: str, v: Any) -> None:
        """v: the option's text ('1,2') or the setting's tuple."""
        values: Sequence[Any] = self.parse(v, option) if isinstance(v, str) else tuple(v)
        if not values:
            _fail(option, "needs at least one value", v)
        for x in values:
            if self.item is not None:
                self.item.check(option, x)
        if self.distinct:
            seen = set()
            for x in values:
                if x in seen:
                    _fail(option, f"duplicate value {x}", v)
                seen.add(x)


@dataclass(frozen=True)
class Text:
    """A non-empty name or key (a category, a cache key)."""

    def check(self, option: str, v: Any) -> None:
        if not isinstance(v, str) or not v.strip():
            _fail(option, "must not be empty", v)
