"""``retromem eval kilt``: score KILT predictions, or retrieve over a task's knowledge source and score the pages.

The reader plugs in without editing this module: if ``retromem.cli.eval_kilt_reader`` exists, its
``add_arguments(parser)`` adds its options (``--reader``...) and its ``run(args, retrieval)`` is called after the
retrieval with the :class:`retromem.eval.kilt_pipeline.KiltEvalResult`; where it returns an exit code (not
``None``), the command ends with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path

from retromem.cli.common import (
    add_command,
    add_encoder_options,
    add_index_options,
    check_output_folder,
    encoder_config,
    index_config,
)
from retromem.cli.options import add_options, values_from_args
from retromem.eval.kilt_pipeline import KiltEvalConfig
from retromem.options import flag

READER_HOOK = "retromem.cli.eval_kilt_reader"

#: Options of the retrieval pipeline, which a scored --predictions file does not use.
_PIPELINE_ONLY = ("source", "method", "passage_words", "passage_stride", "top_k", "workdir", "chunk_size")


def add_parser(eval_sub) -> None:
    from retromem.eval.kilt_pipeline import SEARCHERS

    p = add_command(
        eval_sub, "kilt", run, help="KILT evaluation of predictions, or of retrieval over a task's knowledge source",
        description="With --predictions: score a KILT predictions file made by any system with the official KILT "
                    "metrics (R-Prec, Recall@k, accuracy, EM, F1, ROUGE-L and their KILT variants). Without: cut "
                    "the task's knowledge source into passages, retrieve with --method "
                    f"({', '.join(SEARCHERS)}), map the passages to pages (deduplicated, in rank order) and score "
                    "them, caching embeddings and index in a work directory as eval beir does. Results go to "
                    "--output as predictions.jsonl, results.json, per_query.json, results.md and a plot.")
    add_options(p, KiltEvalConfig, required=("task",))
    p.add_argument("--predictions", type=Path, help="score this KILT predictions file instead of retrieving")
    add_encoder_options(p)
    add_index_options(p)
    hook = _reader_hook()
    if hook is not None:
        hook.add_arguments(p)
    p.set_defaults(reader_hook=hook is not None)   # run() calls the hook only if its options were added


def run(args) -> int:
    from retromem.eval.kilt_pipeline import evaluate_kilt
    from retromem.eval.kilt_report import headline_metrics
    from retromem.eval.report import format_markdown_table

    start = time.perf_counter()
    if args.output_dir is not None:
        check_output_folder(args.output_dir)
    if args.predictions is not None:
        return _score_predictions(args)
    if args.workdir is not None:
        check_output_folder(args.workdir, "--workdir")
    hook = _reader_hook() if getattr(args, "reader_hook", False) else None
    if hook is not None and hasattr(hook, "check"):
        hook.check(args)  # the reader's options refused before any retrieval
    config = KiltEvalConfig(**values_from_args(KiltEvalConfig, args), encoder=encoder_config(args),
                            index=index_config(args), show_progress=True)
    result = evaluate_kilt(config)
    if result is None:  # not rank 0 under accelerate launch: rank 0 reports
        return 0
    scores = result.scores
    print(f"\nKILT {result.metadata['task']} ({scores.num_examples} examples, {result.metadata['method']}, "
          f"passages of {config.passage_words} words)\n")
    print(format_markdown_table({args.model if config.method == "dense" else config.method: scores.mean},
                                headline_metrics(scores)))
    if result.passage_metrics:
        print(format_markdown_table({"passages": result.passage_metrics}, list(result.passage_metrics)))
    for warning in result.report.warnings:
        print(f"warning: {warning}")
    if result.reused:
        print(f"reused from {result.work}: {', '.join(result.reused)}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"time: {time.perf_counter() - start:.1f}s ({timing})")
    print(f"ranked passages: {result.run_path}")
    print(f"results: {result.results_path.parent}")
    hook = _reader_hook() if getattr(args, "reader_hook", False) else None
    if hook is not None:
        code = hook.run(args, result)
        if code is not None:
            return code
    return 0


def _score_predictions(args) -> int:
    from retromem.data.kilt import read_kilt_task, resolve_kilt_task
    from retromem.eval.kilt import read_kilt_predictions, score_kilt
    from retromem.eval.kilt_report import headline_metrics, write_kilt_results
    from retromem.eval.report import format_markdown_table

    _refuse_unused_options(args)
    values = values_from_args(KiltEvalConfig, args, exclude=_PIPELINE_ONLY)
    output = values["output_dir"] or args.predictions.parent / f"{args.predictions.stem}-scores"
    check_output_folder(output, "--output (default: beside --predictions)" if values["output_dir"] is None
                        else "--output")
    task = resolve_kilt_task(values["task"])
    examples = read_kilt_task(task.path)
    predictions = read_kilt_predictions(args.predictions)
    scores = score_kilt(examples, predictions, ks=values["ks"], where=args.predictions)
    results_path = write_kilt_results(output, scores, {"task": task.name, "task_file": str(task.path),
                                                       "predictions": str(args.predictions),
                                                       "system": args.predictions.name})
    print(f"\nKILT {task.name} ({scores.num_examples} examples, {args.predictions.name})\n")
    print(format_markdown_table({args.predictions.name: scores.mean}, headline_metrics(scores)))
    print(f"results: {results_path.parent}")
    return 0


def _refuse_unused_options(args) -> None:
    """With --predictions nothing is retrieved: an option of the retrieval is a mistake."""
    from retromem.errors import ConfigError
    from retromem.index.encoder import EncoderConfig
    from retromem.index.faiss_index import IndexConfig
    from retromem.options import option_specs

    flags = [flag(cls, name) for cls in (EncoderConfig, IndexConfig) for name in option_specs(cls)]
    flags += [flag(KiltEvalConfig, name) for name in _PIPELINE_ONLY]
    flags += [spec.negative for spec in option_specs(EncoderConfig).values() if spec.negative]
    given = [f for f in flags if f in getattr(args, "given", frozenset())]
    if given:
        raise ConfigError(f"--predictions scores a finished predictions file: {', '.join(given)} would not be used "
                          "(they set up the retrieval); leave them out, or run the retrieval without --predictions")


def _reader_hook():
    """The reader's command-line module, where it is installed (see the module docstring)."""
    if importlib.util.find_spec(READER_HOOK) is None:
        return None
    return importlib.import_module(READER_HOOK)
