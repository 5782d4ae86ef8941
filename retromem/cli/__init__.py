"""The ``retromem`` command: one module per subcommand, each with ``add_parser(sub)`` and ``run(args)``.

The command parses, calls the library and prints; nothing else. An error retromem raises on purpose
(:class:`retromem.errors.RetromemError`: bad input, a mismatch, an option out of range) is one line on
stderr and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from retromem import __version__
from retromem.cli import encode, eval, finetune, fuse, index, pretrain, read, search
from retromem.cli.common import EXIT_USAGE, CommandParser, HelpFormatter, logging_to_stderr, quiet_other_libraries
from retromem.errors import RetromemError

COMMANDS = (encode, index, search, fuse, eval, pretrain, finetune, read)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.given = given_options(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    quiet_other_libraries()
    try:
        with logging_to_stderr(args.verbose):
            return args.func(args) or 0
    except RetromemError as err:
        if args.verbose:
            raise
        print(f"retromem: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("retromem: interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
        return 130


def given_options(argv: list[str]) -> frozenset[str]:
    """The ``--flags`` that ``argv`` gives (``--flag=value`` too), so a command can tell a given default from none."""
    return frozenset(arg.split("=", 1)[0] for arg in argv if arg.startswith("--"))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="retromem",
        description="Retrieval-oriented encoders: pretrain and fine-tune encoders, encode a corpus, build FAISS "
                    "indexes, search, evaluate on BEIR.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retromem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser
