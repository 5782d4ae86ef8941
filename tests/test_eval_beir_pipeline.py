"""The whole dense BEIR chain against sentence-transformers' own encode() scored by pytrec_eval directly.

The issue's acceptance check, on a SciFact subset so that it stays quick: the first 60 judged test
queries, every document judged for them, and 400 other documents as distractors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from retromem.eval.beir_pipeline import BeirEvalConfig, evaluate_dense_beir, evaluate_run_beir
from retromem.index.encoder import EncoderConfig
from retromem.model_paths import resolve_model_path

N_QUERIES, N_DISTRACTORS = 60, 400
TOLERANCE = 0.002


@pytest.fixture(scope="module")
def scifact_subset(scifact_dir, tmp_path_factory) -> Path:
    """A BEIR folder holding the subset (queries.jsonl keeps every query: the loader must pick the judged ones)."""
    with open(scifact_dir / "qrels" / "test.tsv", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t")][1:]
    chosen: list[str] = []
    for qid, _, _ in rows:
        if qid not in chosen:
            chosen.append(qid)
    chosen = chosen[:N_QUERIES]
    kept_rows = [row for row in rows if row[0] in chosen]
    judged = {doc for _, doc, _ in kept_rows}

    out = tmp_path_factory.mktemp("scifact-subset") / "scifact-subset"
    (out / "qrels").mkdir(parents=True)
    distractors = 0
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as src, \
            open(out / "corpus.jsonl", "w", encoding="utf-8") as dst:
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in judged or distractors < N_DISTRACTORS:
                distractors += doc_id not in judged
                dst.write(line)
    (out / "queries.jsonl").write_bytes((scifact_dir / "queries.jsonl").read_bytes())
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines("\t".join(row) + "\n" for row in kept_rows)
    return out


def sentence_transformers_scores(folder: Path) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 of SentenceTransformer.encode + exact inner product, by pytrec_eval."""
    from sentence_transformers import SentenceTransformer

    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    all_queries = {q["_id"]: q["text"]
                   for q in map(json.loads, (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines())}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as handle:
        for qid, doc, grade in list(csv.reader(handle, delimiter="\t"))[1:]:
            qrels.setdefault(qid, {})[doc] = int(grade)
    qids = list(qrels)

    model = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    doc_vectors = model.encode([(d.get("title", "") + " " + d["text"]).strip() for d in docs], convert_to_numpy=True)
    query_vectors = model.encode([all_queries[q] for q in qids], convert_to_numpy=True)
    doc_ids = [d["_id"] for d in docs]
    scores = query_vectors @ doc_vectors.T

    run_100, run_10 = {}, {}
    for qid, row in zip(qids, scores):
        ranked = [(doc_ids[i], float(row[i])) for i in np.argsort(-row, kind="stable") if doc_ids[i] != qid]
        run_100[qid] = dict(ranked[:100])          # BEIR: a query's own id never counts
        run_10[qid] = dict(ranked[:10])
    ndcg_recall = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run_100)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_10)
    return {
        "NDCG@10": float(np.mean([ndcg_recall[q]["ndcg_cut_10"] for q in qids])),
        "Recall@100": float(np.mean([ndcg_recall[q]["recall_100"] for q in qids])),
        "MRR@10": float(np.mean([mrr[q]["recip_rank"] for q in qids])),
    }


@pytest.mark.slow
def test_minilm_pipeline_agrees_with_sentence_transformers(scifact_subset, tmp_path):
    config = BeirEvalConfig(dataset=str(scifact_subset), encoder=EncoderConfig(model="minilm", device="cpu"),
                            workdir=tmp_path / "work", output_dir=tmp_path / "results", chunk_size=128)
    first = evaluate_dense_beir(config)
    assert first.scores.num_queries == N_QUERIES and first.scores.num_missing == 0 and first.reused == []
    assert first.metadata["encoder"]["precision"] in ("bf16", "fp32")            # the default mode
    assert first.report.unknown_qrel_docs == 0 and first.report.unknown_qrel_queries == 0
    assert json.loads(first.results_path.read_text())

    reference = sentence_transformers_scores(scifact_subset)
    for metric, expected in reference.items():
        assert first.scores.mean[metric] == pytest.approx(expected, abs=TOLERANCE), metric
    assert reference["NDCG@10"] > 0.5             # the subset is a real retrieval task, not a degenerate one

    # a second run reuses the embeddings and the index, and scores the same
    second = evaluate_dense_beir(config)
    assert second.reused == ["embeddings", "index"] and second.workdir == first.workdir
    assert second.scores.mean == first.scores.mean

    # scoring the written run file gives the same numbers
    from_file = evaluate_run_beir(str(scifact_subset), first.run_path, output_dir=tmp_path / "from-run")
    assert from_file.scores.num_queries == N_QUERIES
    for metric, value in first.scores.mean.items():
        assert from_file.scores.mean[metric] == pytest.approx(value, abs=1e-9), metric
