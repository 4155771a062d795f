"""Checks of user-supplied option values, shared by ``upscale()``, the CLI and the nodes.

Every check names the option it rejects and the allowed range, and rejects NaN and ±Inf
(``float("nan") < 0`` is False, so a plain range test lets NaN through). The ``name`` a
caller passes is the name its user typed: ``scale`` in the API and the nodes, ``--scale``
in the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

from .errors import ConfigError


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    return f"<= {_fmt(high)}"


def check_float(name: str, value: object, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` as a finite float within [low, high] (``low_open``: low excluded)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{name}={value!r} must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name}={value!r} must be a finite number{_allowed(low, high, low_open)}")
    if (low is not None and (v < low or (low_open and v == low))) or (high is not None and v > high):
        raise ConfigError(f"{name}={value!r} is out of range: it must be {_range_text(low, high, low_open)}")
    return v


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high]; floats with a fractional part are rejected."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be a whole number")
    if isinstance(value, Real) and not isinstance(value, Integral):
        if not math.isfinite(float(value)) or float(value) != int(value):
            raise ConfigError(f"{name}={value!r} must be a whole number{_allowed(low, high, False)}")
        value = int(value)
    if not isinstance(value, Integral):
        raise ConfigError(f"{name}={value!r} must be a whole number")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ConfigError(f"{name}={v} is out of range: it must be {_range_text(low, high, False)}")
    return v


def check_choice(name: str, value: object, choices: Sequence) -> object:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(str(c) for c in choices)}")
    return value


def _allowed(low: float | None, high: float | None, low_open: bool) -> str:
    return "" if low is None and high is None else f" {_range_text(low, high, low_open)}"


def check_pad(name: str, pad: object, max_side: int) -> tuple[int, int, int, int]:
    """A branch pad (left, right, top, bottom): four whole numbers in [0, ``max_side``]."""
    if isinstance(pad, (str, bytes)) or not isinstance(pad, Sequence) or len(pad) != 4:
        raise ConfigError(f"{name}={pad!r} must be four whole numbers (left, right, top, bottom)")
    sides = []
    for side, v in zip(("left", "right", "top", "bottom"), pad, strict=True):
        try:
            sides.append(check_int(f"{name} {side}", v, 0, max_side))
        except ConfigError as exc:
            raise ConfigError(f"{name}={tuple(pad)!r}: {exc}; a pad side never needs more than the "
                              f"model's period {max_side} (see README, PadCFG)") from None
    return tuple(sides)  # type: ignore[return-value]


def check_tile(name: str, tile: object, multiple: int, overlap: int, overlap_name: str = "overlap") -> int | str:
    """'auto' | 'off' | 0 | a tile side >= ``multiple`` that is larger than ``overlap``."""
    if tile in ("auto", "off", None):
        return "off" if tile is None else tile  # type: ignore[return-value]
    size = check_int(name, tile, 0)
    if size == 0:
        return "off"
    if size < multiple:
        raise ConfigError(f"{name}={size} is too small: a tile must be 'auto', 'off' or at least the model's "
                          f"pad multiple {multiple} pixels")
    aligned = size // multiple * multiple  # tiles round down, overlaps up to the multiple (ops.tiling)
    if -(-overlap // multiple) * multiple >= aligned:
        raise ConfigError(f"{overlap_name}={overlap} must be smaller than {name}={size} (both aligned to the "
                          f"model's pad multiple {multiple}: tile {aligned}); allowed {overlap_name}: "
                          f"0..{aligned - multiple}")
    return size


def parse_pad_text(text: str, name: str) -> tuple[int, int, int, int] | None:
    """'auto' (or empty) -> None, the model's own pads; 'l,r,t,b' (commas or spaces) -> four ints >= 0."""
    text = str(text).strip().lower()
    if text in ("", "auto"):
        return None
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        pad = tuple(int(p) for p in parts)
    except ValueError:
        pad = ()
    if len(pad) != 4 or min(pad) < 0:
        raise ConfigError(f"{name}={text!r}: expected 'auto' or four non-negative integers "
                          "'left,right,top,bottom', e.g. '4,4,4,4'")
    return pad  # type: ignore[return-value]
