"""The reader's part of ``retromem eval kilt`` (the hook :mod:`retromem.cli.eval_kilt` calls): with ``--reader
DIR`` the retrieved passages are read and the answers scored (:mod:`retromem.read.kilt_reader`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from retromem.cli.options import config_from_args


def reader_folder(text: str) -> Path:
    """``--reader``: a reader folder, checked before any retrieval is done."""
    path = Path(text)
    if not (path / "reader.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a reader folder (no reader.json): give the final/ folder of "
                                         "`retromem read train`")
    return path


def add_arguments(parser) -> None:
    group = parser.add_argument_group("reader (answers from the retrieved passages)")
    group.add_argument("--reader", type=reader_folder, help="reader folder (the final/ of `retromem read train`): read "
                       "the top --reader-passages of each question and score its answers")
    group.add_argument("--memory", type=Path, help="token memory of the retrieved passages in the reader's codec "
                       "(`retromem read memory`); default: computed for them on the fly")
    group.add_argument("--reader-passages", type=int, default=5, help="passages read per question")
    group.add_argument("--reader-batch-size", type=int, default=16, help="questions read per forward pass")
    from retromem.cli.options import add_options
    from retromem.read.read_options import ReadRerankOptions

    add_options(parser.add_argument_group("memory reranking before reading (with --reader)"), ReadRerankOptions)


def check(args) -> None:
    """Refuse reader options that cannot work, before any retrieval (``eval kilt`` calls it first)."""
    from retromem.cli.read import refuse_rerank_options_alone
    from retromem.errors import ConfigError
    from retromem.read.read_options import ReadRerankOptions, check_rerank

    if args.reader is None:
        if args.memory is not None:
            raise ConfigError("--memory is read by a reader: give --reader too")
        given = [f for f in ("--rerank", "--rerank-depth", "--rerank-weight", "--rerank-memory")
                 if f in getattr(args, "given", ())]
        if given:
            raise ConfigError(f"{', '.join(given)} rerank the passages a reader reads: give --reader too")
        return
    for flag, value in (("--reader-passages", args.reader_passages), ("--reader-batch-size", args.reader_batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    rerank = config_from_args(ReadRerankOptions, args)
    refuse_rerank_options_alone(args, rerank.rerank)
    check_rerank(rerank, args.reader_passages)


def run(args, retrieval) -> int | None:
    check(args)
    if args.reader is None:
        return None
    from retromem.cli.read import rerank_note
    from retromem.eval.kilt_report import headline_metrics
    from retromem.eval.report import format_markdown_table
    from retromem.read.kilt_reader import read_retrieval
    from retromem.read.read_options import ReadRerankOptions

    rerank = config_from_args(ReadRerankOptions, args)
    result = read_retrieval(retrieval, args.reader, args.memory, passages=args.reader_passages,
                            batch_size=args.reader_batch_size, show_progress=True, rerank=rerank,
                            trust_remote_code=args.trust_remote_code)
    print(f"\nreader {args.reader} over the top {args.reader_passages} passages "
          f"({result.outcome.questions_per_second:.1f} questions/s reading, retrieval excluded"
          f"{rerank_note(result.outcome)})\n")
    print(format_markdown_table({"reader": result.scores.mean}, headline_metrics(result.scores, answers=True)))
    print(f"reader results: {result.results_path.parent}")
    return 0
