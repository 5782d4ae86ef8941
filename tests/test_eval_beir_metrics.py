"""BEIR metrics: equal to pytrec_eval's own numbers, MRR@k as BEIR defines it, trec_eval's tie order."""

from __future__ import annotations

import copy
import csv
import functools
import itertools
import json
import os
from pathlib import Path

import pytest
import pytrec_eval

from retromem.eval.beir_metrics import evaluate
from retromem.retrieve.runfile import read_trec_run, write_trec_run

K_VALUES = (1, 2, 3, 5, 10, 100)  # k=2 cuts inside q1's tie group (d2, n2)
TREC = {"NDCG": "ndcg_cut", "MAP": "map_cut", "Recall": "recall", "P": "P"}

QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},   # graded, with a judged non-relevant doc
    "q2": {"d5": 1, "d6": 1},                     # nothing relevant is retrieved
    "q3": {"d7": 1},                              # missing from the run
    "q4": {"d8": 0},                              # only a zero-grade judgment: scores 0 everywhere
    "q5": {"d9": 1},                              # the run ranks the query's own id first
    "q6": {"d1": 1},                              # its only result is its own id: empty after removal
    "q7": {"e2": 1, "e5": 1},                     # no ties: BEIR's MRR applies as written
}
RUN = {
    # trec_eval order: n1, n2 (ties d2, n2 > d2), d2, d4 (ties d1, d4 > d1), d1, d3, n3
    "q1": {"n1": 0.9, "d2": 0.8, "n2": 0.8, "d1": 0.7, "d4": 0.7, "d3": 0.6, "n3": 0.5},
    "q2": {"d1": 3.0, "x": 3.0, "y": 1.0},
    "q4": {"d8": 5.0, "z": 4.0},
    "q5": {"q5": 10.0, "d9": 9.0, "d1": 9.0},
    "q6": {"q6": 1.0},
    "q7": {"e1": 0.9, "e2": 0.8, "e3": 0.7, "e4": 0.6, "e5": 0.5, "e6": 0.4},
    "qx": {"d1": 1.0},                            # not judged: ignored
}


def trec_eval_ranking(doc_scores):
    """Straight from trec_eval's comp_sim_docno: sim descending, then strcmp(docno2, docno1)."""
    def compare(a, b):
        if a[1] != b[1]:
            return -1 if a[1] > b[1] else 1
        ab, bb = a[0].encode(), b[0].encode()
        return (bb > ab) - (bb < ab)
    return [doc for doc, _ in sorted(doc_scores.items(), key=functools.cmp_to_key(compare))]


