"""KILT retrieval end to end on a tiny knowledge source with a tiny random encoder, and the eval kilt command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from retromem.data.corpora import open_corpus
from retromem.errors import ConfigError
from retromem.eval.kilt import read_kilt_predictions
from retromem.eval.kilt_pipeline import (
    SEARCHERS,
    KiltEvalConfig,
    SearchSetup,
    evaluate_kilt,
    pages_in_rank_order,
    ranked_passages,
)
from retromem.index.encoder import EncoderConfig

from .conftest import WORDS


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_kilt(tmp_path):
    """8 pages of 2-4 paragraphs; each question (every other passage) is a passage's own text (title first, as
    it is encoded), so even a random encoder finds it first; one question's gold names a page the source lacks."""
    rng = random.Random(0)
    pages = []
    for i in range(8):
        paragraphs = [" ".join(rng.choices(WORDS, k=rng.randint(8, 30))) for _ in range(rng.randint(2, 4))]
        pages.append({"wikipedia_id": f"P{i}", "wikipedia_title": f"Page {i}", "text": [f"Page {i}", *paragraphs]})
    source = write_jsonl(tmp_path / "knowledge_source.jsonl", pages)
    passages = list(open_corpus(source, passage_words=20).passages())
    rows = []
    for n, passage in enumerate(passages[::2]):
        first, last = passage.paragraphs
        rows.append({"id": f"q{n}", "input": passage.full_text(), "output": [
            {"answer": " ".join(passage.text.split()[2:5]), "provenance": [
                {"wikipedia_id": passage.page_id, "title": passage.title, "start_paragraph_id": first,
                 "end_paragraph_id": last}]}]})
    rows.append({"id": "lost", "input": "kinase receptor", "output": [
        {"answer": "x", "provenance": [{"wikipedia_id": "NOT_THERE"}]}]})
    task = write_jsonl(tmp_path / "tiny-dev-kilt.jsonl", rows)
    return task, source, len(rows)


def config(task, tiny_st_dir, tmp_path, **kw):
    return KiltEvalConfig(task=str(task), encoder=EncoderConfig(model=str(tiny_st_dir), batch_size=16),
                          workdir=tmp_path / "work", passage_words=kw.pop("passage_words", 20), top_k=10, **kw)


def test_dense_retrieval_end_to_end_and_reuse(tiny_kilt, tiny_st_dir, tmp_path):
    task, source, n = tiny_kilt
    result = evaluate_kilt(config(task, tiny_st_dir, tmp_path))
    scores = result.scores
    assert scores.num_examples == n
    # every question but the lost one retrieves its own passage first: its page and paragraph
    assert scores.mean["R-Prec"] == pytest.approx((n - 1) / n)
    assert scores.mean["Recall@5"] == pytest.approx((n - 1) / n)
    assert result.passage_metrics["gold_paragraph@1"] == 1.0   # the lost question has no paragraph ids
    assert result.report.missing_pages == 1 and "NOT_THERE" in result.report.warnings[0]
    answered = sum(1 for line in task.read_text().splitlines() if json.loads(line)["output"][0]["answer"])
    assert result.passage_metrics["answer_in_passages@1"] == pytest.approx((answered - 1) / answered)
    predictions = read_kilt_predictions(result.predictions_path)
    assert [p.id for p in predictions] == [f"q{i}" for i in range(n - 1)] + ["lost"]
    assert all(p.answer == "" and len(p.provenance) == len(set(p.provenance)) for p in predictions)
    assert predictions[0].provenance == pages_in_rank_order(result.run["q0"], lambda pid: pid.split("#")[0])
    top = result.top_passages["q0"]
    assert len(top) == 5 and top[0].page_id == "P0" and top[0].paragraphs is not None
    assert result.run_path.is_file() and result.run_path.parent.name == "runs"
    out = result.results_path.parent
    assert {"results.json", "per_query.json", "results.md", "predictions.jsonl", "per_query_R-Prec.png"} <= {
        p.name for p in out.iterdir()}
    written = json.loads(result.results_path.read_text())
    assert written["metrics"]["R-Prec"] == scores.mean["R-Prec"] and written["metadata"]["missing_gold_pages"] == 1
    assert "R-Prec" in (out / "results.md").read_text()

    again = evaluate_kilt(config(task, tiny_st_dir, tmp_path))
    assert again.reused == ["embeddings", "index"] and again.scores.mean == scores.mean
    other_cut = evaluate_kilt(config(task, tiny_st_dir, tmp_path, passage_words=15))
    assert other_cut.reused == [] and other_cut.work != result.work   # another cut: other vectors


