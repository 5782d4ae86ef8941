"""TREC run files and qrels: format, trec_eval's ranking order, round trips and bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import pytrec_eval

from retromem.errors import DataError
from retromem.retrieve.runfile import ranked_docs, read_qrels_trec, read_trec_run, top_k, write_trec_run


def test_ranked_docs_breaks_ties_by_doc_id_descending_like_trec_eval():
    scores = {"a": 1.0, "b": 1.0, "A": 1.0, "a0": 1.0, "c": 0.5, "z": 2.0}
    assert [d for d, _ in ranked_docs(scores)] == ["z", "b", "a0", "a", "A", "c"]
    assert ranked_docs(scores, k=2) == [("z", 2.0), ("b", 1.0)]


@pytest.mark.parametrize("relevant, others, expected_rr", [
    ("a", ["b"], 0.5),      # b > a: b is ranked first
    ("a0", ["a"], 1.0),     # a0 > a (a prefix sorts lower)
    ("A", ["a"], 0.5),      # byte order: 'a' (0x61) > 'A' (0x41)
    ("z", ["é"], 0.5),      # non-ASCII: UTF-8 bytes compared unsigned, as Python compares code points
])
def test_trec_eval_itself_orders_ties_like_ranked_docs(relevant, others, expected_rr):
    """The tie order ranked_docs claims is the one pytrec_eval (trec_eval) really uses."""
    run = {"q": {doc: 1.0 for doc in [relevant, *others]}}
    rr = pytrec_eval.RelevanceEvaluator({"q": {relevant: 1}}, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert rr == expected_rr
    assert 1.0 / (1 + [d for d, _ in ranked_docs(run["q"])].index(relevant)) == expected_rr


def test_write_trec_run_format_order_and_k(tmp_path):
    run = {"q2": {"d1": 0.5, "d2": 0.5, "d3": np.float32(0.25)}, "q1": {"x": 3.0, "y": 7.0}, "q3": {}}
    path = write_trec_run(run, tmp_path / "run.trec", tag="bm25", k=2)
    assert path.read_text().splitlines() == [
        "q2 Q0 d2 1 0.5 bm25",
        "q2 Q0 d1 2 0.5 bm25",
        "q1 Q0 y 1 7.0 bm25",
        "q1 Q0 x 2 3.0 bm25",
    ]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_run_round_trip_keeps_exact_scores(tmp_path):
    rng = np.random.default_rng(0)
    run = {f"q{i}": {f"doc{j}": float(s) for j, s in enumerate(rng.normal(size=20))} for i in range(5)}
    run["q0"]["tie1"] = run["q0"]["tie2"] = 0.1
    for name in ("run.trec", "run.trec.gz"):
        write_trec_run(run, tmp_path / name)
        assert read_trec_run(tmp_path / name) == run
    with gzip.open(tmp_path / "run.trec.gz", "rt") as handle:
        assert handle.readline().startswith("q0 Q0 ")


def test_read_trec_run_tolerates_whitespace_variants(tmp_path):
    path = tmp_path / "run.txt"
    path.write_bytes(b"q1\tQ0\td1\t1\t2.5\tsys\r\n\nq1  0  d2 2 -1e-3   sys  \n  q2 Q0 d1 1 7 other\n")
    assert read_trec_run(path) == {"q1": {"d1": 2.5, "d2": -0.001}, "q2": {"d1": 7.0}}


@pytest.mark.parametrize("content, line, words", [
    ("q1 Q0 d1 1 2.0 s\nq1 d2 1\n", 2, ["expected 6 columns", "MS MARCO"]),
    ("q1 Q0 d1 1 2.0 s\nq1 Q0 d2 1 2.0 s extra\n", 2, ["expected 6 columns", "qid Q0 docid rank score tag"]),
    ("q1 Q0 d1 1 high s\n", 1, ["'high' is not a number", "5th column"]),
    ("q1 Q0 d1 1 nan s\n", 1, ["is not a number"]),
    ("q1 Q0 d1 1 2.0 s\nq2 Q0 d1 1 2.0 s\nq1 Q0 d1 2 1.0 s\n", 3, ["duplicate pair", "first on line 1", "appear once"]),
])
def test_read_trec_run_names_file_line_and_fix(tmp_path, content, line, words):
    path = tmp_path / "bad.run"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_trec_run(path)
    assert caught.value.path == path and caught.value.line == line and caught.value.fix
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ")
    for word in words:
        assert word in message


@pytest.mark.parametrize("run, tag, k", [
    ({"q 1": {"d": 1.0}}, "t", None),
    ({"q1": {"d\t2": 1.0}}, "t", None),
    ({"q1": {"": 1.0}}, "t", None),
    ({"q1": {"d": float("nan")}}, "t", None),
    ({"q1": {"d": 1.0}}, "my run", None),
    ({"q1": {"d": 1.0}}, "t", 0),
])
def test_write_trec_run_refuses_what_the_format_cannot_carry(tmp_path, run, tag, k):
    target = tmp_path / "out.run"
    with pytest.raises(ValueError):
        write_trec_run(run, target, tag=tag, k=k)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_top_k_uses_trec_eval_order():
    run = {"q1": {"a": 1.0, "b": 1.0, "c": 3.0}, "q2": {"x": 1.0}}
    assert top_k(run, 2) == {"q1": {"c": 3.0, "b": 1.0}, "q2": {"x": 1.0}}
    with pytest.raises(ValueError):
        top_k(run, 0)


def test_read_qrels_trec(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 2\nq1\t0\td2\t0\n\nq2 0 d9 -1\n")
    assert read_qrels_trec(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d9": -1}}
    path.write_text("q1 0 d1 2\nq1 0 d2 1.5\n")
    with pytest.raises(DataError, match=r":2: relevance grade '1.5' is not an integer"):
        read_qrels_trec(path)
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match=r":1: expected 4 columns .*BEIR"):
        read_qrels_trec(path)
    path.write_text("q1 0 d1 2\nq1 0 d1 1\n")
    with pytest.raises(DataError, match=r":2: duplicate judgment"):
        read_qrels_trec(path)
