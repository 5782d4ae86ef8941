"""``retromem index build``: a FAISS index from an embeddings folder."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli import index_bm25, index_memory
from retromem.cli.common import (
    EXIT_USAGE,
    HelpFormatter,
    add_command,
    add_index_options,
    check_output_folder,
    index_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build FAISS and BM25 indexes", formatter_class=HelpFormatter)
    p.set_defaults(func=lambda args: p.print_help() or EXIT_USAGE)
    index_sub = p.add_subparsers(title="index commands", metavar="COMMAND")
    b = add_command(index_sub, "build", run, help="build a FAISS index from stored embeddings",
                    description="Build a FAISS index from an embeddings folder made by `retromem encode`. Trained "
                                "on a random sample when the index type needs training; built on all GPUs when "
                                "FAISS sees any, on the CPU otherwise; saved atomically. An --output that already "
                                "holds this very index (same embeddings and settings) is reused; one holding "
                                "another index is refused.")
    b.add_argument("--embeddings", required=True, type=Path, help="embeddings folder (from `retromem encode`)")
    b.add_argument("--output", required=True, type=Path, help="index folder to write")
    add_index_options(b, exclude=("search_params",))  # a search setting: `search` and `eval beir` take it
    index_bm25.add_parser(index_sub)
    index_memory.add_parser(index_sub)


def run(args) -> int:
    from retromem.index.embeddings import EmbeddingSet
    from retromem.index.faiss_index import build_or_reuse_index

    check_output_folder(args.output)
    config = index_config(args)
    start = time.perf_counter()
    index, reused = build_or_reuse_index(EmbeddingSet.load(args.embeddings), args.output, config,
                                         show_progress=True)
    verb = "reused" if reused else "built"
    print(f"{verb} {config.factory} over {len(index.ids)} vectors in {time.perf_counter() - start:.1f}s "
          f"-> {args.output}")
    return 0
