"""Range checks for the numbers a user gives (CLI flags, call arguments, config fields), with one message format.

    check_number("shift", shift, above=0)                  # shift must be a finite number > 0, got nan
    check_number("ema_decay", decay, at_least=0, below=1)  # ema_decay must be a finite number in [0, 1), got 1.5
    check_int("num_steps", steps, at_least=1)              # num_steps must be an integer >= 1, got 0

Numbers are checked to be finite first: NaN fails every comparison (``nan <= 0`` is False), so a check written
``if x <= 0: raise`` lets it through, and infinity passes any lower bound. The error is
:class:`~svg_diffusion.errors.InvalidValueError`: a ValueError to Python callers, one line in the CLI.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidValueError


def _show(value: Any) -> str:
    """A value as the message shows it: numbers plainly (``nan``, ``-1``, ``1e-08``), anything else as its repr."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(float(value))  # numpy scalars too, without their type name
    return repr(value)


def describe_range(at_least: float | None = None, above: float | None = None, at_most: float | None = None,
                   below: float | None = None) -> str:
    """The allowed range in words: ``>= 1``, ``> 0``, ``in [0, 1)``, ``<= 5``; empty for no bound."""
    low = f"[{at_least:g}" if at_least is not None else f"({above:g}" if above is not None else ""
    high = f"{at_most:g}]" if at_most is not None else f"{below:g})" if below is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if at_least is not None else '>'} {low[1:]}"
    if high:
        return f"{'<=' if at_most is not None else '<'} {high[:-1]}"
    return ""


def _within(value: float, at_least: float | None, above: float | None, at_most: float | None,
            below: float | None) -> bool:
    return ((at_least is None or value >= at_least) and (above is None or value > above)
            and (at_most is None or value <= at_most) and (below is None or value < below))


def _refuse(name: str, kind: str, value: Any, bounds: str) -> InvalidValueError:
    return InvalidValueError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {_show(value)}")


def check_number(name: str, value: Any, *, at_least: float | None = None, above: float | None = None,
                 at_most: float | None = None, below: float | None = None) -> Any:
    """``value`` when it is a finite real number (an int will do) within the bounds; else InvalidValueError.

    ``at_least``/``at_most`` are inclusive bounds, ``above``/``below`` exclusive ones.
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and _within(value, at_least, above, at_most, below)):
        raise _refuse(name, "a finite number", value, describe_range(at_least, above, at_most, below))
    return value


def check_int(name: str, value: Any, *, at_least: int | None = None, at_most: int | None = None) -> Any:
    """``value`` when it is an integer (not a bool) within the inclusive bounds; else InvalidValueError."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (integral and _within(value, at_least, None, at_most, None)):
        raise _refuse(name, "an integer", value, describe_range(at_least, None, at_most, None))
    return value


def check_each(check: Callable[..., Any], name: str, values: Sequence[Any], **bounds: Any) -> None:
    """``check`` (check_number or check_int) on every item, named ``name[i]``."""
    for i, value in enumerate(values):
        check(f"{name}[{i}]", value, **bounds)


def check_interval(name: str, pair: Sequence[float], **bounds: Any) -> None:
    """A ``(low, high)`` pair of finite numbers within the bounds, with ``low <= high``."""
    check_each(check_number, name, pair, **bounds)
    if pair[0] > pair[1]:
        raise InvalidValueError(f"{name} must be (low, high) with low <= high, got {tuple(pair)}")