class CorpusOrderSearcher:
    """A real, trivial searcher: every passage in corpus order, scores falling (to check the page mapping)."""

    def __init__(self, corpus):
        self.ids = [p.id for p in corpus.passages()]

    def search(self, queries, k=100, show_progress=False):
        order = self.ids[1:2] + self.ids[:1] + self.ids[2:]   # P0#1 before P0#0: one page, two passages
        return {q: {pid: -float(r) for r, pid in enumerate(order[:k])} for q in queries}


def test_searchers_registry_takes_a_method(tiny_kilt, tmp_path, monkeypatch):
    task, source, n = tiny_kilt

    def factory(setup: SearchSetup):
        setup.run_tag = "corpus-order"
        return CorpusOrderSearcher(setup.corpus)

    monkeypatch.setitem(SEARCHERS, "corpus-order", factory)
    result = evaluate_kilt(KiltEvalConfig(task=str(task), method="corpus-order", workdir=tmp_path / "w",
                                          passage_words=20, top_k=50))
    pages = read_kilt_predictions(result.predictions_path)[0].provenance
    assert pages == tuple(f"P{i}" for i in range(8))   # deduplicated, in rank order
    assert result.run_path.name.startswith("tiny-dev-kilt-corpus-order")
    assert result.report.missing_pages == 1   # the source streamed for its pages (the searcher gave no ids)
    with pytest.raises(ConfigError, match="method \\(--method\\) 'nope' is not available"):
        KiltEvalConfig(task=str(task), method="nope")


def test_ranked_passages_stream_back_the_passages(tiny_kilt):
    _, source, _ = tiny_kilt
    corpus = open_corpus(source, passage_words=20)
    run = {"a": {"P3#0": 2.0, "P1#1": 1.0, "P3#1": 0.5}}
    got = ranked_passages(corpus, run, 2)["a"]
    assert [p.id for p in got] == ["P3#0", "P1#1"] and got[0].page_id == "P3" and got[0].title == "Page 3"


def test_cli_scores_predictions(tiny_kilt, tmp_path, capsys):
    from retromem.cli import main

    task, _, n = tiny_kilt
    rows = [json.loads(line) for line in task.read_text().splitlines()]
    preds = write_jsonl(tmp_path / "preds.jsonl", [
        {"id": r["id"], "output": [{"answer": r["output"][0]["answer"],
                                    "provenance": r["output"][0]["provenance"]}]} for r in rows])
    assert main(["eval", "kilt", "--task", str(task), "--predictions", str(preds), "--output",
                 str(tmp_path / "scores")]) == 0
    out = capsys.readouterr().out
    assert "| preds.jsonl | 1.0000 | 1.0000 |" in out
    results = json.loads((tmp_path / "scores" / "results.json").read_text())
    metrics = results["metrics"]
    assert metrics["R-Prec"] == 1.0 and metrics["kilt_em"] == metrics["em"] > 0.9 and results["counts"]["examples"] == n
    assert main(["eval", "kilt", "--task", str(task), "--predictions", str(preds), "--top-k", "5"]) == 2
    assert "--top-k would not be used" in capsys.readouterr().err
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"id": "q0", "output": [{"answer": ""}]},
                                                      {"id": "zzz", "output": [{"answer": ""}]}])
    assert main(["eval", "kilt", "--task", str(task), "--predictions", str(broken)]) == 2
    assert f"{broken}:2: prediction for id 'zzz' is not in the task" in capsys.readouterr().err


