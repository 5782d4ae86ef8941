"""Memory reranking before reading (``--rerank memory``): MaxSim over the token memory promotes a passage the run
ranks 4th to the one passage the reader reads (its answer and provenance follow), through ``read predict`` and
``eval kilt --reader``; a rerank depth below --passages, a rerank memory of another encoder, passages missing
from the rerank memory and a full re-encoding reader without --rerank-memory are refused."""

from __future__ import annotations

import json

import pytest

from retromem.cli import main
from retromem.data.corpora import open_corpus
from retromem.eval.kilt import read_kilt_predictions
from retromem.retrieve.runfile import ranked_docs, read_trec_run
from tests.read_fixtures import write_kilt_world

pytestmark = pytest.mark.usefixtures("restore_logging")
QUESTIONS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny knowledge source; a QA task whose question i is the full text of its gold passage P<i>#0 (so
    MaxSim of question and gold passage is ~1) and whose answer is a word of it; a run that ranks the gold passage
    4th (below three others) and one that ranks it 1st."""
    root = tmp_path_factory.mktemp("rerank-world")
    files = write_kilt_world(root)
    passages = {p.id: p for p in open_corpus(files["source"]).passages()}
    rows, fourth, first = [], [], []
    for q in range(QUESTIONS):
        gold = passages[f"P{q}#0"]
        others = [f"P{(q + j) % 12}#0" for j in (1, 2, 3)]
        rows.append({"id": f"r{q}", "input": gold.full_text(), "output": [
            {"answer": gold.text.split()[q], "provenance": [{"wikipedia_id": f"P{q}", "start_paragraph_id": 1,
                                                             "end_paragraph_id": 1}]}]})
        for rank, doc in enumerate([*others, gold.id]):
            fourth.append(f"r{q} Q0 {doc} {rank + 1} {10 - rank} t")
        for rank, doc in enumerate([gold.id, *others]):
            first.append(f"r{q} Q0 {doc} {rank + 1} {10 - rank} t")
    files["task"] = root / "rerank-kilt.jsonl"
    files["task"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    files["fourth"], files["first"] = root / "fourth.run", root / "first.run"
    files["fourth"].write_text("\n".join(fourth) + "\n", encoding="utf-8")
    files["first"].write_text("\n".join(first) + "\n", encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def reader(world, tiny_model_dir, tmp_path_factory):
    """A span reader (k = 1 of 2) trained a step over the gold passage, and its fp16 memory of layer 1 holding
    all four passages of each question."""
    root = tmp_path_factory.mktemp("rerank-reader")
    memory = root / "memory"
    assert main(["read", "memory", "--task", str(world["task"]), "--run", str(world["fourth"]), "--passages", "4",
                 "--model", str(tiny_model_dir), "--k", "1", "--output", str(memory)]) == 0
    assert main(["read", "train", "--task", str(world["task"]), "--run", str(world["first"]), "--passages", "1",
                 "--memory", str(memory), "--model", str(tiny_model_dir), "--k", "1", "--head", "span",
                 "--output", str(root / "run"), "--max-steps", "1", "--batch-size", "4", "--precision", "fp32"]) == 0
    return {"memory": memory, "reader": root / "run" / "final", "root": root}


def _predict(world, reader, run, out, *extra) -> list:
    code = main(["read", "predict", "--task", str(world["task"]), "--run", str(world[run]), "--passages", "1",
                 "--memory", str(reader["memory"]), "--reader", str(reader["reader"]), "--output", str(out),
                 "--precision", "fp32", *extra])
    assert code == 0
    return read_kilt_predictions(out)


def test_reranking_promotes_the_passage_ranked_fourth_and_the_reader_follows(world, reader, tmp_path, capsys):
    plain = _predict(world, reader, "fourth", tmp_path / "plain.jsonl")
    capsys.readouterr()
    reranked = _predict(world, reader, "fourth", tmp_path / "reranked.jsonl", "--rerank", "memory",
                        "--rerank-depth", "4")
    footer = capsys.readouterr().out
    assert "retrieval excluded; memory rerank of the top 4 (fp16, layer 1)" in footer and "s apart" in footer
    gold_first = _predict(world, reader, "first", tmp_path / "gold-first.jsonl")
    for q, (p, r, g) in enumerate(zip(plain, reranked, gold_first)):
        assert p.provenance[0] == f"P{(q + 1) % 12}"      # the run's order: the gold page 4th
        assert r.provenance[0] == f"P{q}"                 # reranked: the gold page first
        assert r.provenance == g.provenance[:len(r.provenance)] or r.provenance[0] == g.provenance[0]
        assert r.answer == g.answer                       # the reader read the gold passage, as if ranked first
    assert [p.answer for p in plain] != [r.answer for r in reranked]


def test_reranking_from_another_memory_of_the_readers_encoder(world, reader, tiny_model_dir, tmp_path):
    """--rerank-memory: a binary memory of layer 2 (not what the reader reads) reranks; the reader reads its own."""
    other = tmp_path / "binary-l2"
    assert main(["read", "memory", "--task", str(world["task"]), "--run", str(world["fourth"]), "--passages", "4",
                 "--model", str(tiny_model_dir), "--k", "0", "--codec", "binary", "--output", str(other)]) == 0
    reranked = _predict(world, reader, "fourth", tmp_path / "p.jsonl", "--rerank", "memory", "--rerank-depth", "4",
                        "--rerank-memory", str(other))
    gold_first = _predict(world, reader, "first", tmp_path / "g.jsonl")
    assert [p.provenance[0] for p in reranked] == [f"P{q}" for q in range(QUESTIONS)]
    assert [p.answer for p in reranked] == [p.answer for p in gold_first]


def test_eval_kilt_with_a_reader_reranks_before_reading(world, reader, tiny_model_dir, tmp_path, capsys):
    """End to end: dense retrieval over the knowledge source, memory rerank of its top 4 from a memory of every
    passage (the reader's codec and layer, so it is also what the reader reads), reading the top 1."""
    whole = tmp_path / "whole-memory"
    assert main(["index", "memory", "--corpus", str(world["source"]), "--model", str(tiny_model_dir), "--layer", "1",
                 "--codec", "fp16", "--precision", "fp32", "--output", str(whole)]) == 0
    capsys.readouterr()
    code = main(["eval", "kilt", "--task", str(world["task"]), "--model", str(tiny_model_dir), "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--reader",
                 str(reader["reader"]), "--memory", str(whole), "--reader-passages", "1", "--rerank", "memory",
                 "--rerank-depth", "4"])
    assert code == 0
    assert "memory rerank of the top 4 (fp16, layer 1)" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "reader" / "results.json").read_text())
    assert results["metadata"]["rerank"]["depth"] == 4 and results["metadata"]["rerank"]["memory"] == str(whole)
    predictions = read_kilt_predictions(tmp_path / "out" / "reader" / "predictions.jsonl")
    # each question is its gold passage's text: MaxSim puts the gold page first wherever dense retrieval ranked it
    # in its top 4 (the provenance follows the reranked order, not the retrieval's)
    run = read_trec_run(json.loads((tmp_path / "out" / "results.json").read_text())["metadata"]["run_file"])
    checked, reordered = 0, 0
    for p in predictions:
        top = [doc.split("#")[0] for doc, _ in ranked_docs(run[p.id], 4)]
        assert sorted(p.provenance[:4]) == sorted(top)    # the retrieval's top 4 pages, in the reranked order
        reordered += list(p.provenance[:4]) != top
        if f"P{p.id[1:]}" in top:
            assert p.provenance[0] == f"P{p.id[1:]}"
            checked += 1
    assert len(predictions) == QUESTIONS and checked > 0 and reordered > 0


