"""Token memories on SciFact with one encoder pass: every codec and setting in one table, and the
compression-quality curve.

1. Plain passage encoding (``encode_corpus``, the same chunking) of the whole corpus: the baseline of
   write throughput, and the dense first stage (exact inner-product search, top 100 per query).
2. One end-to-end ``build_memories`` with codec fp32 (the encoder's states after the last layer, real
   tokens only): the write throughput of a memory, and the cache every other setting is recoded from
   (its forward-pass time is measured inside it).
3. For each setting: ``build_memories`` fed the cached states (no second encoder pass); its write time
   is reported as the forward pass's time plus its own coding and writing time. Measured on disk
   (every file of the folder: codes, offsets, token ids, spans, passage ids, lookup tables, codebooks,
   metadata), divided by the corpus's original token count; the compression is fp32's 4*d bytes per
   token over that. Mean cosine: each original token against the decoded vector that stands for it
   (dropped tokens excluded). Random read: a freshly opened store's ``gather`` of 100 random passages
   (decoded), the median of 5 draws. nDCG@10: the dense top 100 of each SciFact test query reranked
   by MaxSim from the memory; "interp." adds ``w x`` the dense score, ``w`` chosen on SciFact train
   queries (never test).

Writes benchmarks/results/memory.md, memory.json and memory.png. States are cached under --work, so a
rerun recodes without encoding again (it then reports the timings of the run that encoded).

    nice .venv/bin/python benchmarks/memory.py                      # the whole corpus (~1.24M tokens)
    nice .venv/bin/python benchmarks/memory.py --limit 300 --settings fp16,binary --out /tmp/m   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP threads that spin-wait crawl on a loaded machine

#: name -> (MemoryConfig options). train_tokens is set for all below.
SETTINGS = {
    "fp32": dict(codec="fp32"),
    "fp16": dict(codec="fp16"),
    "int8": dict(codec="int8"),
    "binary": dict(codec="binary"),
    "pq84 (96x7)": dict(codec="pq:bytes=84"),
    "opq84 (96x7)": dict(codec="opq:bytes=84,niter=10"),
    "pq32 (32x8)": dict(codec="pq:m=32,nbits=8"),
    "rq32 (32x8)": dict(codec="rq:bytes=32", train_tokens=8192),
    "drop + binary": dict(codec="binary", drop_special=True, drop_stopwords=True),
    "merge 0.5 + binary": dict(codec="binary", merge_ratio=0.5),
    "merge 0.25 + binary": dict(codec="binary", merge_ratio=0.25),
    "drop + merge 0.5 + binary": dict(codec="binary", drop_special=True, drop_stopwords=True, merge_ratio=0.5),
    "merge 0.25 + pq32": dict(codec="pq:m=32,nbits=8", merge_ratio=0.25),
}
#: Settings whose interpolation weight is chosen on the train queries too (809 more queries reranked each).
INTERPOLATED = ("fp16", "binary", "pq84 (96x7)", "opq84 (96x7)", "merge 0.25 + binary", "merge 0.25 + pq32")
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--limit", type=int, help="only the first N passages (a quick look; not SciFact's nDCG)")
    parser.add_argument("--settings", help="comma-separated names of SETTINGS (default: all)")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--plain-passages", type=int, default=1024, help="plain encoding timed on the first N")
    parser.add_argument("--train-tokens", type=int, default=32768)
    parser.add_argument("--work", type=Path, default=Path("work/memory-bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--report-only", action="store_true", help="write the table and plot from the settings "
                        "measured so far (cached under --work), measuring nothing new")
    args = parser.parse_args()

    import torch

    from retromem.data.beir import load_beir
    from retromem.index.embeddings import encode_corpus
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.memory_store import MemoryStore
    from retromem.index.token_memories import MemoryConfig, build_memories
    from retromem.index.token_states import LayerStates

    work = args.work / (f"{args.dataset}-{args.limit}" if args.limit else args.dataset)
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    test = load_beir(args.dataset, split="test")
    train = load_beir(args.dataset, split="train")
    passages = list(test.iter_corpus())[:args.limit] if args.limit else list(test.iter_corpus())
    encoder = Encoder(EncoderConfig(model=args.model))
    d = encoder.dim
    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    # 1. plain passage encoding of the first --plain-passages (the baseline of write throughput)
    emb_dir = work / "embeddings"
    plain = passages[:args.plain_passages]
    if "plain" not in timings:
        shutil.rmtree(emb_dir, ignore_errors=True)
        start = time.perf_counter()
        encode_corpus(plain, encoder, emb_dir, chunk_size=args.shard_size)
        timings["plain"] = time.perf_counter() - start
        timings_file.write_text(json.dumps(timings, indent=2))
    doc_ids = [p.id for p in passages]

    # 2. the fp32 memory: one encoder pass, timed end to end, the forward pass inside it timed too
    fp32_dir = work / "fp32"
    if "write fp32" not in timings or not (fp32_dir / "meta.json").exists() or \
            not MemoryStore.open(fp32_dir).complete:
        shutil.rmtree(fp32_dir, ignore_errors=True)
        from retromem.index.token_states import passage_layer_states

        forward = [0.0]

        def timed_states(chunk):
            t = time.perf_counter()
            out = passage_layer_states(encoder, chunk, -1)
            forward[0] += time.perf_counter() - t
            return out

        start = time.perf_counter()
        build_memories(passages, encoder, MemoryConfig(codec="fp32", shard_size=args.shard_size), fp32_dir,
                       states=timed_states)
        timings["write fp32"] = time.perf_counter() - start
        timings["forward"] = forward[0]
        timings_file.write_text(json.dumps(timings, indent=2))
    fp32 = MemoryStore.open(fp32_dir)
    orig_tokens = int(fp32.meta.details["tokens"])
    truncated = int(fp32.meta.details["truncated"])
    plain_tokens = sum(len(m) for m in fp32.gather([p.id for p in plain]))
    plain_tps = plain_tokens / timings["plain"]

    # the dense first stage: the encoder's pooled vectors, mean-pooled from the fp32 states (MiniLM pools by the
    # mean and normalises), checked against the plain encoding's vectors
    emb = dense_from_states(fp32, doc_ids, encoder)
    plain_emb = np.load(emb_dir / "embeddings.npy")
    pooled_cosine = float((plain_emb * emb[:len(plain_emb)]).sum(1).min())
    first_test = dense_run(encoder, emb, doc_ids, test.queries)
    first_train = dense_run(encoder, emb, doc_ids, train.queries)
    dense_ndcg = ndcg10(test.qrels, first_test)

    def cached_states(chunk):
        mems = fp32.gather([p.id for p in chunk])
        return LayerStates(states=[m.vectors for m in mems], token_ids=[m.token_ids for m in mems])

    names = list(SETTINGS) if not args.settings else [s.strip() for s in args.settings.split(",")]
    rows = []
    results_file = work / "rows.json"
    done = {r["setting"]: r for r in json.loads(results_file.read_text())} if results_file.exists() else {}
    if args.report_only:
        names = [n for n in names if n in done]
    else:
        query_states_test = query_states(encoder, test.queries, fp32.layer)
        query_states_train = query_states(encoder, train.queries, fp32.layer)
    for name in names:
        if name in done:
            rows.append(done[name])
            print(f"{name}: reused", flush=True)
            continue
        options = dict({"train_tokens": args.train_tokens, **SETTINGS[name]}, shard_size=args.shard_size)
        folder = fp32_dir if name == "fp32" else work / slug(name)
        if name == "fp32":
            write_s = timings["write fp32"]
        else:
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            build_memories(passages, encoder, MemoryConfig(**options), folder, states=cached_states)
            write_s = timings["forward"] + time.perf_counter() - start
        store = MemoryStore.open(folder)
        size = store.disk_bytes()
        bpt = size / orig_tokens
        cosine = mean_cosine(fp32, store, doc_ids)
        latency = read_latency(folder, doc_ids)
        row = {
            "setting": name, "codec": store.codec.label, "code_bytes": store.codec.code_size,
            "vectors": store.num_tokens, "disk_bytes": size, "bytes_per_token": bpt,
            "compression": 4 * d / bpt, "cosine": cosine, "write_s": write_s,
            "write_tokens_per_s": orig_tokens / write_s, "write_vs_plain": plain_tps / (orig_tokens / write_s),
            "read_100_ms": latency,
        }
        row.update(rerank_scores(store, encoder, first_test, first_train, test, train, query_states_test,
                                 query_states_train, interpolate=name in INTERPOLATED))
        rows.append(row)
        done[name] = row
        results_file.write_text(json.dumps(list(done.values()), indent=2))
        print(json.dumps(row), flush=True)
        if name != "fp32":
            shutil.rmtree(folder, ignore_errors=True)  # keep the disk: the figures are measured

    summary = {
        "dataset": args.dataset, "model": args.model, "passages": len(passages), "tokens": orig_tokens,
        "truncated_passages": truncated, "dim": d, "layer": fp32.layer,
        "plain_passages": len(plain), "plain_tokens": plain_tokens, "plain_encode_s": timings["plain"],
        "plain_tokens_per_s": plain_tps, "pooled_vs_plain_min_cosine": pooled_cosine,
        "forward_s": timings["forward"], "dense_ndcg10": dense_ndcg,
        "precision": encoder.metadata()["precision"], "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
        "rows": rows,
    }
    (args.out / "memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "memory.md").write_text(markdown(summary) + "\n")
    plot(summary, args.out / "memory.png")
    print(markdown(summary))


def dense_from_states(fp32, doc_ids, encoder, batch=512):
    rows = []
    for start in range(0, len(doc_ids), batch):
        for m in fp32.gather(doc_ids[start:start + batch]):
            v = m.vectors.mean(0)
            rows.append(v / np.linalg.norm(v) if encoder.normalize else v)
    return np.stack(rows).astype(np.float32)


def dense_run(encoder, emb, doc_ids, queries, k=100):
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    qids = list(queries)
    qv = encoder.encode_queries([queries[q] for q in qids])
    scores, rows = index.search(qv, min(k + 1, len(doc_ids)))
    run = {}
    for qid, srow, irow in zip(qids, scores, rows):
        ranking = {doc_ids[i]: float(s) for s, i in zip(srow, irow) if i >= 0 and doc_ids[i] != qid}
        run[qid] = dict(list(ranking.items())[:k])
    return run


def ndcg10(qrels, run) -> float:
    from retromem.eval.beir_metrics import evaluate

    return evaluate(qrels, run, k_values=(10,)).mean["NDCG@10"]


def query_states(encoder, queries, layer):
    from retromem.index.token_states import text_layer_states
    from retromem.retrieve.memory_rerank import _normalised

    qids = list(queries)
    states = text_layer_states(encoder, [encoder.query_prefix + queries[q] for q in qids], layer)
    return {q: _normalised(s) for q, s in zip(qids, states.states)}


def rerank_scores(store, encoder, first_test, first_train, test, train, qs_test, qs_train, interpolate) -> dict:
    from retromem.retrieve.memory_rerank import MemoryReranker, RerankConfig, combine

    reranker = MemoryReranker(store, encoder, RerankConfig(rerank_depth=100))
    start = time.perf_counter()
    ms_test = reranker.maxsim(first_test, test.queries, query_states=qs_test)
    rerank_s = time.perf_counter() - start
    plain = {"ndcg10": ndcg10(test.qrels, combine(first_test, ms_test, 0.0)), "rerank_test_s": rerank_s}
    if not interpolate:
        return {**plain, "weight": None, "ndcg10_interp": None}
    ms_train = reranker.maxsim(first_train, train.queries, query_states=qs_train)
    by_weight = {w: ndcg10(train.qrels, combine(first_train, ms_train, w)) for w in WEIGHTS}
    best = max(by_weight, key=lambda w: (by_weight[w], -w))
    return {**plain, "weight": best, "ndcg10_interp": ndcg10(test.qrels, combine(first_test, ms_test, best)),
            "train_ndcg10_by_weight": by_weight}


def mean_cosine(fp32, store, doc_ids, batch=256) -> float:
    """Each original token's cosine with the decoded vector standing for it (dropped tokens excluded)."""
    total, count = 0.0, 0
    for start in range(0, len(doc_ids), batch):
        ids = doc_ids[start:start + batch]
        for orig, dec in zip(fp32.gather(ids), store.gather(ids)):
            if not len(dec):
                continue
            a = orig.vectors / np.maximum(np.linalg.norm(orig.vectors, axis=1, keepdims=True), 1e-12)
            b = dec.vectors / np.maximum(np.linalg.norm(dec.vectors, axis=1, keepdims=True), 1e-12)
            lengths = dec.spans[:, 1] - dec.spans[:, 0]
            positions = np.concatenate([np.arange(s, e) for s, e in dec.spans])
            owner = np.repeat(np.arange(len(dec)), lengths)
            total += float((a[positions] * b[owner]).sum())
            count += len(positions)
    return total / max(count, 1)


