"""Options declared once: each config dataclass field carries its help, flag, choices and bounds.

A library config (``EncoderConfig``, ``PretrainConfig``...) declares its fields with :func:`option`;
the ``retromem`` command builds its arguments from those declarations (``retromem.cli.options``), and
:func:`check_options` validates any instance against them, so a default, a help text or a bound is
written in one place and the library and the command agree on it::

    @dataclass
    class SearchConfig:
        top_k: int = option(1000, help="documents kept per query", min=1)

        def __post_init__(self):
            check_options(self)

Messages name the field and its flag, ``top_k (--top-k) must be at least 1, got 0``, so they read
right from Python and from the command line alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from retromem.errors import ConfigError

_KEY = "retromem.option"


@dataclass(frozen=True)
class OptionSpec:
    """What the command line and validation know of one field (see :func:`option`)."""

    help: str
    flag: str | None = None
    negative: str | None = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    gt: float | None = None
    max: float | None = None
    special: tuple[Any, ...] = ()
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    cli: bool = True


def option(default: Any = MISSING, *, help: str, flag: str | None = None, negative: str | None = None,
           choices: Sequence[Any] | None = None, min: float | None = None, gt: float | None = None,
           max: float | None = None, special: Sequence[Any] = (), parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, cli: bool = True, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its option spec.

    ``flag``: the command-line flag when it is not ``--`` + the name with dashes (for a boolean that
    defaults to True, the flag that turns it off); ``negative``: for a ``bool | None`` field, the flag
    that sets False (``flag`` sets True, neither leaves None). ``choices``: the values allowed.
    ``min``/``max``: inclusive bounds, ``gt``: an exclusive lower bound, for numbers; ``special``:
    values allowed outside them (e.g. -1 for "none"). ``parse``: how the command line turns text into
    the value (e.g. comma-separated integers). ``cli=False`` keeps the field off the command line.
    """
    spec = OptionSpec(help=help, flag=flag, negative=negative, choices=tuple(choices) if choices is not None else None,
                      min=min, gt=gt, max=max, special=tuple(special), parse=parse, metavar=metavar, cli=cli)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def option_specs(cls_or_obj: Any) -> dict[str, OptionSpec]:
    """The fields of a config dataclass that were declared with :func:`option`, in order."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls_or_obj) if _KEY in f.metadata}


def flag(cls_or_obj: Any, name: str) -> str:
    """The command-line flag of field ``name``: its declared ``flag``, else ``--`` + the name with dashes."""
    spec = option_specs(cls_or_obj).get(name)
    return spec.flag if spec is not None and spec.flag else "--" + name.replace("_", "-")


def named(cls_or_obj: Any, name: str) -> str:
    """A field as messages name it: ``learning_rate (--lr)``."""
    return f"{name} ({flag(cls_or_obj, name)})"


def check_options(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first field of ``obj`` outside its declared choices or bounds.

    ``None`` passes (it means "unset" wherever a field allows it); so do a field's ``special`` values.
    Numbers must be finite.
    """
    for name in option_specs(obj):
        check_value(obj, name, getattr(obj, name))


def check_value(cls_or_obj: Any, name: str, value: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` is outside field ``name``'s declared choices or bounds."""
    spec = option_specs(cls_or_obj)[name]
    if value is None or value in spec.special and not isinstance(value, bool):
        return
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, spec.choices))} "
                          f"({flag(cls_or_obj, name)}), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    problem = _out_of_bounds(value, spec)
    if problem:
        allowed = f" (or {', '.join(map(str, spec.special))})" if spec.special else ""
        raise ConfigError(f"{named(cls_or_obj, name)} must be {problem}{allowed}, got {value!r}")


def _out_of_bounds(value: float, spec: OptionSpec) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if spec.min is not None and value < spec.min:
        return f"at least {_number(spec.min)}"
    if spec.gt is not None and value <= spec.gt:
        return f"> {_number(spec.gt)}"
    if spec.max is not None and value > spec.max:
        return f"at most {_number(spec.max)}"
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
