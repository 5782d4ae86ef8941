"""``retromem pretrain``: pretraining with the RetroMAE family of objectives."""

from __future__ import annotations

import time

from retromem.cli.common import HelpFormatter, is_main_process, show_training_logs
from retromem.cli.training import add_training_options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain an encoder with a bottlenecked MAE objective (RetroMAE, DupMAE, CoT-MAE, bow, MLM, "
                                 "2D-Matryoshka)",
        description="Pretrain any BERT-like encoder (or a fresh one from a config) on text with the objectives of the "
                    "RetroMAE family, on the HF Trainer: `accelerate launch` / `torchrun` give multi-GPU and "
                    "multi-node data parallelism. Checkpoints go to --output; a rerun resumes from the newest one. "
                    "The result, <output>/final, loads with AutoModel and SentenceTransformer ([CLS] pooling) and "
                    "with `retromem eval beir --model <output>/final`.",
        formatter_class=HelpFormatter)
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
    add_training_options(p, lr=1e-4, batch=16, save_steps=500)
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
    p.set_defaults(func=run)


def run(args) -> int:
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
    show_training_logs()
    start = time.perf_counter()
    final = pretrain(config)
    if final is not None and is_main_process():
        from retromem.io import read_json

        objective = read_json(final / "training_run.json").get("objective", args.objective)
        print(f"pretrained {objective} in {time.perf_counter() - start:.1f}s -> {final}")
    return 0