def read_latency(folder, doc_ids, n=100, draws=5) -> float:
    from retromem.index.memory_store import MemoryStore

    rng = np.random.default_rng(0)
    times = []
    for _ in range(draws):
        ids = [doc_ids[i] for i in rng.choice(len(doc_ids), min(n, len(doc_ids)), replace=False)]
        store = MemoryStore.open(folder)
        start = time.perf_counter()
        store.gather(ids)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def markdown(s: dict) -> str:
    fp16 = next((r for r in s["rows"] if r["setting"] == "fp16"), None)
    lines = [
        f"Token memories of {s['dataset']} ({s['passages']} passages, {s['tokens']:,} tokens, "
        f"{s['truncated_passages']} "
        f"truncated at the model's maximum), {s['model']} states after layer {s['layer']} ({s['dim']}-d), "
        f"{s['precision']} encoder on {s['torch_threads']} threads, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in s['load_average'])} (a shared 2-core machine).",
        "",
        f"Plain passage encoding (`encode_corpus`, the first {s['plain_passages']} passages, {s['plain_tokens']:,} "
        f"tokens): {s['plain_encode_s']:.0f} s, {s['plain_tokens_per_s']:,.0f} tokens/s. Forward pass inside the "
        f"fp32 memory build (all passages): {s['forward_s']:.0f} s, {s['tokens'] / s['forward_s']:,.0f} tokens/s. "
        f"Dense first stage (top 100; the pooled vectors, mean-pooled from the fp32 states, min cosine "
        f"{s['pooled_vs_plain_min_cosine']:.6f} with the plain encoding's): nDCG@10 {s['dense_ndcg10']:.4f}. "
        "'write vs plain' is plain encoding's tokens/s over the setting's (1.00x = as fast).",
        "",
        "| setting | codec | B/token on disk | vs fp32 | mean cosine | write tokens/s | write vs plain | "
        "read 100 passages (ms) | nDCG@10 reranked | % of fp16 | w (train) | nDCG@10 interp. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        share = f"{100 * r['ndcg10'] / fp16['ndcg10']:.1f}%" if fp16 else "-"
        lines.append(f"| {r['setting']} | {r['codec']} | {r['bytes_per_token']:.1f} | {r['compression']:.1f}x | "
                     f"{r['cosine']:.4f} | {r['write_tokens_per_s']:,.0f} | {r['write_vs_plain']:.2f}x | "
                     f"{r['read_100_ms']:.1f} | {r['ndcg10']:.4f} | {share} | "
                     + (f"{r['weight']:g} | {r['ndcg10_interp']:.4f} |" if r.get("weight") is not None else "- | - |"))
    lines += ["", "Disk of a 3B-token memory (Wikipedia, KILT) from the measured bytes per token; at 768 dimensions "
              "the code part doubles (same compression of each vector), the rest (token ids, offsets, ids) does not:",
              "", "| setting | 384-d | 768-d |", "|---|---:|---:|"]
    for r in s["rows"]:
        code = r["code_bytes"] * r["vectors"] / s["tokens"]
        at768 = r["bytes_per_token"] + code
        lines.append(f"| {r['setting']} | {3e9 * r['bytes_per_token'] / 1e9:,.0f} GB | {3e9 * at768 / 1e9:,.0f} GB |")
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], "ndcg10", "SciFact test nDCG@10 (MaxSim rerank of dense top 100)"),
                           (axes[1], "cosine", "mean cosine, decoded vs original")):
        for r in s["rows"]:
            ax.scatter(r["bytes_per_token"], r[key], color="tab:red" if "merge" in r["setting"] else "tab:blue")
            ax.annotate(r["setting"], (r["bytes_per_token"], r[key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if key == "ndcg10":
            ax.axhline(s["dense_ndcg10"], color="gray", linestyle="--", label="dense first stage")
            ax.legend(loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per token on disk (log)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Token memories: compression vs quality ({s['dataset']}, {s['model']}, {s['tokens']:,} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
