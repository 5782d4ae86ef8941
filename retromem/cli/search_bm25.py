"""``retromem search --method bm25|hybrid``: the BM25 and hybrid halves of the search command (``cli/search.py``
calls :func:`add_arguments` and, for a method other than dense, :func:`run`)."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.options import add_options, config_from_args

METHODS = ("dense", "bm25", "hybrid")


def add_arguments(parser) -> None:
    """--method, --bm25-index, the BM25 search options and the fusion options."""
    from retromem.eval.beir_hybrid import FusionConfig

    group = parser.add_argument_group("BM25 and hybrid (--method bm25|hybrid)")
    group.add_argument("--method", choices=METHODS, default="dense",
                       help="dense: --index is a FAISS index; bm25: --index is a BM25 index (`retromem index bm25`); "
                            "hybrid: --index is the FAISS index and --bm25-index the BM25 one, fused")
    group.add_argument("--bm25-index", type=Path, help="hybrid: the BM25 index folder")
    from retromem.cli.index_bm25 import add_bm25_options

    add_bm25_options(parser, index=False, title="BM25 search")
    add_options(parser.add_argument_group("fusion (--method hybrid)"), FusionConfig, exclude=("alpha_split",))


def handles(args) -> bool:
    """Whether ``--method`` is bm25 or hybrid (then :func:`run` searches); options the method would not use are
    refused first."""
    from retromem.cli.eval_bm25 import refuse_unused

    refuse_unused(args, args.method, index_options=False)
    return args.method != "dense"


def run(args, queries: dict[str, str]) -> int:
    """Search ``queries`` by BM25, or by BM25 fused with the dense index, and write the run file."""
    from retromem.cli.index_bm25 import bm25_config
    from retromem.errors import ConfigError
    from retromem.eval.beir_hybrid import FusionConfig
    from retromem.retrieve.bm25 import BM25Searcher
    from retromem.retrieve.fusion import HybridSearcher
    from retromem.retrieve.runfile import write_trec_run

    top_k = args.top_k
    if args.method == "bm25":
        if args.bm25_index is not None:
            raise ConfigError("--method bm25 searches --index (a BM25 index); --bm25-index is for --method hybrid")
        searcher = BM25Searcher(args.index, bm25_config(args))
        label = "BM25"
    else:
        if args.bm25_index is None:
            raise ConfigError("--method hybrid needs --bm25-index (a BM25 index of the corpus the FAISS --index holds)")
        fusion = config_from_args(FusionConfig, args)
        if fusion.fusion == "all":
            raise ConfigError("--fusion all is for `eval beir` (it scores each fusion); search writes one run: "
                              "give --fusion rrf or --fusion interpolate")
        if fusion.fusion == "interpolate" and fusion.alpha is None:
            raise ConfigError("--fusion interpolate needs --alpha here (choose it on train queries, e.g. with "
                              "`retromem eval beir --method hybrid`, which reports the one it chose)")
        searcher = HybridSearcher(BM25Searcher(args.bm25_index, bm25_config(args)), _dense_searcher(args),
                                  method=fusion.fusion, alpha=fusion.alpha if fusion.alpha is not None else 0.5,
                                  normalization=fusion.normalization, rrf_k=fusion.rrf_k, depth=fusion.fusion_depth)
        label = f"hybrid ({fusion.fusion})"
    start = time.perf_counter()
    run_ = searcher.search(queries, k=top_k, show_progress=True)
    write_trec_run(run_, args.output, tag=f"retromem-{args.method}")
    empty = sum(1 for docs in run_.values() if not docs)
    note = f" ({empty} queries with no terms left after analysis have no results)" if empty else ""
    print(f"{label}: searched {len(queries)} queries in {time.perf_counter() - start:.1f}s{note} -> {args.output}")
    return 0


def _dense_searcher(args):
    from retromem.cli.common import encoder_config, encoder_defaults_from_index
    from retromem.errors import ConfigError
    from retromem.index.encoder import Encoder
    from retromem.index.faiss_index import DenseIndex
    from retromem.retrieve.dense import DenseSearcher

    index = DenseIndex.load(args.index, search_params=args.search_params, gpu=args.gpu)
    args = encoder_defaults_from_index(args, index.artifact.encoder)
    if args.model is None:
        raise ConfigError(f"{args.index} records no encoder: give --model")
    return DenseSearcher(Encoder(encoder_config(args)), index)