def mrr_at_k(relevant, ranking, k):
    for rank, doc in enumerate(ranking[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def beir_mrr(qrels, results, k_values):
    """BEIR's custom_metrics.mrr, as published (ties kept in dict insertion order)."""
    mrr = {f"MRR@{k}": 0.0 for k in k_values}
    k_max = max(k_values)
    top_hits = {q: sorted(d.items(), key=lambda item: item[1], reverse=True)[0:k_max] for q, d in results.items()}
    for query_id in top_hits:
        relevant = {doc for doc, grade in qrels[query_id].items() if grade > 0}
        for k in k_values:
            for rank, hit in enumerate(top_hits[query_id][0:k]):
                if hit[0] in relevant:
                    mrr[f"MRR@{k}"] += 1.0 / (rank + 1)
                    break
    return {name: value / len(qrels) for name, value in mrr.items()}


def pytrec_eval_direct(qrels, run, k_values):
    """pytrec_eval on the run with each query's own id removed, named as BEIR names them."""
    cleaned = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    cleaned = {q: docs for q, docs in cleaned.items() if docs}
    cut = ",".join(map(str, k_values))
    raw = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{cut}" for m in TREC.values()}).evaluate(cleaned)
    return {q: {f"{fam}@{k}": v[f"{m}_{k}"] for fam, m in TREC.items() for k in k_values} for q, v in raw.items()}


def assert_matches_pytrec_eval(scores, qrels, run, k_values):
    direct = pytrec_eval_direct(qrels, run, k_values)
    judged = [q for q in qrels if qrels[q]]
    assert scores.num_queries == len(judged) and sorted(scores.per_query) == sorted(judged)
    for name in (f"{fam}@{k}" for fam in TREC for k in k_values):
        for qid in judged:
            expected = direct[qid][name] if qid in direct else 0.0
            assert scores.per_query[qid][name] == pytest.approx(expected, abs=1e-6), (qid, name)
        expected_mean = sum(direct[q][name] for q in direct) / len(judged)
        assert scores.mean[name] == pytest.approx(expected_mean, abs=1e-6), name
    for k in k_values:
        per_query = {}
        for qid in judged:
            ranking = [d for d in trec_eval_ranking(run.get(qid, {})) if d != qid]
            relevant = {d for d, grade in qrels[qid].items() if grade >= 1}
            per_query[qid] = mrr_at_k(relevant, ranking, k)
            assert scores.per_query[qid][f"MRR@{k}"] == pytest.approx(per_query[qid], abs=1e-6), (qid, k)
        assert scores.mean[f"MRR@{k}"] == pytest.approx(sum(per_query.values()) / len(judged), abs=1e-6)


def test_hand_written_run_equals_pytrec_eval():
    run, qrels = copy.deepcopy(RUN), copy.deepcopy(QRELS)
    scores = evaluate(qrels, run, k_values=K_VALUES)
    assert run == RUN and qrels == QRELS  # inputs untouched
    assert_matches_pytrec_eval(scores, QRELS, RUN, K_VALUES)
    assert scores.num_missing == 2 and sorted(scores.missing_query_ids) == ["q3", "q6"]
    assert scores.num_ignored == 1 and scores.num_identical_removed == 2
    assert list(scores.mean)[:2] == ["NDCG@1", "NDCG@2"] and list(scores.mean)[-1] == "MRR@100"
    # Spot checks that do not depend on any library:
    assert scores.per_query["q1"]["MRR@10"] == pytest.approx(1 / 3)  # n1, n2, d2: tie order puts n2 before d2
    assert scores.per_query["q1"]["MRR@1"] == 0.0
    assert scores.per_query["q1"]["MRR@2"] == 0.0                    # the cut at 2 keeps n2, not d2
    assert scores.per_query["q1"]["P@5"] == pytest.approx(3 / 5)      # d2, d4, d1 in the top 5
    assert scores.per_query["q5"]["MRR@1"] == 1.0                     # own id removed: d9 (tie d9 > d1) first
    assert all(value == 0.0 for q in ("q2", "q3", "q4", "q6") for value in scores.per_query[q].values())
    assert scores.mean["MRR@10"] == pytest.approx((1 / 3 + 1.0 + 1 / 2) / 7)


def test_mrr_equals_beir_definition_without_ties():
    qrels = {"q7": QRELS["q7"], "q2": QRELS["q2"]}
    run = {"q7": RUN["q7"], "q2": {"y": 2.0, "x": 1.0}}
    scores = evaluate(qrels, run, k_values=K_VALUES)
    expected = beir_mrr(qrels, run, K_VALUES)
    for name, value in expected.items():
        assert scores.mean[name] == pytest.approx(value, abs=1e-9)
    assert scores.mean["MRR@1"] == 0.0 and scores.mean["MRR@3"] == pytest.approx(0.25)


def test_identical_ids_kept_when_asked():
    scores = evaluate({"q5": QRELS["q5"]}, {"q5": RUN["q5"]}, k_values=(1, 3), ignore_identical_ids=False)
    assert scores.num_identical_removed == 0 and not scores.ignore_identical_ids
    assert scores.mean["MRR@1"] == 0.0 and scores.mean["MRR@3"] == 0.5 and scores.mean["P@1"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="k_values is empty"):
        evaluate(QRELS, RUN, k_values=())
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate(QRELS, RUN, k_values=(0, 10))
    with pytest.raises(ValueError, match="must be an integer"):
        evaluate({"q1": {"d1": 0.5}}, RUN)
    with pytest.raises(ValueError, match="no judgments"):
        evaluate({"q1": {}}, RUN)


def scifact_dir() -> Path:
    root = Path(os.environ.get("RETROMEM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    path = root / "beir" / "scifact"
    if not (path / "qrels" / "test.tsv").exists():
        pytest.skip(f"SciFact not found at {path}: set RETROMEM_DATA or put BEIR scifact there")
    return path


@pytest.mark.slow
def test_real_scifact_run_through_a_run_file(tmp_path):
    """A deterministic run over SciFact test: each query's judged docs mixed in among fixed corpus docs."""
    data = scifact_dir()
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        for qid, docid, grade in reader:
            qrels.setdefault(qid, {})[docid] = int(grade)
    with open(data / "corpus.jsonl", encoding="utf-8") as handle:
        distractors = [json.loads(line)["_id"] for line in itertools.islice(handle, 40)]

    run: dict[str, dict[str, float]] = {}
    for i, qid in enumerate(sorted(qrels, key=int)):
        if i % 10 == 9:
            continue                                  # 30 judged queries missing from the run
        ranking = {doc: 1.0 - j / 20 for j, doc in enumerate(distractors[i % 7:])}  # scores 1.0, 0.95, ...
        for n, doc in enumerate(sorted(qrels[qid])):
            ranking[doc] = 1.0 - ((i * 3 + n * 5) % 45) / 20   # often ties a distractor's score exactly
        if i % 13 == 0:
            ranking[qid] = 2.0                        # the query's own id at the top (ArguAna-style)
        run[qid] = ranking
    run["not-judged"] = {distractors[0]: 1.0}

    path = write_trec_run(run, tmp_path / "scifact.run", tag="fixed")
    assert read_trec_run(path) == run
    scores = evaluate(qrels, read_trec_run(path), k_values=(1, 3, 10, 100))
    assert_matches_pytrec_eval(scores, qrels, run, (1, 3, 10, 100))
    assert (scores.num_queries, scores.num_missing, scores.num_ignored) == (300, 30, 1)
    assert scores.num_identical_removed == len([i for i in range(300) if i % 13 == 0 and i % 10 != 9])
    assert 0.0 < scores.mean["NDCG@10"] < scores.mean["Recall@100"] <= 0.9 + 1e-9  # 10% missing caps recall
