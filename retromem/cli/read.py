"""``retromem read train|predict|memory|export-encoder``: the memory-attending reader on KILT tasks."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import (
    EXIT_USAGE,
    HelpFormatter,
    add_command,
    check_output_file,
    check_output_folder,
    is_main_process,
    show_training_logs,
)
from retromem.cli.options import add_options, config_from_args
from retromem.cli.training import RUN_OPTIONS, add_training_options
from retromem.read.read_options import RERANK_FIELDS, ReaderMemoryConfig, ReaderPredictConfig, ReadingOptions
from retromem.read.train_config import ReaderTrainConfig

READING = tuple(f for f in ReadingOptions.__dataclass_fields__)
OPTIMISATION = ("batch_size", "learning_rate", "head_learning_rate", "warmup_ratio")


def add_parser(sub) -> None:
    p = sub.add_parser("read", help="the memory-attending reader: train, predict, build the memory it reads",
                       formatter_class=HelpFormatter)
    p.set_defaults(func=lambda args: p.print_help() or EXIT_USAGE)
    read_sub = p.add_subparsers(title="read commands", metavar="COMMAND")
    t = add_command(
        read_sub, "train", run_train, help="train a reader on a KILT task's retrieved passages",
        description="Train a LUMEN-style reader: the top --k layers of the encoder run live over [question; the "
                    "decoded token memory of each retrieved passage] (--k equal to the encoder's layers re-encodes "
                    "the passage text; --k 0 reads pure memory), with a classification, span or generative head. "
                    "The passages are the top --passages of --run for each question of --task, a gold passage "
                    "forced in where retrieval missed it; the memory (--memory, from `retromem read memory` in the "
                    "codec the reader will read) must hold them. Rerunning the same command resumes; the reader is "
                    "<output>/final.")
    add_options(t.add_argument_group("what is read"), ReaderTrainConfig, only=READING, required=("task", "run"))
    add_options(t, ReaderTrainConfig, exclude=(*READING, *OPTIMISATION, *RUN_OPTIONS), required=("output_dir",))
    add_training_options(t, ReaderTrainConfig, own=OPTIMISATION)
    pr = add_command(
        read_sub, "predict", run_predict, help="answer a KILT task's questions with a reader",
        description="Read the top --passages of --run for each question of --task with the reader, and write KILT "
                    "predictions (the answer, and the pages of the run's ranking as provenance) to --output, which "
                    "`retromem eval kilt --task ... --predictions FILE` scores. Prints the reading throughput "
                    "(memory gather + the reader; retrieval excluded). With --rerank memory the top "
                    "--rerank-depth passages of each question are first reranked by MaxSim over a token memory "
                    "(GLIMMER-style), timed apart.")
    add_options(pr, ReaderPredictConfig, exclude=RERANK_FIELDS, required=("task", "run", "reader", "output"))
    add_options(pr.add_argument_group("memory reranking before reading"), ReaderPredictConfig, only=RERANK_FIELDS)
    m = add_command(
        read_sub, "memory", run_memory, help="build the token memory of only the passages a task reads",
        description="Build the token memory (layer N - --k of the encoder, in --codec) of the passages --run "
                    "retrieves for --task's questions (top --passages; with --force-gold also a gold passage where "
                    "retrieval missed it, as training reads), so that no whole knowledge source is encoded.")
    add_options(m, ReaderMemoryConfig, exclude=("memory",), required=("task", "run", "output"))
    e = add_command(
        read_sub, "export-encoder", run_export, help="save a reader's encoder as a plain encoder folder",
        description="Save the encoder of a trained reader (every layer as training left it) as a Hugging Face "
                    "encoder folder, which loads with AutoModel. Exported from a full re-encoding reader (--k equal "
                    "to the encoder's layers) it is a memory encoder tuned on the task: `read memory --model OUTPUT "
                    "--k 2` computes its memory, `read train --model OUTPUT --k 2` starts a LUMEN reader from it.")
    e.add_argument("--reader", type=Path, required=True, help="reader folder (the final/ of `retromem read train`)")
    e.add_argument("--output", type=Path, required=True, help="encoder folder to write (new, or empty)")
    e.add_argument("--trust-remote-code", action="store_true", help="allow the reader's copy of its encoder's own "
                   "Python code to run")


def run_train(args) -> int:
    from retromem.read.train import train_reader

    check_output_folder(Path(args.output_dir))
    config = config_from_args(ReaderTrainConfig, args)
    show_training_logs()
    logging_reader()
    start = time.perf_counter()
    final = train_reader(config)
    if final is not None and is_main_process():
        print(f"trained the reader in {time.perf_counter() - start:.1f}s -> {final}")
    return 0


def run_predict(args) -> int:
    from retromem.read.predict import predict

    check_output_file(Path(args.output))
    config = config_from_args(ReaderPredictConfig, args)
    refuse_rerank_options_alone(args, config.rerank)
    outcome = predict(config)
    print(f"read {outcome.questions} questions in {outcome.reading_seconds:.1f}s "
          f"({outcome.questions_per_second:.1f} questions/s, retrieval excluded{rerank_note(outcome)}) -> "
          f"{config.output}")
    return 0


def refuse_rerank_options_alone(args, rerank: str | None) -> None:
    """Reranking options given without ``--rerank memory`` would be ignored: refuse them."""
    from retromem.errors import ConfigError

    if rerank is not None:
        return
    given = [f for f in ("--rerank-depth", "--rerank-weight", "--rerank-memory") if f in getattr(args, "given", ())]
    if given:
        raise ConfigError(f"{', '.join(given)} set up memory reranking: give --rerank memory too, or leave them out")


def rerank_note(outcome) -> str:
    """The footer's words on memory reranking (timed apart from the reading), empty without it."""
    if outcome.rerank is None:
        return ""
    info = outcome.rerank
    return (f"; memory rerank of the top {info['depth']} ({info['codec']}, layer {info['layer']}) "
            f"{outcome.rerank_seconds:.1f}s apart")


def run_memory(args) -> int:
    from retromem.read.build_memory import build_reading_memory

    check_output_folder(Path(args.output))
    config = config_from_args(ReaderMemoryConfig, args)
    start = time.perf_counter()
    _, count = build_reading_memory(config)
    print(f"memory of {count} passages in {time.perf_counter() - start:.1f}s -> {config.output}")
    return 0


def run_export(args) -> int:
    from retromem.read.export import export_encoder

    check_output_folder(args.output)
    folder = export_encoder(args.reader, args.output, trust_remote_code=args.trust_remote_code)
    print(f"the encoder of {args.reader} -> {folder} (loads with AutoModel; `retromem read memory --model {folder}`)")
    return 0


def logging_reader() -> None:
    import logging

    logger = logging.getLogger("retromem.read")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
