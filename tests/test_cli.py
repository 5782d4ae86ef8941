"""The `retromem` command, run in-process: encode, index build, search, eval beir; help; bad input."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from retromem.cli import build_parser, main
from retromem.eval.beir_metrics import evaluate
from retromem.retrieve.runfile import read_trec_run

TINY = ["--precision", "fp32", "--pooling", "mean", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("isolated_env", "restore_logging")


def error_lines(stderr: str) -> list[str]:
    return [part for part in re.split(r"[\r\n]", stderr) if part.startswith("retromem: error:")]


def assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    assert code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture()
def built(tiny_beir, tiny_model_dir, tmp_path, capsys):
    """encode + index build through the CLI; returns the folders."""
    emb, index = tmp_path / "emb", tmp_path / "index"
    assert main(["encode", "--corpus", str(tiny_beir / "corpus.jsonl"), "--model", str(tiny_model_dir),
                 "--output", str(emb), "--chunk-size", "16", *TINY]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--output", str(index), "--factory", "Flat"]) == 0
    out = capsys.readouterr().out
    assert "encoded 40 passages (64-d, fp32)" in out and f"-> {emb}" in out
    assert "built Flat over 40 vectors" in out and f"-> {index}" in out
    return {"emb": emb, "index": index}


def test_encode_index_search_and_score_a_run(built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    assert (built["emb"] / "meta.json").exists() and (built["index"] / "index.json").exists()
    run_file = tmp_path / "run.trec"
    assert main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output", str(run_file),
                 "--model", str(tiny_model_dir), "--top-k", "5", *TINY]) == 0
    assert "searched 6 queries" in capsys.readouterr().out
    run = read_trec_run(run_file)
    assert sorted(run) == [f"q{i}" for i in range(6)] and all(len(docs) == 5 for docs in run.values())

    out_dir = tmp_path / "scores"
    assert main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), "--output", str(out_dir),
                 "--plot", "none"]) == 0
    printed = capsys.readouterr().out
    assert "BEIR tiny (test, 6 queries)" in printed and "| system | NDCG@10 | Recall@100 | MRR@10 |" in printed
    results = json.loads((out_dir / "results.json").read_text())
    from retromem.data.beir import load_beir

    expected = evaluate(load_beir(tiny_beir).qrels, run)
    assert results["metrics"]["NDCG@10"] == pytest.approx(expected.mean["NDCG@10"], abs=1e-12)
    assert f"| run.trec | {expected.mean['NDCG@10']:.4f} |" in printed


def test_search_a_queries_file_into_a_gzipped_run(built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    run_file = tmp_path / "all.trec.gz"
    assert main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir / "queries.jsonl"),
                 "--output", str(run_file), "--model", str(tiny_model_dir), "--top-k", "3", *TINY]) == 0
    assert sorted(read_trec_run(run_file)) == [f"q{i}" for i in range(8)]     # every query of the file


def test_search_takes_its_encoder_from_the_index_by_default(built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    explicit, implicit = tmp_path / "explicit.trec", tmp_path / "implicit.trec"
    assert main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output", str(explicit),
                 "--model", str(tiny_model_dir), *TINY]) == 0
    assert main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output", str(implicit),
                 "--precision", "fp32"]) == 0
    assert read_trec_run(implicit) == read_trec_run(explicit)


def test_encode_takes_a_beir_folder(tiny_beir, tiny_model_dir, tmp_path, capsys):
    assert main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                 str(tmp_path / "emb"), *TINY]) == 0
    assert len((tmp_path / "emb" / "ids.txt").read_text().splitlines()) == 40


def test_eval_beir_with_a_model_caches_its_work(tiny_beir, tiny_model_dir, tmp_path, capsys):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q0\tghost-doc\t1\n")                      # judged, but not in the corpus
    args = ["eval", "beir", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir), "--workdir",
            str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--chunk-size", "16", "--top-k", "20",
            "--k-values", "1,10,100", "--plot", "NDCG@10", *TINY]
    assert main(args) == 0
    captured = capsys.readouterr()
    first = captured.out
    assert "BEIR tiny (test, 6 queries)" in first and "reused from" not in first
    assert "warning: 1 judged document(s) in qrels/test.tsv are not in the corpus (e.g. ['ghost-doc'])" in captured.err
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "per_query_NDCG_10.png").exists()
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert set(metrics) >= {"NDCG@1", "NDCG@10", "Recall@100", "MRR@10", "MAP@10", "P@10"}
    assert main(args) == 0
    captured = capsys.readouterr()
    second = captured.out
    assert "reused from" in second and "embeddings, index" in second
    assert "warning: 1 judged document(s)" in captured.err
    table = [line for line in first.splitlines() if line.startswith(f"| {tiny_model_dir}")]
    assert table and table == [line for line in second.splitlines() if line.startswith(f"| {tiny_model_dir}")]


# ---------------------------------------------------------------- help

def _subparsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


COMMANDS = [path for path, _ in _subparsers(build_parser())]


def test_every_command_has_help():
    assert set(COMMANDS) >= {(), ("encode",), ("index",), ("index", "build"), ("search",), ("eval",),
                             ("eval", "beir")}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "retromem")
def test_help_exits_0_and_explains_every_option(path, capsys):
    parser = dict(_subparsers(build_parser()))[path]
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: retromem")
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, option
        if action.option_strings and action.help not in (None, argparse.SUPPRESS):
            assert action.help.split()[0] in text
    assert "(default: None)" not in text and "(default: False)" not in text  # one default, and a meaningful one


def test_a_model_that_is_nowhere_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = tmp_path / "t.txt"
    corpus.write_text("some text to pretrain on\n", encoding="utf-8")
    for command in (["pretrain", "--data", str(corpus)], ["finetune", "--jsonl", str(corpus)]):
        assert main([*command, "--model", "no-such-model-anywhere", "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'no-such-model-anywhere' is not a folder, an alias (minilm)" in err[0]


@pytest.mark.parametrize("path", [(), ("index",), ("eval",)], ids=["retromem", "index", "eval"])
def test_a_command_without_its_subcommand_prints_help_and_exits_2(path, capsys):
    assert main(list(path)) == 2
    assert "usage: retromem" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input: exit 2, one line naming the file

def test_malformed_corpus_line(tiny_beir, tiny_model_dir, tmp_path, capsys):
    corpus = tiny_beir / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    lines[2] = lines[2][:-5]
    corpus.write_text("\n".join(lines) + "\n")
    code = main(["encode", "--corpus", str(corpus), "--model", str(tiny_model_dir), "--output",
                 str(tmp_path / "emb"), *TINY])
    assert_one_line_error(capsys, code, f"{corpus}:3: malformed JSON")


def test_missing_split(tiny_beir, tmp_path, capsys):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q0 Q0 doc0 1 1.0 x\n")
    code = main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), "--split", "dev"])
    assert_one_line_error(capsys, code, str(tiny_beir / "qrels" / "dev.tsv"), "available splits: test, train")


def test_malformed_run_file(tiny_beir, tmp_path, capsys):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q0 Q0 doc0 1 1.0 x\nq0 doc1 2\n")
    code = main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file)])
    assert_one_line_error(capsys, code, f"{run_file}:2: expected 6 columns")


def test_index_and_encoder_mismatch(built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    code = main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output",
                 str(tmp_path / "run.trec"), "--model", str(tiny_model_dir), "--precision", "fp32", "--pooling", "cls"])
    assert_one_line_error(capsys, code, str(built["index"]), "pooling: index 'mean' vs query encoder 'cls'")
    assert not (tmp_path / "run.trec").exists()


def test_embeddings_made_by_another_encoder(built, tiny_beir, tiny_model_dir, capsys):
    code = main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                 str(built["emb"]), "--precision", "fp32", "--pooling", "cls"])
    assert_one_line_error(capsys, code, str(built["emb"]), "different encoder")


def test_gpu_always_without_gpus(built, tmp_path, capsys, monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    code = main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(tmp_path / "gpu"),
                 "--gpu", "always"])
    assert_one_line_error(capsys, code, "FAISS sees no GPU")


@pytest.mark.parametrize("args, fragment", [
    (["index", "build", "--factory", "Bogus12"], "FAISS cannot build 'Bogus12'"),
    (["index", "build", "--embeddings", "{tmp}/none"], "holds no finished embeddings"),
    (["encode", "--corpus", "{tmp}/no-such-dataset", "--model", "{tmp}/no-model"], "no-such-dataset does not exist"),
    (["eval", "beir", "--dataset", "{tiny}", "--run", "{tmp}/run.trec", "--k-values", "10,x"], "--k-values"),
])
def test_other_bad_input(args, fragment, built, tiny_beir, tmp_path, capsys):
    (tmp_path / "run.trec").write_text("q0 Q0 doc0 1 1.0 x\n")
    full = [a.format(tmp=tmp_path, tiny=tiny_beir) for a in args]
    if full[:2] == ["index", "build"]:
        if "--embeddings" not in full:
            full += ["--embeddings", str(built["emb"])]
        full += ["--output", str(tmp_path / "idx")]
    if full[0] == "encode":
        full += ["--output", str(tmp_path / "emb2")]
    assert_one_line_error(capsys, main(full), fragment)


def test_verbose_shows_the_traceback(tiny_beir, tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["-v", "eval", "beir", "--dataset", str(tiny_beir), "--run", str(tmp_path / "missing.trec")])


def test_vectors_from_the_cli_equal_the_library(built, tiny_beir, tiny_model_dir):
    from retromem.data.beir import iter_corpus
    from retromem.index.encoder import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", precision="fp32", device="cpu"))
    passages = list(iter_corpus(tiny_beir / "corpus.jsonl"))
    expected = np.concatenate([encoder.encode_passages(passages[i:i + 16]) for i in range(0, 40, 16)])
    np.testing.assert_array_equal(np.load(built["emb"] / "embeddings.npy"), expected)
