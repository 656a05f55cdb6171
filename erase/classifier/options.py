"""Checks of the classifier methods' options: a bad value is an EraseError naming it.

Every config dataclass calls :func:`check` from ``__post_init__``, so a config built from the
CLI's ``--set``/YAML, the app's option box or the Python API is checked before any training
starts. Numbers given as text (YAML reads ``1e-3`` as a string) are converted.
"""

from __future__ import annotations

import math

from erase.errors import EraseError


def _number(owner: str, name: str, value, kind: type):
    if isinstance(value, bool):
        raise EraseError(f"{owner} option {name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise EraseError(f"{owner} option {name} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise EraseError(f"{owner} option {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise EraseError(f"{owner} option {name} must be finite, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise EraseError(f"{owner} option {name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check(cfg, rules: dict[str, tuple]) -> None:
    """Coerce and check ``cfg``'s fields in place.

    ``rules[name]`` is ``(int | float, low, high, low_inclusive, high_inclusive)`` (``None`` =
    unbounded) or a tuple of allowed strings.
    """
    owner = type(cfg).__name__.removesuffix("Config") or type(cfg).__name__
    for name, rule in rules.items():
        value = getattr(cfg, name)
        if all(isinstance(r, str) for r in rule):
            if value not in rule:
                raise EraseError(f"{owner} option {name} must be one of {', '.join(rule)}; got {value!r}")
            continue
        kind, low, high, low_inc, high_inc = rule
        v = _number(owner, name, value, kind)
        ok_low = low is None or (v >= low if low_inc else v > low)
        ok_high = high is None or (v <= high if high_inc else v < high)
        if not (ok_low and ok_high):
            lo = "" if low is None else f"{'[' if low_inc else '('}{low}"
            hi = "" if high is None else f"{high}{']' if high_inc else ')'}"
            where = f"in {lo}, {hi}" if low is not None and high is not None else (
                f"{'>=' if low_inc else '>'} {low}" if low is not None else f"{'<=' if high_inc else '<'} {high}")
            raise EraseError(f"{owner} option {name} must be {where}, got {value!r}")
        setattr(cfg, name, v)


# shared rules
POSITIVE = (float, 0.0, None, False, False)
NON_NEGATIVE = (float, 0.0, None, True, False)
MOMENTUM = (float, 0.0, 1.0, True, False)
COUNT = (int, 1, None, True, False)