def test_eval_kilt_reranks_from_the_memory_it_computes_when_given_none(world, reader, tiny_model_dir, tmp_path,
                                                                       capsys):
    code = main(["eval", "kilt", "--task", str(world["task"]), "--model", str(tiny_model_dir), "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--reader",
                 str(reader["reader"]), "--reader-passages", "1", "--rerank", "memory", "--rerank-depth", "4"])
    assert code == 0
    assert "memory rerank of the top 4 (fp16, layer 1)" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "out" / "reader" / "results.json").read_text())["metadata"]
    assert metadata["memory"] == "computed for the retrieved passages"
    assert metadata["rerank"]["memory"] == "the memory computed for the retrieved passages"
    run = read_trec_run(json.loads((tmp_path / "out" / "results.json").read_text())["metadata"]["run_file"])
    for p in read_kilt_predictions(tmp_path / "out" / "reader" / "predictions.jsonl"):
        top = [doc.split("#")[0] for doc, _ in ranked_docs(run[p.id], 4)]
        assert sorted(p.provenance[:4]) == sorted(top)
        if f"P{p.id[1:]}" in top:
            assert p.provenance[0] == f"P{p.id[1:]}"


def test_bad_input(world, reader, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, BertModel

    from tests.conftest import tiny_bert_config

    base = ["read", "predict", "--task", str(world["task"]), "--run", str(world["fourth"]), "--reader",
            str(reader["reader"]), "--memory", str(reader["memory"]), "--output", str(tmp_path / "p.jsonl")]
    # a rerank depth below the passages read
    assert main([*base, "--passages", "3", "--rerank", "memory", "--rerank-depth", "2"]) == 2
    assert "(--rerank-depth) 2 is below the 3 passages read" in capsys.readouterr().err
    # ... and in eval kilt, before any retrieval
    assert main(["eval", "kilt", "--task", str(world["task"]), "--model", str(tiny_model_dir), "--workdir",
                 str(tmp_path / "work"), "--reader", str(reader["reader"]), "--reader-passages", "3", "--rerank",
                 "memory", "--rerank-depth", "2"]) == 2
    assert "(--rerank-depth) 2 is below the 3 passages read" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
    # rerank options without --rerank memory
    assert main([*base, "--rerank-depth", "4"]) == 2
    assert "--rerank-depth set up memory reranking: give --rerank memory" in capsys.readouterr().err
    # a rerank memory of another encoder
    import torch

    other_model = tmp_path / "other-bert"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    BertModel(tiny_bert_config(len(tokenizer))).save_pretrained(other_model)
    tokenizer.save_pretrained(other_model)
    other = tmp_path / "other-memory"
    assert main(["read", "memory", "--task", str(world["task"]), "--run", str(world["fourth"]), "--passages", "4",
                 "--model", str(other_model), "--k", "1", "--output", str(other)]) == 0
    assert main([*base, "--passages", "1", "--rerank", "memory", "--rerank-depth", "4", "--rerank-memory",
                 str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "fingerprint" in err
    # passages of the run missing from the rerank memory: named, counted
    small = tmp_path / "small-memory"
    assert main(["read", "memory", "--task", str(world["task"]), "--run", str(world["fourth"]), "--passages", "2",
                 "--model", str(tiny_model_dir), "--k", "1", "--output", str(small)]) == 0
    assert main([*base, "--passages", "1", "--rerank", "memory", "--rerank-depth", "4", "--rerank-memory",
                 str(small)]) == 2
    err = capsys.readouterr().err
    # it holds the top 2 of each question (P1..P9); the top 4 reach P0..P10
    assert "2 passages to rerank are not in --rerank-memory" in err and str(small) in err and "P0#0, P10#0" in err
    assert "--passages 4" in err
    # a full re-encoding reader reads no memory: it reranks only from --rerank-memory
    assert main(["read", "train", "--task", str(world["task"]), "--run", str(world["first"]), "--passages", "1",
                 "--model", str(tiny_model_dir), "--k", "2", "--head", "span", "--output", str(tmp_path / "full"),
                 "--max-steps", "1", "--precision", "fp32"]) == 0
    capsys.readouterr()
    full = ["read", "predict", "--task", str(world["task"]), "--run", str(world["fourth"]), "--passages", "1",
            "--reader", str(tmp_path / "full" / "final"), "--rerank", "memory", "--rerank-depth", "4"]
    assert main([*full, "--output", str(tmp_path / "f.jsonl")]) == 2
    assert "(k = 2 = N) and reads no token memory to rerank from: give --rerank-memory" in capsys.readouterr().err
    assert main([*full, "--rerank-memory", str(reader["memory"]), "--output", str(tmp_path / "f.jsonl")]) == 0
    assert [p.provenance[0] for p in read_kilt_predictions(tmp_path / "f.jsonl")] == [f"P{q}" for q in
                                                                                     range(QUESTIONS)]
