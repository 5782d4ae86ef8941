"""``retromem eval beir --rerank memory --memory DIR``: the first stage (the dense pipeline, or a --run file of any
system) reranked by MaxSim over a token memory, both scored (``cli/eval.py`` calls :func:`add_arguments` and, when
``--rerank`` is given, :func:`run`)."""

from __future__ import annotations

import time

from retromem.cli.common import encoder_config, index_config
from retromem.cli.options import values_from_args


def add_arguments(parser) -> None:
    from retromem.cli.index_memory import add_rerank_options

    add_rerank_options(parser)
    parser.add_argument("--rerank-weight-split", help="choose --rerank-weight on this split's queries (e.g. train; "
                        "never the evaluated split) from a grid of weights (dense first stage only)")


def handles(args) -> bool:
    """Whether ``--rerank`` was given; memory options without it are refused."""
    from retromem.errors import ConfigError

    if getattr(args, "rerank", None) is None:
        given = [f for f in ("--memory", "--rerank-depth", "--rerank-weight", "--rerank-weight-split")
                 if f in getattr(args, "given", ())]
        if given:
            raise ConfigError(f"{', '.join(given)} set up memory reranking: give --rerank memory too, or leave "
                              "them out")
        return False
    return True


def run(args, start: float) -> int:
    from retromem.data.beir import load_beir
    from retromem.errors import ConfigError
    from retromem.eval.beir_memory import choose_rerank_weight, reranked_run_path
    from retromem.eval.beir_metrics import evaluate
    from retromem.eval.beir_pipeline import BeirEvalConfig, evaluate_dense_beir, evaluate_run_beir
    from retromem.eval.report import format_markdown_table
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.memory_store import MemoryStore
    from retromem.retrieve.memory_rerank import MemoryReranker, RerankConfig
    from retromem.retrieve.runfile import read_trec_run, write_trec_run

    if getattr(args, "method", "dense") != "dense":
        raise ConfigError(f"--rerank memory reranks the dense pipeline or a --run file; to rerank {args.method}, write "
                          f"its run file (retromem search --method {args.method}) and give it as --run")
    from retromem.cli.eval_bm25 import refuse_unused

    refuse_unused(args, "dense", index_options=True)
    if args.memory is None:
        raise ConfigError("--rerank memory needs --memory DIR (a token memory from `retromem index memory`)")
    if args.rerank_weight_split is not None:
        if args.run:
            raise ConfigError("--rerank-weight-split needs the dense pipeline's run of that split: with --run, give "
                              "--rerank-weight")
        if args.rerank_weight_split == args.split:
            raise ConfigError(f"--rerank-weight-split must be another split than the one evaluated ({args.split})")
        if "--rerank-weight" in args.given:
            raise ConfigError("give --rerank-weight or --rerank-weight-split, not both")
    store = MemoryStore.open(args.memory)
    rerank_config = RerankConfig(**values_from_args(RerankConfig, args))
    values = values_from_args(BeirEvalConfig, args)
    first_name = None
    if args.run:
        _refuse_pipeline_options(args)
        first_path = args.run
        first = read_trec_run(first_path)
        recorded = store.meta.encoder
        encoder = Encoder(EncoderConfig(model=recorded.model_path or recorded.model, max_length=recorded.max_length,
                                        trust_remote_code=args.trust_remote_code))
        first_name = args.run.name
    else:
        config = BeirEvalConfig(**values, encoder=encoder_config(args), index=index_config(args), show_progress=True)
        result = evaluate_dense_beir(config)
        if result is None:  # not rank 0 under accelerate launch
            return 0
        first_path = result.run_path
        first = read_trec_run(first_path)
        encoder = Encoder(config.encoder)
        first_name = str(args.model)
    dataset = load_beir(args.dataset, split=args.split)
    reranker = MemoryReranker(store, encoder, rerank_config)
    tried = None
    if args.rerank_weight_split is not None:
        tuning_config = BeirEvalConfig(**{**values, "split": args.rerank_weight_split, "output_dir": None},
                                       encoder=encoder_config(args), index=index_config(args))
        tuning_result = evaluate_dense_beir(tuning_config)
        tuning = load_beir(args.dataset, split=args.rerank_weight_split)
        weight, tried = choose_rerank_weight(reranker, read_trec_run(tuning_result.run_path), tuning.queries,
                                             tuning.qrels)
        reranker.config = RerankConfig(rerank_depth=rerank_config.rerank_depth, rerank_weight=weight)
    clock = time.perf_counter()
    reranked = reranker.rerank(first, dataset.queries, show_progress=True)
    rerank_s = time.perf_counter() - clock
    weight = reranker.config.rerank_weight
    path = write_trec_run(reranked, reranked_run_path(first_path, store.codec.label, rerank_config.rerank_depth,
                                                      weight), tag="retromem-memory")
    scored = evaluate_run_beir(args.dataset, path, split=args.split, k_values=values["k_values"],
                               ignore_identical_ids=values["ignore_identical_ids"], output_dir=values["output_dir"],
                               plot_metric=values["plot_metric"])
    first_scores = evaluate(dataset.qrels, first, k_values=values["k_values"],
                            ignore_identical_ids=values["ignore_identical_ids"])
    label = f"{first_name} + memory rerank ({store.codec.label}, top {rerank_config.rerank_depth}, w={weight:g})"
    metrics = [m for m in ("NDCG@10", "Recall@100", "MRR@10", "MAP@10", "P@10") if m in scored.scores.mean]
    if not metrics:
        metrics = [f"{family}@{k}" for k in scored.scores.k_values[:3] for family in ("NDCG", "Recall")]
    print(f"\nBEIR {dataset.name} ({args.split}, {scored.scores.num_queries} queries)\n")
    print(format_markdown_table({first_name: first_scores.mean, label: scored.scores.mean}, metrics=metrics))
    if tried is not None:
        print(f"weight chosen on {args.rerank_weight_split}: {weight:g} (nDCG@10 "
              + ", ".join(f"{w:g}: {s:.4f}" for w, s in tried.items()) + ")")
    print(f"time: {time.perf_counter() - start:.1f}s (rerank {rerank_s:.1f}s)")
    print(f"reranked run: {path}")
    print(f"results: {scored.results_path.parent}")
    return 0


def _refuse_pipeline_options(args) -> None:
    """With --run the first stage is a finished file: encoder, index and pipeline options would not be used (the
    reranker's encoder is the one the memory records)."""
    from retromem.errors import ConfigError
    from retromem.eval.beir_pipeline import BeirEvalConfig
    from retromem.index.encoder import EncoderConfig
    from retromem.index.faiss_index import IndexConfig
    from retromem.options import flag, option_specs

    flags = [flag(cls, name) for cls in (EncoderConfig, IndexConfig) for name in option_specs(cls)]
    flags += [flag(BeirEvalConfig, name) for name in ("top_k", "workdir", "chunk_size")]
    flags += [spec.negative for spec in option_specs(EncoderConfig).values() if spec.negative]
    given = [f for f in flags if f in args.given]
    if given:
        raise ConfigError(f"--run with --rerank memory reranks a finished run file with the encoder the memory "
                          f"records: {', '.join(given)} would not be used; leave them out")
