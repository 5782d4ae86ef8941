"""BM25 (pyserini) against the dense searcher, measured in one run, on SciFact and the MS MARCO sample.

1. Index build throughput (passages/s): BM25 (collection written + Anserini IndexCollection, 1 and 2 threads)
   beside the dense build (MiniLM encoding of ``--encode-sample`` passages, whose rate stands for the corpus's,
   plus the FAISS Flat build of the whole corpus's vectors).
2. Query throughput (queries/s) at 1 and 2 threads, top 1000: BM25 ``batch_search`` (threads) beside dense
   search (query encoding with that many torch threads + FAISS Flat search of the whole corpus). The dense index
   holds the cached embeddings when the work directory has them (``retromem eval beir --workdir``), else random
   unit vectors of the corpus's size (search cost does not depend on the values; said in the output).
3. RRF cost: fusing the BM25 and dense runs (top 1000 each) against the two searches themselves.

Queries are repeated (with new ids) to at least ``--min-queries`` so that a rate is not one JIT warm-up. Ratios
are against the dense searcher measured here; figures depend on the load of the machine (printed).

    .venv/bin/python benchmarks/bm25.py --workdir work/bm25/wd --output work/bm25/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="scifact,msmarco-sample")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workdir", default=None, help="eval beir's work directory (cached embeddings reused)")
    parser.add_argument("--encode-sample", type=int, default=256, help="passages encoded to time the dense build")
    parser.add_argument("--min-queries", type=int, default=600)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    results = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.datasets.split(","):
        results[name] = bench_dataset(name, args)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


def bench_dataset(name: str, args) -> dict:
    import numpy as np
    import torch

    from retromem.data.beir import load_beir
    from retromem.index.bm25 import BM25IndexConfig, build_bm25_index
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.faiss_index import DenseIndex, IndexConfig, build_index
    from retromem.retrieve.bm25 import BM25Config, BM25Searcher
    from retromem.retrieve.dense import DenseSearcher
    from retromem.retrieve.fusion import rrf

    dataset = load_beir(name, split="test")
    passages = list(dataset.iter_corpus())
    queries = _repeat(dataset.queries, args.min_queries)
    print(f"\n== {name}: {len(passages)} passages, {len(queries)} queries ({len(dataset.queries)} distinct), "
          f"top {args.k}")
    out: dict = {"passages": len(passages), "queries": len(queries)}
    scratch = Path(tempfile.mkdtemp(prefix="bm25-bench-"))
    rows = []
    try:
        from retromem.index.java import start_jvm

        start_jvm()
        indexes = {}
        for threads in (1, 2):
            start = time.perf_counter()
            indexes[threads] = build_bm25_index(lambda: iter(passages), scratch / f"bm25-{threads}",
                                                BM25IndexConfig(threads=threads))
            seconds = time.perf_counter() - start
            out[f"bm25_build_{threads}t_pps"] = len(passages) / seconds
            rows.append((f"BM25 index build, {threads} thread(s)", len(passages) / seconds, "passages/s"))

        torch.set_num_threads(2)
        encoder = Encoder(EncoderConfig(model=args.model))
        sample = passages[: args.encode_sample]
        encoder.encode_passages(sample[:16])  # warm-up
        start = time.perf_counter()
        encoder.encode_passages(sample)
        encode_pps = len(sample) / (time.perf_counter() - start)
        vectors, source = _corpus_vectors(name, dataset, encoder, args.workdir, len(passages))
        emb = _embedding_set(scratch / "emb", passages, vectors, encoder)
        start = time.perf_counter()
        build_index(emb, scratch / "flat", IndexConfig(factory="Flat"))
        flat_s = time.perf_counter() - start
        dense_build_pps = len(passages) / (len(passages) / encode_pps + flat_s)
        out.update(dense_encode_pps=encode_pps, dense_flat_build_s=flat_s, dense_build_pps=dense_build_pps,
                   dense_vectors=source)
        rows.append((f"dense build (MiniLM encode, {len(sample)} sampled, + Flat), 2 threads", dense_build_pps,
                     "passages/s"))

        runs = {}
        for threads in (1, 2):
            bm25 = BM25Searcher(indexes[2], BM25Config(search_threads=threads))
            bm25.search(dict(list(queries.items())[:50]), k=args.k)  # warm-up (JIT)
            start = time.perf_counter()
            runs[f"bm25-{threads}"] = bm25.search(queries, k=args.k)
            bm25_s = time.perf_counter() - start
            torch.set_num_threads(threads)
            import faiss

            faiss.omp_set_num_threads(threads)
            dense = DenseSearcher(encoder, DenseIndex.load(scratch / "flat"))
            dense.search(dict(list(queries.items())[:50]), k=args.k)
            start = time.perf_counter()
            runs[f"dense-{threads}"] = dense.search(queries, k=args.k)
            dense_s = time.perf_counter() - start
            out[f"bm25_{threads}t_qps"] = len(queries) / bm25_s
            out[f"dense_{threads}t_qps"] = len(queries) / dense_s
            rows.append((f"BM25 search, {threads} thread(s)", len(queries) / bm25_s, "queries/s"))
            rows.append((f"dense search (encode + Flat), {threads} thread(s)", len(queries) / dense_s, "queries/s"))
            out[f"bm25_{threads}t_s"], out[f"dense_{threads}t_s"] = bm25_s, dense_s
        start = time.perf_counter()
        rrf([runs["bm25-2"], runs["dense-2"]], k=args.k)
        rrf_s = time.perf_counter() - start
        out["rrf_s"] = rrf_s
        out["rrf_share_of_searches"] = rrf_s / (out["bm25_2t_s"] + out["dense_2t_s"])
        rows.append(("RRF of the two runs (top 1000 each)", len(queries) / rrf_s, "queries/s"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    dense_q = {1: out["dense_1t_qps"], 2: out["dense_2t_qps"]}
    print(f"{'what':<62} {'rate':>10}  unit        vs dense")
    for what, rate, unit in rows:
        ratio = ""
        if unit == "passages/s":
            ratio = f"{rate / out['dense_build_pps']:.1f}x"
        elif what.startswith(("BM25 search", "dense search")):
            ratio = f"{rate / dense_q[1 if '1 thread' in what else 2]:.2f}x"
        print(f"{what:<62} {rate:>10.1f}  {unit:<11} {ratio}")
    print(f"dense vectors: {out['dense_vectors']}; RRF took {out['rrf_s']:.2f}s = "
          f"{100 * out['rrf_share_of_searches']:.1f}% of the two searches' {out['bm25_2t_s'] + out['dense_2t_s']:.1f}s")
    del np
    return out


def _repeat(queries: dict[str, str], at_least: int) -> dict[str, str]:
    out, round_ = {}, 0
    while len(out) < at_least:
        out.update({f"{qid}~{round_}": text for qid, text in queries.items()})
        round_ += 1
    return out


def _corpus_vectors(name, dataset, encoder, workdir, count):
    """The cached embeddings of ``eval beir`` when there are, else random unit vectors (timing only)."""
    import numpy as np

    from retromem.index.embeddings import EmbeddingSet
    from retromem.workdir import work_directory

    if workdir:
        folder = work_directory(workdir, dataset.root, encoder.metadata()) / "embeddings"
        try:
            emb = EmbeddingSet.load(folder)
            if len(emb.ids) == count:
                return np.asarray(emb.vectors, dtype=np.float32), f"cached embeddings ({folder})"
        except Exception:  # noqa: BLE001 (absent or unfinished: fall back)
            pass
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, "random unit vectors (the corpus is not encoded here; Flat search cost is the same)"


def _embedding_set(folder, passages, vectors, encoder):
    """An in-memory EmbeddingSet of ``vectors`` (what build_index takes)."""
    from retromem.artifacts import ArtifactMeta, EncoderInfo
    from retromem.index.embeddings import EmbeddingSet

    artifact = ArtifactMeta(kind="embeddings", encoder=EncoderInfo.from_dict(encoder.metadata()),
                            details={"count": len(passages)})
    return EmbeddingSet(path=Path(folder), vectors=vectors, ids=[p.id for p in passages], meta=artifact.to_json(),
                        artifact=artifact)


if __name__ == "__main__":
    main()
