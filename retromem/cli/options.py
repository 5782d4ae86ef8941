"""Command-line arguments from config dataclasses: each field's flag, help, choices and default are
read from its :func:`retromem.options.option` declaration, so the command writes none of them again."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from retromem.options import OptionSpec, check_value, flag, option_specs


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, only: Iterable[str] | None = None,
                exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                required: Iterable[str] = ()) -> None:
    """Add an argument for each declared field of ``cls`` (``only`` these, none of ``exclude``) to ``parser``
    (a parser or an argument group). ``defaults`` replaces a field's default on this command;
    ``required`` fields must be given. The argument's ``dest`` is the field's name."""
    specs = option_specs(cls)
    names = list(only) if only is not None else list(specs)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = dict(defaults or {})
    required = set(required)
    for name in names:
        if name in exclude or not specs[name].cli:
            continue
        default = defaults[name] if name in defaults else _default(fields[name])
        _add_one(parser, cls, name, specs[name], hints[name], default, name in required)


def values_from_args(cls: type, args: argparse.Namespace, *, only: Iterable[str] | None = None,
                     exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s declared fields that this command has (by ``dest``), each checked
    against its declared choices and bounds (a :class:`retromem.errors.ConfigError` naming the flag)."""
    specs = option_specs(cls)
    names = list(only) if only is not None else list(specs)
    values = {}
    for name in names:
        if name in exclude or not hasattr(args, name):
            continue
        value = getattr(args, name)
        parse = specs[name].parse
        value = parse(value) if parse is not None and isinstance(value, str) else value
        check_value(cls, name, value)
        values[name] = value
    return values


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls(**values_from_args(cls, args), **overrides)``."""
    return cls(**{**values_from_args(cls, args), **overrides})


def field_defaults(cls: type) -> dict[str, Any]:
    """Each declared field's default (a default factory called)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: _default(fields[name]) for name in option_specs(cls)}


def _add_one(parser, cls: type, name: str, spec: OptionSpec, hint: Any, default: Any, required: bool) -> None:
    kind, optional = _base_type(hint)
    option = flag(cls, name)
    common = {"dest": name, "help": spec.help}
    if kind is bool:
        if spec.negative:  # tri-state: flag sets True, negative sets False, neither leaves the default
            group = parser.add_mutually_exclusive_group()
            group.add_argument(option, action="store_true", default=default, **common)
            group.add_argument(spec.negative, dest=name, action="store_false", help=f"the opposite of {option}")
        elif default:
            parser.add_argument(option, action="store_false", default=True, **common)
        else:
            parser.add_argument(option, action="store_true", default=False, **common)
        return
    if spec.parse is not None and isinstance(default, (tuple, list)):
        default = ",".join(map(str, default))  # shown as it is typed; values_from_args parses it like typed text
    extra: dict[str, Any] = {"default": default, "required": required}
    if spec.metavar or spec.choices is None:  # choices show themselves as the metavar
        extra["metavar"] = spec.metavar or option.lstrip("-").replace("-", "_").upper()
    if spec.choices is not None and spec.parse is None:
        extra["choices"] = spec.choices
    if spec.parse is not None:
        extra["type"] = str  # parsed by values_from_args, so that a bad value is retromem's one-line error
    elif typing.get_origin(kind) in (list, tuple):
        item = (typing.get_args(kind) or (str,))[0]
        extra.update(nargs="+", type=_scalar(item))
    else:
        extra["type"] = _scalar(kind)
    if optional and default is None:
        extra["default"] = None
    parser.add_argument(option, **common, **extra)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of a field annotation: ``int | None`` -> ``(int, True)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return hint, False


def _scalar(kind: Any):
    if kind in (int, float, str):
        return kind
    if kind is Path:
        return Path
    return str


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None
