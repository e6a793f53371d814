"""One spelling per setting (torch-free, so the command line's parameter classes can use it at parse time): a
float field holds a float, a signed zero is zero, and a list whose order means nothing is put in one order, so equal
settings make equal cache keys."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

ASCENDING, DESCENDING = 1, -1


def settle_fields(params: Any, sets: dict[str, Any] | None = None) -> None:
    """One spelling per setting, in a frozen Params' __post_init__ (so equal settings make equal keys): a field
    declared float holds a float (1 and 1.0 are one setting), a signed zero is zero, and each list field named in
    `sets` (whose order means nothing: grid sizes, scales, stages ...) is put in its one order: ASCENDING,
    DESCENDING, or the order of a tuple of names (its choices). The order is each field's default's, so the
    values an ordinary option gives are unchanged and the keys of existing stores stay."""
    import typing

    hints = typing.get_type_hints(type(params))
    for f in fields(params):
        v = getattr(params, f.name)
        new = _settled(v, hints.get(f.name))
        order = (sets or {}).get(f.name)
        if order is not None and isinstance(new, (tuple, list)):
            if isinstance(order, tuple):
                ranked = sorted(new, key=lambda x: (order.index(x) if x in order else len(order), str(x)))
            else:
                ranked = sorted(new, reverse=order == DESCENDING)
            if list(ranked) != list(new):
                new = type(new)(ranked)
        if new is not v:
            object.__setattr__(params, f.name, new)


def _settled(v: Any, hint: Any) -> Any:
    import types
    import typing

    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(v, tuple):
        item = next((typing.get_args(k)[0] for k in kinds if typing.get_origin(k) is tuple and typing.get_args(k)),
                    None)
        out = tuple(_settled(x, item) for x in v)
        same = all(type(a) is type(b) and (a == b) and not (isinstance(a, float) and a == 0) for a, b in zip(out, v))
        return v if same else out
    if float in kinds and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v) + 0.0  # + 0.0: -0.0 becomes 0.0
    return v


def keyed(params: Any) -> dict:
    """The params of a frozen dataclass as a JSON-able dict (tuples become lists), for cache keys and attrs."""
    return {f.name: list(v) if isinstance(v, tuple) else v
            for f in fields(params) for v in (getattr(params, f.name),)}
