"""``retromem encode``: a corpus into an embeddings folder."""

from __future__ import annotations

import time
from pathlib import Path

from retromem.cli.common import add_command, add_encoder_options, check_output_folder, encoder_config, looks_like_a_file
from retromem.cli.options import add_options, values_from_args
from retromem.eval.beir_pipeline import BeirEvalConfig


def add_parser(sub) -> None:
    p = add_command(sub, "encode", run,
                    help="encode a corpus into embeddings (resumable; data-parallel under accelerate)",
                    description="Encode every passage of a corpus into float32 vectors stored as .npy with ids and "
                                "metadata. Rerunning after an interruption resumes from finished chunks; rerunning "
                                "after it finished checks the folder against the corpus (ids, titles and texts) "
                                "and reuses it. Under `accelerate launch` each process encodes its share and rank 0 "
                                "merges.")
    p.add_argument("--corpus", required=True,
                   help="a BEIR data set name (scifact), a BEIR folder, or a corpus.jsonl file (_id, title, text)")
    p.add_argument("--output", required=True, type=Path, help="embeddings folder to write")
    add_options(p, BeirEvalConfig, only=("chunk_size",))
    add_encoder_options(p)


def run(args) -> int:
    from retromem.data.beir import corpus_file, iter_corpus, resolve_beir_dir
    from retromem.index.embeddings import encode_corpus
    from retromem.index.encoder import Encoder
    from retromem.io import count_lines

    check_output_folder(args.output)
    if looks_like_a_file(args.corpus, "--corpus"):
        corpus_path = Path(args.corpus)
    else:
        corpus_path = corpus_file(resolve_beir_dir(args.corpus))
    chunk_size = values_from_args(BeirEvalConfig, args, only=("chunk_size",))["chunk_size"]
    encoder = Encoder(encoder_config(args))
    start = time.perf_counter()
    result = encode_corpus(iter_corpus(corpus_path), encoder, args.output, chunk_size=chunk_size,
                           total=count_lines(corpus_path), show_progress=True, corpus_name=str(corpus_path),
                           corpus_path=corpus_path)
    if result is not None:
        verb = "reused" if result.reused else "encoded"
        print(f"{verb} {len(result.ids)} passages ({result.dim}-d, {encoder.metadata()['precision']}) "
              f"in {time.perf_counter() - start:.1f}s -> {args.output}")
    return 0
