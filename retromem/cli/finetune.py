"""``retromem finetune``: contrastive fine-tuning with sentence-transformers."""

from __future__ import annotations

import time

from retromem.cli.common import HelpFormatter, is_main_process, show_training_logs
from retromem.cli.training import add_training_options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="contrastive fine-tuning (in-batch + hard negatives) with sentence-transformers",
        description="Fine-tune an encoder into a retriever with sentence-transformers' trainer and "
                    "(Cached)MultipleNegativesRankingLoss: in-batch negatives plus hard negatives mined with "
                    "retromem's own index (top-k of the starting encoder, positives excluded). Training pairs come "
                    "from a BEIR data set's train qrels and/or from JSONL (query, positive, negatives). The result, "
                    "<output>/final, is a sentence-transformers folder. Rerunning the same command resumes; a "
                    "finished run given more --epochs or --max-steps trains on.",
        formatter_class=HelpFormatter)
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
    add_training_options(p, lr=2e-5, batch=32, save_steps=500)
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="let a batch hold the same text twice (by default batches avoid it: a duplicate would be a "
                        "false in-batch negative)")
    p.set_defaults(func=run)


def run(args) -> int:
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
    show_training_logs()
    start = time.perf_counter()
    final = finetune(config)
    if final is not None and is_main_process():
        print(f"fine-tuned in {time.perf_counter() - start:.1f}s -> {final}")
    return 0
