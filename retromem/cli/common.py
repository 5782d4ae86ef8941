"""What the commands share: the help formatter, logging, the main-process test, the encoder and index
option groups, and the checks of output paths."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from retromem.cli.options import add_options, config_from_args
from retromem.errors import ConfigError

EXIT_USAGE = 2


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (a missing option, a value of the wrong type or not among the choices)
    are one line, as retromem's own are, instead of a usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --fact for --factory would slip past checks of what was given
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.removeprefix("retromem").strip()
        self.exit(EXIT_USAGE, f"retromem: error: {command + ': ' if command else ''}{message} (see {self.prog} "
                              "--help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it has none (None, or required), it is a switch (its default is
    the switch's absence), or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, "") or action.required or isinstance(action.default, bool) or "default" in text
                or action.default == argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_command(sub, name: str, run, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter, whose ``func`` is ``run``."""
    parser = sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    parser.set_defaults(func=run)
    return parser


def add_encoder_options(parser: argparse.ArgumentParser, exclude=(), title: str = "encoder", **defaults) -> None:
    """The ``encoder`` option group (:class:`retromem.index.encoder.EncoderConfig`)."""
    from retromem.index.encoder import EncoderConfig

    add_options(parser.add_argument_group(title), EncoderConfig, exclude=exclude, defaults=defaults)


def encoder_config(args: argparse.Namespace):
    from retromem.index.encoder import EncoderConfig

    return config_from_args(EncoderConfig, args)


def add_index_options(parser: argparse.ArgumentParser, only=None, exclude=()) -> None:
    """The ``index`` option group (:class:`retromem.index.faiss_index.IndexConfig`)."""
    from retromem.index.faiss_index import IndexConfig

    add_options(parser.add_argument_group("index"), IndexConfig, only=only, exclude=exclude)


def index_config(args: argparse.Namespace):
    from retromem.index.faiss_index import IndexConfig

    return config_from_args(IndexConfig, args)


def looks_like_a_file(text: str, flag: str) -> bool:
    """Whether ``text`` names an existing file; a missing one that a file's ending gives away (``.jsonl``,
    ``.jsonl.gz``) is refused as a missing file, not looked up as a BEIR data set folder."""
    path = Path(text)
    if path.is_file():
        return True
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        from retromem.errors import MissingDataError

        raise MissingDataError(f"{flag} {text}: no such file")
    return False


def check_output_file(path: Path, flag: str = "--output") -> None:
    """Refuse an output file that is a folder or whose folder cannot be written, before any work is done."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: give a file name")
    check_writable(path.parent if str(path.parent) else Path("."), flag, path)


def check_output_folder(path: Path, flag: str = "--output") -> None:
    """Refuse an output folder that is a file or that cannot be made or written, before any work is done."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file: give a folder")
    check_writable(path, flag, path)


def check_writable(folder: Path, flag: str, target: Path) -> None:
    """Refuse ``target`` when the nearest existing folder at or above ``folder`` is a file or cannot be written
    to (tried by creating and removing a temporary file there, which also catches read-only mounts)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {target}: {existing} is a file, so nothing can be written below it")
    try:
        handle, probe = tempfile.mkstemp(prefix=".retromem-write-test-", dir=existing)
    except OSError as err:
        raise ConfigError(f"{flag} {target}: cannot write in {existing} ({err.strerror}); choose a folder you can "
                          "write to") from err
    os.close(handle)
    os.unlink(probe)


def is_main_process() -> bool:
    """Under accelerate launch / torchrun only rank 0 reports."""
    return int(os.environ.get("RANK", "0")) == 0


def show_training_logs() -> None:
    """Losses and learning rate every --logging-steps, on stderr beside the progress bar."""
    for name in ("retromem.pretrain", "retromem.data.pretrain_text"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


@contextlib.contextmanager
def logging_to_stderr(verbose: bool) -> Iterator[None]:
    """While a command runs, retromem's log records go to stderr: each warning once, as ``warning: ...``
    (with ``--verbose``: every record at INFO and above, with its level and logger). Other libraries'
    records go through the root logger (warnings and above, or INFO with ``--verbose``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        for handler in root.handlers:
            handler.addFilter(lambda record: not record.name.startswith("retromem"))  # ours prints those
    logger = logging.getLogger("retromem")
    handler = _BesideProgressBars(sys.stderr)
    handler.setFormatter(_CommandFormatter(verbose))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _BesideProgressBars(logging.StreamHandler):
    """Writes each record on a line of its own above any progress bar (``tqdm.write``), not into the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging's own policy: report, never raise)
            self.handleError(record)


class _CommandFormatter(logging.Formatter):
    """``warning: message`` for warnings and errors; the message alone for progress (INFO) records; with
    ``verbose`` the level and logger too."""

    def __init__(self, verbose: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.verbose and record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def quiet_other_libraries() -> None:
    """FAISS's loader and transformers' progress bars and advice stay out of a command's output."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def encoder_defaults_from_index(args, recorded):
    """Encoder options left unset on the command line take the values the FAISS index recorded (``recorded``:
    its :class:`retromem.artifacts.EncoderInfo`, or None)."""
    if recorded is None:
        return args
    if args.model is None:
        args.model = recorded.model_path or recorded.model
    if args.pooling == "auto" and recorded.pooling:
        args.pooling = recorded.pooling
    for key in ("normalize", "max_length", "query_prefix"):
        if getattr(args, key) is None and getattr(recorded, key) is not None:
            setattr(args, key, getattr(recorded, key))
    return args


def print_beir_footer(result, start: float) -> None:
    """What every BEIR evaluation prints under its table: queries without results, what the work directory
    reused, the time (``start``: ``time.perf_counter()`` at the command's start) by stage, and where results are."""
    if result.scores.num_missing:
        print(f"{result.scores.num_missing} judged queries had no results and count as 0")
    if result.reused:
        print(f"reused from {result.workdir}: {', '.join(result.reused)}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"time: {time.perf_counter() - start:.1f}s ({timing})")
    print(f"results: {result.results_path.parent}")