def test_cli_retrieval(tiny_kilt, tiny_st_dir, tmp_path, capsys):
    from retromem.cli import main

    task, _, _ = tiny_kilt
    args = ["eval", "kilt", "--task", str(task), "--model", str(tiny_st_dir), "--workdir", str(tmp_path / "w"),
            "--passage-words", "20", "--top-k", "10"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "R-Prec" in out and "gold_paragraph@5" in out and "ranked passages:" in out
    assert main(args) == 0
    assert "reused from" in capsys.readouterr().out


@pytest.mark.slow
def test_minilm_on_scifact_kilt_dev_subset(tmp_path, shared_data):
    """MiniLM on the 188 SciFact-KILT dev claims over the evidence pages plus 300 other pages: well above chance."""
    source = shared_data / "kilt" / "scifact" / "knowledge_source.jsonl"
    task = shared_data / "kilt" / "scifact" / "scifact-dev-kilt.jsonl"
    gold = {p["wikipedia_id"] for line in task.read_text().splitlines()
            for o in json.loads(line)["output"] for p in o["provenance"]}
    kept, others = [], 0
    for line in source.read_text(encoding="utf-8").splitlines():
        page = json.loads(line)["wikipedia_id"]
        if page in gold or others < 300:
            others += page not in gold
            kept.append(line)
    small = tmp_path / "ks.jsonl"
    small.write_text("\n".join(kept) + "\n", encoding="utf-8")
    result = evaluate_kilt(KiltEvalConfig(task=str(task), source=str(small), workdir=tmp_path / "w", top_k=20))
    assert result.report.missing_pages == 0
    assert result.scores.mean["R-Prec"] > 0.6 and result.scores.mean["Recall@5"] > 0.8


def test_a_beir_corpus_as_source_reuses_eval_beirs_embeddings(tiny_beir, tiny_st_dir, tmp_path):
    """SciFact-KILT's page ids are BEIR SciFact's doc ids: over the BEIR corpus, eval kilt reuses eval beir's work."""
    from retromem.eval.beir_pipeline import BeirEvalConfig, evaluate_dense_beir

    encoder = EncoderConfig(model=str(tiny_st_dir), batch_size=16)
    beir = evaluate_dense_beir(BeirEvalConfig(dataset=str(tiny_beir), encoder=encoder, workdir=tmp_path / "w",
                                              plot_metric=None))
    queries = [json.loads(line) for line in (tiny_beir / "queries.jsonl").read_text().splitlines()][:6]
    task = write_jsonl(tmp_path / "tiny-kilt.jsonl", [
        {"id": q["_id"], "input": q["text"], "output": [
            {"answer": "SUPPORTS", "provenance": [{"wikipedia_id": f"doc{3 * i}"}]},
            {"answer": "SUPPORTS", "provenance": [{"wikipedia_id": f"doc{3 * i + 1}"}]}]}
        for i, q in enumerate(queries)])
    result = evaluate_kilt(KiltEvalConfig(task=str(task), source=str(tiny_beir), encoder=encoder,
                                          workdir=tmp_path / "w", top_k=10))
    assert result.reused == ["embeddings", "index"] and result.work == beir.workdir
    assert result.corpus.kind == "beir" and result.report.missing_pages == 0
    assert read_kilt_predictions(result.predictions_path)[0].provenance[0].startswith("doc")
    assert result.passage_metrics == {}   # documents have no paragraph ranges; SUPPORTS is a label


@pytest.mark.distributed
@pytest.mark.slow
def test_eval_kilt_under_accelerate_launch_encodes_sharded(tiny_kilt, tiny_st_dir, tmp_path):
    """Two CPU processes (gloo) share the encoding; rank 0 alone searches, scores and reports, as one process would."""
    import os
    import subprocess
    import sys

    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip(f"{accelerate} is not installed")
    task, _, _ = tiny_kilt
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "retromem.cli", "eval", "kilt", "--task", str(task), "--model", str(tiny_st_dir),
               "--workdir", str(tmp_path / "dist"), "--passage-words", "20", "--top-k", "10", "--chunk-size", "4",
               "--precision", "fp32"]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("KILT tiny-dev-kilt") == 1, result.stdout   # only rank 0 reports
    single = evaluate_kilt(KiltEvalConfig(task=str(task), encoder=EncoderConfig(model=str(tiny_st_dir),
                                                                                precision="fp32"),
                                          workdir=tmp_path / "single", passage_words=20, top_k=10, chunk_size=4))
    dist = json.loads(next((tmp_path / "dist").rglob("results.json")).read_text())
    assert dist["metrics"]["R-Prec"] == pytest.approx(single.scores.mean["R-Prec"])
    assert dist["metadata"]["passages"]["count"] == len(list(open_corpus(single.corpus.path, 20).passages()))
