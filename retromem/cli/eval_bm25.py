"""``retromem eval beir --method bm25|hybrid``: the BM25 and hybrid evaluations (``cli/eval.py`` calls
:func:`add_arguments` and, for a method other than dense, :func:`run`)."""

from __future__ import annotations

from retromem.cli.options import add_options, config_from_args, values_from_args

METHODS = ("dense", "bm25", "hybrid")


def add_arguments(parser) -> None:
    from retromem.cli.index_bm25 import add_bm25_options
    from retromem.eval.beir_hybrid import FusionConfig

    parser.add_argument("--method", choices=METHODS, default="dense",
                        help="dense: the encoder's FAISS search; bm25: Lucene BM25 (pyserini) of the corpus, its "
                             "index cached in the work directory; hybrid: both, fused (--fusion)")
    add_bm25_options(parser, title="BM25 (--method bm25|hybrid)")
    add_options(parser.add_argument_group("fusion (--method hybrid)"), FusionConfig)


def handles(args) -> bool:
    """Whether ``--method`` is bm25 or hybrid (then :func:`run` evaluates); options the method would not use are
    refused first (BM25 and fusion options with dense, encoder/index/fusion options with bm25...)."""
    refuse_unused(args, args.method, index_options=True)
    return args.method != "dense"


def refuse_unused(args, method: str, index_options: bool) -> None:
    """A one-line :class:`ConfigError` naming the given options that ``method`` does not use."""
    from retromem.errors import ConfigError
    from retromem.eval.beir_hybrid import FusionConfig
    from retromem.index.bm25 import BM25IndexConfig
    from retromem.index.encoder import EncoderConfig
    from retromem.index.faiss_index import IndexConfig
    from retromem.options import flag, option_specs
    from retromem.retrieve.bm25 import BM25Config

    def flags(cls, exclude=()):
        return [flag(cls, name) for name, spec in option_specs(cls).items() if spec.cli and name not in exclude]

    given = getattr(args, "given", frozenset())
    bm25 = flags(BM25Config) + (flags(BM25IndexConfig) if index_options else ["--bm25-index"])
    fusion = flags(FusionConfig)
    dense = flags(EncoderConfig) + flags(IndexConfig) + [s.negative for s in option_specs(EncoderConfig).values()
                                                          if s.negative]
    if method == "dense":
        unused = bm25 + fusion
    elif method == "bm25":
        unused = fusion + dense + (["--bm25-index"] if not index_options else [])
    else:
        fusion_kind = getattr(args, "fusion", "rrf")
        unused = {"rrf": ["--alpha", "--alpha-split", "--normalization"],
                  "interpolate": ["--rrf-k"]}.get(fusion_kind, [])
        if fusion_kind != "rrf" and getattr(args, "alpha", None) is not None:
            unused.append("--alpha-split")
    found = sorted({f for f in unused if f in given})
    if found:
        raise ConfigError(f"{', '.join(found)} would not be used with --method {method}"
                          f"{' --fusion ' + args.fusion if method == 'hybrid' else ''}; leave "
                          f"{'it' if len(found) == 1 else 'them'} out, or choose the method that uses "
                          f"{'it' if len(found) == 1 else 'them'}")


def run(args, start: float) -> int:
    from retromem.cli.common import encoder_config, index_config, print_beir_footer
    from retromem.cli.index_bm25 import bm25_config, bm25_index_config
    from retromem.errors import ConfigError
    from retromem.eval.beir_hybrid import FusionConfig, HybridEvalConfig, evaluate_bm25_beir
    from retromem.eval.beir_pipeline import BeirEvalConfig
    from retromem.eval.report import format_markdown_table

    if args.run:
        raise ConfigError(f"--run scores a finished run file: --method {args.method} would not be used; leave it out")
    beir = BeirEvalConfig(**values_from_args(BeirEvalConfig, args), encoder=encoder_config(args),
                          index=index_config(args), show_progress=True)
    config = HybridEvalConfig(beir=beir, method=args.method, bm25_index=bm25_index_config(args),
                              bm25=bm25_config(args), fusion=config_from_args(FusionConfig, args))
    result = evaluate_bm25_beir(config)
    system = result.metadata["model"]
    metrics = [m for m in ("NDCG@10", "Recall@100", "MRR@10", "MAP@10", "P@10") if m in result.scores.mean]
    if not metrics:
        metrics = [f"{family}@{k}" for k in result.scores.k_values[:3] for family in ("NDCG", "Recall")]
    print(f"\nBEIR {result.metadata['dataset']} ({args.split}, {result.scores.num_queries} queries)\n")
    print(format_markdown_table(result.metadata.get("rows") or {system: result.scores.mean}, metrics=metrics))
    chosen = result.metadata.get("alpha_chosen_on")
    if chosen:
        tried = ", ".join(f"{a} {s:.4f}" for a, s in chosen["scores"].items())
        print(f"alpha {result.metadata['alpha']} (weight of BM25) was chosen on the {chosen['split']} split's "
              f"{chosen['queries']} queries by {chosen['metric']}, not on {args.split}: {tried}")
    print_beir_footer(result, start)
    return 0
