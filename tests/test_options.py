"""Options declared once beside their dataclass fields: validation, flags, and the command line built from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from retromem.cli.options import add_options, config_from_args, field_defaults, values_from_args
from retromem.errors import ConfigError
from retromem.options import check_options, flag, named, option, option_specs


@dataclass
class Demo:
    top_k: int = option(10, min=1, help="documents kept")
    rate: float = option(1e-4, gt=0, help="learning rate", flag="--lr")
    share: float = option(0.5, min=0, max=1, help="a share")
    steps: int = option(-1, min=1, special=(-1,), help="steps (-1: none)")
    mode: str = option("a", choices=("a", "b"), help="a mode")
    normalize: bool | None = option(None, negative="--no-normalize", help="normalise")
    shuffle: bool = option(True, flag="--no-shuffle", help="do not shuffle")
    verbose: bool = option(False, help="say more")
    files: list[str] = option(default_factory=list, help="input files")
    out: Path | None = option(None, help="output folder")
    ks: tuple[int, ...] = option((1, 10), parse=lambda t: tuple(int(v) for v in t.split(",")), help="cut-offs")
    hidden: int = option(3, cli=False, help="not on the command line")
    plain: int = 7

    def __post_init__(self):
        check_options(self)


def test_declared_fields_and_flags():
    assert list(option_specs(Demo)) == ["top_k", "rate", "share", "steps", "mode", "normalize", "shuffle", "verbose",
                                        "files", "out", "ks", "hidden"]
    assert flag(Demo, "rate") == "--lr" and flag(Demo, "top_k") == "--top-k" and named(Demo, "rate") == "rate (--lr)"


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, r"top_k \(--top-k\) must be at least 1, got 0"),
    ({"rate": 0.0}, r"rate \(--lr\) must be > 0, got 0.0"),
    ({"share": 1.5}, r"share \(--share\) must be at most 1, got 1.5"),
    ({"steps": 0}, r"steps \(--steps\) must be at least 1 \(or -1\), got 0"),
    ({"mode": "c"}, r"mode must be one of a, b \(--mode\), got 'c'"),
    ({"rate": float("nan")}, r"must be a finite number"),
    ({"share": float("inf")}, r"must be a finite number"),
])
def test_values_outside_their_declaration_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Demo(**kwargs)


def test_special_values_and_none_pass():
    assert Demo(steps=-1).steps == -1 and Demo(out=None).out is None and Demo(steps=5).steps == 5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_options(parser, Demo)
    return parser


def test_the_command_line_has_every_declared_field_with_its_default():
    parser = _parser()
    args = parser.parse_args([])
    assert not hasattr(args, "hidden") and not hasattr(args, "plain")
    assert config_from_args(Demo, args) == Demo()
    assert field_defaults(Demo)["files"] == [] and field_defaults(Demo)["ks"] == (1, 10)
    text = parser.format_help()
    for option_string in ("--top-k", "--lr", "--no-normalize", "--normalize", "--no-shuffle", "--verbose", "--files"):
        assert option_string in text


def test_the_command_line_sets_each_kind_of_field():
    args = _parser().parse_args(["--top-k", "5", "--lr", "0.01", "--mode", "b", "--no-normalize", "--no-shuffle",
                                 "--verbose", "--files", "a", "b", "--out", "o", "--ks", "3,30"])
    demo = config_from_args(Demo, args)
    assert (demo.top_k, demo.rate, demo.mode, demo.normalize, demo.shuffle, demo.verbose) == (5, 0.01, "b", False,
                                                                                             False, True)
    assert demo.files == ["a", "b"] and demo.out == Path("o") and demo.ks == (3, 30)
    assert config_from_args(Demo, _parser().parse_args(["--normalize"])).normalize is True


def test_bounds_are_checked_as_values_are_read_so_the_error_is_ours():
    args = _parser().parse_args(["--top-k", "0"])
    with pytest.raises(ConfigError, match=r"--top-k"):
        values_from_args(Demo, args)
    with pytest.raises(SystemExit):                                       # choices stay argparse's
        _parser().parse_args(["--mode", "c"])


def test_defaults_and_required_can_differ_per_command():
    @dataclass
    class Needs:
        name: str = option(help="a name")
        model: str = option("m", help="a model")
        extra: list[int] = field(default_factory=list)

    parser = argparse.ArgumentParser()
    add_options(parser, Needs, required=("name",), defaults={"model": None})
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert parser.parse_args(["--name", "x"]).model is None
