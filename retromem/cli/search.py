"""``retromem search``: queries against an index, into a TREC run file."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli import search_bm25
from retromem.cli.common import (
    add_command,
    add_encoder_options,
    add_index_options,
    check_output_file,
    encoder_config,
    encoder_defaults_from_index,
    looks_like_a_file,
)
from retromem.cli.index_memory import add_rerank_options, check_rerank_args, rerank_if_asked
from retromem.cli.options import add_options, field_defaults, values_from_args
from retromem.eval.beir_pipeline import BeirEvalConfig


def add_parser(sub) -> None:
    p = add_command(sub, "search", run, help="search an index with queries and write a TREC run file",
                    description="Encode queries with the encoder that built the index (a different one is refused) "
                                "and write the top-k of each as a TREC run file. Encoder options left unset take "
                                "the values the index recorded.")
    p.add_argument("--index", required=True, type=Path, help="index folder (from `retromem index build`; with "
                   "--method bm25, from `retromem index bm25`)")
    p.add_argument("--queries", required=True,
                   help="a BEIR data set name or folder (its --split queries), or a queries.jsonl file (_id, text)")
    p.add_argument("--split", default=field_defaults(BeirEvalConfig)["split"],
                   help="the qrels split whose queries are searched, for a BEIR data set")
    p.add_argument("--output", required=True, type=Path, help="TREC run file to write (.gz compresses)")
    add_options(p, BeirEvalConfig, only=("top_k",))
    add_index_options(p, only=("search_params", "gpu"))
    add_encoder_options(p, exclude=("passage_prefix",), title="encoder (unset: as the index recorded)", model=None)
    search_bm25.add_arguments(p)
    add_rerank_options(p)


def run(args) -> int:
    from retromem.data.beir import load_beir, load_queries
    from retromem.errors import ConfigError
    from retromem.index.encoder import Encoder
    from retromem.index.faiss_index import DenseIndex
    from retromem.retrieve.dense import DenseSearcher
    from retromem.retrieve.runfile import write_trec_run

    check_output_file(args.output)
    check_rerank_args(args)
    top_k = values_from_args(BeirEvalConfig, args, only=("top_k",))["top_k"]
    if looks_like_a_file(args.queries, "--queries"):
        queries = load_queries(args.queries)
    else:
        queries = load_beir(args.queries, split=args.split).queries
    if search_bm25.handles(args):
        if args.rerank:
            raise ConfigError("--rerank memory reranks a dense search here; rerank a BM25 run with `retromem eval beir "
                              "--rerank memory`, or search densely")
        return search_bm25.run(args, queries)
    index = DenseIndex.load(args.index, search_params=args.search_params, gpu=args.gpu)
    args = encoder_defaults_from_index(args, index.artifact.encoder)
    if args.model is None:
        raise ConfigError(f"{args.index} records no encoder: give --model")
    encoder = Encoder(encoder_config(args))
    start = time.perf_counter()
    run_ = DenseSearcher(encoder, index).search(queries, k=top_k, show_progress=True)
    run_ = rerank_if_asked(args, run_, queries, encoder)
    write_trec_run(run_, args.output)
    print(f"searched {len(queries)} queries in {time.perf_counter() - start:.1f}s -> {args.output}")
    return 0
