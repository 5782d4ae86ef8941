"""Encoding and indexing speed, against the baselines named by issue 2, measured in one run.

1. Passages/second of retromem's Encoder against ``SentenceTransformer.encode`` (its defaults) on the
   same model, batch size and passages (the SciFact corpus), in retromem's default mode (bf16 autocast
   where the CPU supports it) and in exact fp32 mode, with the cosine between the two embeddings.
   Goals: default >= 1.8x with cosine >= 0.9999; fp32 >= 1.0x with cosine >= 0.999999.
2. FAISS index build and search time for Flat and HNSW32 on those embeddings, and HNSW32's recall@10
   against Flat (goal >= 0.99), searched with the SciFact queries.

Run by hand (it takes ~10 minutes on a 2-core CPU for the whole corpus):

    .venv/bin/python benchmarks/encode.py                   # whole SciFact corpus
    .venv/bin/python benchmarks/encode.py --limit 1000      # a quicker look
    .venv/bin/python benchmarks/encode.py --output bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=32, help="SentenceTransformer.encode's default")
    parser.add_argument("--limit", type=int, help="only the first N passages")
    parser.add_argument("--hnsw-ef-search", type=int, default=128)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from retromem.data.beir import load_beir
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.model_paths import resolve_model_path

    hf_logging.disable_progress_bar()
    dataset = load_beir(args.dataset)
    passages = list(dataset.iter_corpus())[: args.limit]
    texts = [p.full_text() for p in passages]
    print(f"{len(texts)} passages of {dataset.name}, model {args.model}, batch {args.batch_size}, "
          f"torch threads {__import__('torch').get_num_threads()}")

    st = SentenceTransformer(resolve_model_path(args.model), device="cpu")
    st.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    reference = st.encode(texts, batch_size=args.batch_size)
    st_seconds = time.perf_counter() - start
    results = {"passages": len(texts), "sentence_transformers_s": st_seconds,
               "sentence_transformers_pps": len(texts) / st_seconds}
    rows = [("SentenceTransformer.encode (fp32)", st_seconds, 1.0, 1.0, "baseline")]

    vectors = {}
    for mode, goal_speed, goal_cos in (("auto", 1.8, 0.9999), ("fp32", 1.0, 0.999999)):
        encoder = Encoder(EncoderConfig(model=args.model, precision=mode, batch_size=args.batch_size))
        encoder.encode_passages(passages[:64])  # warm-up
        start = time.perf_counter()
        vecs = encoder.encode_passages(passages)
        seconds = time.perf_counter() - start
        cos = _min_cosine(vecs, reference)
        speed = st_seconds / seconds
        label = f"retromem {mode} ({encoder.metadata()['precision']})"
        verdict = "ok" if speed >= goal_speed and cos >= goal_cos else "MISSED"
        rows.append((label, seconds, speed, cos, f"goal >= {goal_speed}x, cos >= {goal_cos}: {verdict}"))
        results[f"retromem_{mode}"] = {"seconds": seconds, "pps": len(texts) / seconds, "speedup": speed,
                                       "min_cosine": cos, "precision": encoder.metadata()["precision"]}
        vectors[mode] = vecs
        del encoder

    print("\n| encoder | seconds | passages/s | speed vs ST | min cosine to ST | goal |")
    print("|---|---:|---:|---:|---:|---|")
    for label, seconds, speed, cos, goal in rows:
        print(f"| {label} | {seconds:.1f} | {len(texts) / seconds:.1f} | {speed:.2f}x | {cos:.7f} | {goal} |")

    encoder = Encoder(EncoderConfig(model=args.model))
    queries = encoder.encode_queries(list(dataset.queries.values()))
    results["index"] = _index_benchmark(vectors["auto"], [p.id for p in passages], encoder.metadata(), queries,
                                        args.hnsw_ef_search)
    print("\n| index | build s | search s (all queries) | recall@10 vs Flat | goal |")
    print("|---|---:|---:|---:|---|")
    for name, figures in results["index"].items():
        goal = "" if name == "Flat" else f">= 0.99: {'ok' if figures['recall@10'] >= 0.99 else 'MISSED'}"
        print(f"| {name} | {figures['build_s']:.3f} | {figures['search_s']:.4f} | {figures['recall@10']:.4f} "
              f"| {goal} |")

    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


def _index_benchmark(vectors: np.ndarray, ids: list[str], meta: dict, queries: np.ndarray, ef_search: int) -> dict:
    """Build and search each index with retromem's own build_index / DenseIndex (saving included)."""
    import tempfile
    from pathlib import Path

    from retromem.index.embeddings import EmbeddingSet
    from retromem.index.faiss_index import IndexConfig, build_index

    embeddings = EmbeddingSet(path=Path("in-memory"), vectors=vectors, ids=ids, meta=dict(meta, count=len(ids)))
    out = {}
    flat_ids = None
    with tempfile.TemporaryDirectory() as tmp:
        for factory, params in (("Flat", ""), ("HNSW32", f"efSearch={ef_search}")):
            start = time.perf_counter()
            index = build_index(embeddings, Path(tmp) / factory, IndexConfig(factory=factory, search_params=params))
            build = time.perf_counter() - start
            start = time.perf_counter()
            _, doc_ids = index.search(queries, 10)
            search = time.perf_counter() - start
            if flat_ids is None:
                flat_ids = doc_ids
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(doc_ids, flat_ids)])
            name = factory if not params else f"{factory} ({params})"
            out[name] = {"build_s": build, "search_s": search, "recall@10": float(recall)}
    return out


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


if __name__ == "__main__":
    main()
