"""``retromem eval beir``: the BEIR evaluation of a dense encoder or of a TREC run file."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli import eval_bm25, eval_kilt, eval_memory
from retromem.cli.common import (
    EXIT_USAGE,
    HelpFormatter,
    add_command,
    add_encoder_options,
    add_index_options,
    check_output_folder,
    encoder_config,
    index_config,
    print_beir_footer,
)
from retromem.cli.options import add_options, values_from_args
from retromem.eval.beir_pipeline import BeirEvalConfig
from retromem.options import flag

#: Options of the dense pipeline, which a scored --run file does not use.
_PIPELINE_ONLY = ("top_k", "workdir", "chunk_size")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on BEIR or KILT", formatter_class=HelpFormatter)
    p.set_defaults(func=lambda args: p.print_help() or EXIT_USAGE)
    eval_sub = p.add_subparsers(title="eval commands", metavar="COMMAND")
    b = add_command(
        eval_sub, "beir", run, help="BEIR evaluation of a dense encoder or of a TREC run file",
        description="With --model: encode the corpus, index it, search the split's queries and score the run "
                    "(nDCG, MAP, Recall, P, MRR at each k, via pytrec_eval), caching embeddings and index in a "
                    "work directory so a second run skips what is done (and re-encodes a corpus whose text "
                    "changed). With --run: score a TREC run file made by any system (the encoder, index and "
                    "work-directory options are then refused). Results go to --output as results.json, "
                    "per_query.json, results.md and a plot. --method bm25 evaluates Lucene BM25 (pyserini; its index "
                    "cached in the work directory), --method hybrid fuses it with --model's run (--fusion rrf, "
                    "interpolate with alpha chosen on --alpha-split queries, or all).")
    add_options(b, BeirEvalConfig, required=("dataset",))
    b.add_argument("--run", type=Path, help="score this TREC run file instead of running an encoder")
    add_encoder_options(b)
    add_index_options(b)
    eval_bm25.add_arguments(b)
    eval_memory.add_arguments(b)
    eval_kilt.add_parser(eval_sub)


def run(args) -> int:
    from retromem.eval.beir_pipeline import evaluate_dense_beir, evaluate_run_beir
    from retromem.eval.report import format_markdown_table

    start = time.perf_counter()
    if args.output_dir is not None:
        check_output_folder(args.output_dir)
    if args.workdir is not None and not args.run:
        check_output_folder(args.workdir, "--workdir")
    if eval_memory.handles(args):
        return eval_memory.run(args, start)
    if eval_bm25.handles(args):
        return eval_bm25.run(args, start)
    if args.run:
        _refuse_unused_options(args)
        values = values_from_args(BeirEvalConfig, args, exclude=_PIPELINE_ONLY)
        result = evaluate_run_beir(values["dataset"], args.run, split=values["split"], k_values=values["k_values"],
                                   ignore_identical_ids=values["ignore_identical_ids"],
                                   output_dir=values["output_dir"], plot_metric=values["plot_metric"])
        system = args.run.name
    else:
        config = BeirEvalConfig(**values_from_args(BeirEvalConfig, args), encoder=encoder_config(args),
                                index=index_config(args), show_progress=True)
        result = evaluate_dense_beir(config)
        if result is None:  # not rank 0 under accelerate launch: rank 0 reports
            return 0
        system = args.model
    metrics = [m for m in ("NDCG@10", "Recall@100", "MRR@10", "MAP@10", "P@10") if m in result.scores.mean]
    if not metrics:  # other cut-offs: NDCG and Recall at each
        metrics = [f"{family}@{k}" for k in result.scores.k_values[:3] for family in ("NDCG", "Recall")]
    print(f"\nBEIR {result.metadata['dataset']} ({args.split}, {result.scores.num_queries} queries)\n")
    print(format_markdown_table({system: result.scores.mean}, metrics=metrics))
    print_beir_footer(result, start)
    return 0


def _refuse_unused_options(args) -> None:
    """With --run nothing is encoded, indexed or searched: an option of those stages is a mistake."""
    from retromem.errors import ConfigError
    from retromem.index.encoder import EncoderConfig
    from retromem.index.faiss_index import IndexConfig
    from retromem.options import option_specs

    flags = [flag(cls, name) for cls in (EncoderConfig, IndexConfig) for name in option_specs(cls)]
    flags += [flag(BeirEvalConfig, name) for name in _PIPELINE_ONLY]
    flags += [spec.negative for cls in (EncoderConfig,) for spec in option_specs(cls).values() if spec.negative]
    given = [f for f in flags if f in args.given]
    if given:
        raise ConfigError(f"--run scores a finished run file: {', '.join(given)} would not be used (they set up the "
                          "encoder, index and search of --model); leave them out, or evaluate --model instead")

