"""``retromem index memory``: the token memory of a corpus (per-token states at one layer, coded, sharded); and
the memory-rerank options that ``search`` and ``eval beir`` share."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import add_command, add_encoder_options, check_output_folder, encoder_config
from retromem.cli.options import add_options, config_from_args


def add_parser(index_sub) -> None:
    from retromem.index.token_memories import MemoryConfig

    p = add_command(index_sub, "memory", run, help="store every passage's per-token states (token memory)",
                    description="Run the encoder over a corpus and store, for each passage, the hidden states of its "
                                "real tokens after --layer (0 = the embedding output, N = the last) with their token "
                                "ids, optionally without special or stopword tokens and with neighbouring similar "
                                "tokens merged, each vector coded by --codec (fp32, fp16, int8, binary, pq, opq, rq; "
                                "trained on a sample of the first shard). Shards are written atomically one by one; "
                                "a rerun resumes from the finished ones; under `accelerate launch` each process "
                                "writes its share. See docs/memory.md.")
    p.add_argument("--corpus", required=True, help="BEIR name or folder, corpus.jsonl, KILT knowledge source or name")
    p.add_argument("--output", required=True, type=Path, help="memory folder to write")
    p.add_argument("--passage-words", type=int, default=100, help="KILT sources: words per passage")
    add_options(p.add_argument_group("memory"), MemoryConfig)
    add_encoder_options(p)


def run(args) -> int:
    from retromem.data.corpora import open_corpus
    from retromem.errors import ConfigError
    from retromem.index.encoder import Encoder
    from retromem.index.token_memories import MemoryConfig, build_memories

    check_output_folder(args.output)
    if args.passage_words < 1:
        raise ConfigError(f"--passage-words must be at least 1, got {args.passage_words}")
    config = config_from_args(MemoryConfig, args)
    corpus = open_corpus(args.corpus, passage_words=args.passage_words)
    encoder = Encoder(encoder_config(args))
    start = time.perf_counter()
    store = build_memories(corpus, encoder, config, args.output, show_progress=True)
    if store is not None:
        details = store.meta.details
        tokens = details.get("tokens") or 0
        print(f"{'reused' if store.reused else 'stored'} {len(store)} passages, {store.num_tokens} vectors of {tokens} "
              f"tokens (layer {store.layer}, {store.codec.label}, {store.disk_bytes() / max(tokens, 1):.1f} "
              f"bytes/token on disk; {details.get('truncated', 0)} truncated, {details.get('empty', 0)} empty) in "
              f"{time.perf_counter() - start:.1f}s -> {args.output}")
    return 0


def add_rerank_options(parser) -> None:
    """``--rerank memory --memory DIR`` and the rerank depth and weight (for ``search`` and ``eval beir``)."""
    from retromem.retrieve.memory_rerank import RerankConfig

    group = parser.add_argument_group("memory reranking")
    group.add_argument("--rerank", choices=("memory",), help="rerank the first stage's top --rerank-depth by late "
                       "interaction (MaxSim) over the token memory --memory")
    group.add_argument("--memory", type=Path, help="token memory folder (from `retromem index memory`) for --rerank")
    add_options(group, RerankConfig)


def rerank_if_asked(args, run, queries, encoder=None):
    """``run`` reranked from ``args.memory`` when ``--rerank memory`` was given (else ``run`` itself), with
    ``encoder`` (default: the encoder the memory records)."""
    if not check_rerank_args(args):
        return run
    from retromem.index.encoder import Encoder
    from retromem.index.memory_store import MemoryStore
    from retromem.retrieve.memory_rerank import MemoryReranker, RerankConfig

    store = MemoryStore.open(args.memory)
    if encoder is None:
        from retromem.index.encoder import EncoderConfig

        recorded = store.meta.encoder
        encoder = Encoder(EncoderConfig(model=recorded.model_path or recorded.model, max_length=recorded.max_length,
                                        trust_remote_code=args.trust_remote_code))
    reranker = MemoryReranker(store, encoder, config_from_args(RerankConfig, args))
    return reranker.rerank(run, queries, show_progress=True)


def check_rerank_args(args) -> bool:
    """Whether ``--rerank memory`` was given (with its ``--memory``); memory options without it are refused."""
    from retromem.errors import ConfigError

    if getattr(args, "rerank", None) is None:
        given = [f for f in ("--memory", "--rerank-depth", "--rerank-weight") if f in getattr(args, "given", ())]
        if given:
            raise ConfigError(f"{', '.join(given)} set up memory reranking: give --rerank memory too, or leave "
                              "them out")
        return False
    if args.memory is None:
        raise ConfigError("--rerank memory needs --memory DIR (a token memory from `retromem index memory`)")
    return True
