"""Bad input to encode, index build, search and eval beir: one line and exit 2 naming the flag or file,
never a traceback, never a silent success with another meaning (the reliability sweep, issue 16)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from retromem.cli import build_parser, main

TINY = ["--precision", "fp32", "--pooling", "mean", "--device", "cpu"]
HUGE = 10**12


pytestmark = pytest.mark.usefixtures("isolated_env", "restore_logging")


@pytest.fixture()
def interrupt_second_chunk(monkeypatch):
    """The second chunk an encode encodes is interrupted (as by Ctrl-C)."""
    from retromem.index.encoder import Encoder

    calls = {"n": 0}
    original = Encoder.encode_passages

    def fail_second(self, passages, show_progress=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, passages, show_progress)

    monkeypatch.setattr(Encoder, "encode_passages", fail_second)


def one_line_error(capsys, code: int, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one ``retromem: error:`` line holding every fragment."""
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [part for part in re.split(r"[\r\n]", err) if part.startswith("retromem: error:")]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def built(tiny_beir, tiny_model_dir, tmp_path, capsys):
    emb, index = tmp_path / "emb", tmp_path / "index"
    assert main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(emb),
                 "--chunk-size", "16", *TINY]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--output", str(index)]) == 0
    capsys.readouterr()
    return {"emb": emb, "index": index}


def _eval(tiny_beir, tiny_model_dir, tmp_path, *extra) -> list[str]:
    return ["eval", "beir", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir), "--workdir",
            str(tmp_path / "work"), "--top-k", "20", "--k-values", "1,10", *TINY, *extra]


def _rewrite_texts(corpus: Path, text: str) -> None:
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    corpus.write_text("".join(json.dumps({**r, "text": text}) + "\n" for r in records))


# ---------------------------------------------------------------- 1. stale vectors

def test_a_changed_corpus_text_is_reencoded_in_a_work_directory(tiny_beir, tiny_model_dir, tmp_path, capsys):
    args = _eval(tiny_beir, tiny_model_dir, tmp_path)
    assert main(args) == 0
    first = capsys.readouterr().out
    _rewrite_texts(tiny_beir / "corpus.jsonl", "lorem ipsum")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "reused from" not in captured.out
    assert "the corpus changed since" in captured.err and "encoding it afresh" in captured.err
    assert "holds an index of other embeddings" in captured.err and "rebuilding it" in captured.err
    table = [line for line in first.splitlines() if line.startswith("| ")]
    assert table != [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert main(args) == 0                                            # and the new vectors are reused after that
    assert "reused from" in capsys.readouterr().out


def test_encode_refuses_a_finished_folder_of_another_corpus_text(built, tiny_beir, tiny_model_dir, capsys):
    args = ["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(built["emb"]),
            "--chunk-size", "16", *TINY]
    assert main(args) == 0
    assert "reused 40 passages" in capsys.readouterr().out
    _rewrite_texts(tiny_beir / "corpus.jsonl", "lorem ipsum")
    one_line_error(capsys, main(args), str(built["emb"]), "the corpus changed", "texts changed")


def test_an_unchanged_corpus_file_is_not_reread(built, tiny_beir, tiny_model_dir, capsys, monkeypatch):
    from retromem.index import embeddings

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was streamed although its file is unchanged")

    monkeypatch.setattr(embeddings, "_check_same_ids", refuse)
    assert main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                 str(built["emb"]), "--chunk-size", "16", *TINY]) == 0


def test_a_legacy_folder_without_a_corpus_digest_is_refused_or_reencoded(built, tiny_beir, tiny_model_dir, tmp_path,
                                                                         capsys):
    meta_file = built["emb"] / "meta.json"
    meta = json.loads(meta_file.read_text())
    legacy = {k: v for k, v in meta.items() if k not in ("kind", "schema", "retromem")}
    legacy["corpus"] = str(tiny_beir / "corpus.jsonl")                # what the code before this one wrote
    meta_file.write_text(json.dumps(legacy))
    # it still loads and indexes
    assert main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(tmp_path / "i2")]) == 0
    # but cannot be checked against a corpus: encode says to rebuild
    one_line_error(capsys, main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                                 str(built["emb"]), *TINY]), "older retromem", "did not record the corpus")


# ---------------------------------------------------------------- 2, 3. edge values

@pytest.mark.parametrize("value", ["0", "-1"])
def test_top_k_below_one_is_refused(value, built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    one_line_error(capsys, main(_eval(tiny_beir, tiny_model_dir, tmp_path, "--top-k", value)), "--top-k")
    one_line_error(capsys, main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir),
                                 "--output", str(tmp_path / "run.trec"), "--top-k", value]), "--top-k")
    assert not (tmp_path / "run.trec").exists()


def test_chunk_size_zero_and_an_empty_corpus_are_refused(tiny_beir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    one_line_error(capsys, main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                                 str(out), "--chunk-size", "0", *TINY]), "--chunk-size")
    assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(capsys, main(["encode", "--corpus", str(empty), "--model", str(tiny_model_dir), "--output",
                                 str(out), *TINY]), "no documents")
    assert not out.exists()                                                       # nothing half-made is left


def test_index_build_refuses_an_empty_embeddings_set(tmp_path, capsys):
    from retromem.artifacts import ArtifactMeta, EncoderInfo

    folder = tmp_path / "emb"
    folder.mkdir()
    np.save(folder / "embeddings.npy", np.zeros((0, 8), dtype=np.float32))
    (folder / "ids.txt").write_text("")
    info = EncoderInfo(model="m", model_path="m", fingerprint="0" * 16, pooling="cls", normalize=True, max_length=8,
                       query_prefix="", passage_prefix="", precision="fp32", dim=8)
    ArtifactMeta(kind="embeddings", encoder=info, details={"count": 0, "dtype": "float32"}).write(folder / "meta.json")
    one_line_error(capsys, main(["index", "build", "--embeddings", str(folder), "--output", str(tmp_path / "i")]),
                   "holds no vectors")


# ---------------------------------------------------------------- 4. tracebacks for user errors

def test_a_run_that_is_a_folder_or_missing(tiny_beir, tmp_path, capsys):
    one_line_error(capsys, main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(tmp_path)]),
                   str(tmp_path), "folder")
    one_line_error(capsys, main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(tmp_path / "no.trec")]),
                   "no.trec", "does not exist")


def test_ivf_with_more_lists_than_vectors_says_how_many_it_needs(built, tmp_path, capsys):
    one_line_error(capsys, main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(tmp_path / "i"),
                                 "--factory", "IVF1024,Flat"]), "1024 IVF lists", "it got 40", "IVF1,Flat")
    one_line_error(capsys, main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(tmp_path / "i"),
                                 "--factory", "IVF2,PQ8"]), "FAISS cannot train", "Number of training points")


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_files_name_the_file_and_the_fix(damage, built, tiny_beir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("index.faiss",):
        path = built["index"] / name
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3] if damage == "truncated" else rng.bytes(len(data)))
    one_line_error(capsys, main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output",
                                 str(tmp_path / "run.trec")]), "index.faiss", "rebuild it")
    path = built["emb"] / "embeddings.npy"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] if damage == "truncated" else rng.bytes(len(data)))
    one_line_error(capsys, main(["index", "build", "--embeddings", str(built["emb"]), "--output",
                                 str(tmp_path / "i2")]), "embeddings.npy", "encode again")


@pytest.mark.parametrize("device, fragment", [("gpu0", "is not a torch device"), ("cuda", "no CUDA GPU"),
                                              ("cuda:3", "CUDA")])
def test_a_device_this_machine_lacks(device, fragment, tiny_beir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(capsys, main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                                 str(tmp_path / "emb"), "--device", device]), "--device", fragment)


def test_max_length_beyond_the_model_names_its_maximum(tiny_beir, tiny_model_dir, tmp_path, capsys):
    positions = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    one_line_error(capsys, main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                                 str(tmp_path / "emb"), "--max-length", "100000", *TINY]),
                   "--max-length", f"at most {positions}")


# ---------------------------------------------------------------- outputs: a file, a folder under a file, unwritable

def _commands(built, tiny_beir, tiny_model_dir, output: Path) -> dict[str, list[str]]:
    return {
        "encode": ["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(output),
                   *TINY],
        "index build": ["index", "build", "--embeddings", str(built["emb"]), "--output", str(output)],
        "search": ["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output", str(output)],
        "eval beir": ["eval", "beir", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir), "--workdir",
                      str(output.parent / "work"), "--output", str(output), *TINY],
    }


def _unwritable(tmp_path: Path) -> Path:
    """A folder nothing can be written in: read-only for an ordinary user; for root, a sysfs path."""
    if os.geteuid() == 0:
        return Path("/sys/retromem-test-output")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


@pytest.mark.parametrize("command", ["encode", "index build", "search", "eval beir"])
@pytest.mark.parametrize("where", ["an existing file", "below a file", "an unwritable folder", "a folder"])
def test_output_that_cannot_be_written(command, where, built, tiny_beir, tiny_model_dir, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    output = {"an existing file": a_file, "below a file": a_file / "out", "a folder": tmp_path / "a-folder",
              "an unwritable folder": _unwritable(tmp_path)}[where]
    if where == "a folder":
        if command != "search":
            pytest.skip("a folder is the right kind of output here")
        output.mkdir()
    if where == "an existing file" and command == "search":
        pytest.skip("a run file is replaced, as a file output is")
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(capsys, main(_commands(built, tiny_beir, tiny_model_dir, output)[command]), "--output")
    assert a_file.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before                   # nothing half-written


# ---------------------------------------------------------------- 8-12: resume messages, collisions, ignored input

def test_a_changed_chunk_size_on_resume_says_so(tiny_beir, tiny_model_dir, tmp_path, capsys, interrupt_second_chunk):
    out = tmp_path / "emb"
    args = ["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(out), *TINY]
    assert main([*args, "--chunk-size", "8"]) == 130
    capsys.readouterr()
    line = one_line_error(capsys, main([*args, "--chunk-size", "16"]), "--chunk-size 8", "16", "resume")
    assert "corpus changed" not in line


def test_results_are_kept_per_factory_and_top_k(tiny_beir, tiny_model_dir, tmp_path, capsys):
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path)) == 0
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path, "--factory", "HNSW32")) == 0
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path, "--top-k", "10")) == 0
    printed = re.findall(r"results: (\S+)", capsys.readouterr().out)
    assert len(set(printed)) == 3 and all((Path(p) / "results.json").exists() for p in printed)
    factories = {json.loads((Path(p) / "results.json").read_text())["metadata"]["index"]["factory"] for p in printed}
    assert factories == {"Flat", "HNSW32"}


def test_same_named_data_sets_in_two_places_do_not_collide(tiny_beir, tiny_model_dir, tmp_path, capsys):
    other = tmp_path / "other" / "tiny"
    shutil.copytree(tiny_beir, other)
    _rewrite_texts(other / "corpus.jsonl", "something else entirely")
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path)) == 0
    assert main(_eval(other, tiny_model_dir, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "encoding it afresh" not in err                                       # each has its own folder
    assert len(list((tmp_path / "work").iterdir())) == 2


def test_index_build_over_another_index_is_refused_and_the_same_is_reused(built, tiny_beir, tiny_model_dir, tmp_path,
                                                                          capsys):
    assert main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(built["index"])]) == 0
    assert "reused Flat over 40 vectors" in capsys.readouterr().out
    one_line_error(capsys, main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(built["index"]),
                                 "--factory", "HNSW32"]), "already holds an index", "factory: 'Flat', not 'HNSW32'")
    other = tmp_path / "other-emb"
    _rewrite_texts(tiny_beir / "corpus.jsonl", "other text")
    assert main(["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(other),
                 *TINY]) == 0
    one_line_error(capsys, main(["index", "build", "--embeddings", str(other), "--output", str(built["index"])]),
                   "already holds an index of other embeddings")


@pytest.mark.parametrize("extra, flags", [
    (["--model", "minilm"], "--model"), (["--factory", "HNSW32", "--top-k", "5"], "--factory, --top-k"),
    (["--no-normalize"], "--no-normalize"), (["--workdir", "w"], "--workdir"),
])
def test_eval_with_a_run_refuses_options_it_would_ignore(extra, flags, tiny_beir, tmp_path, capsys):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q0 Q0 doc0 1 1.0 x\n")
    one_line_error(capsys, main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), *extra]),
                   flags, "would not be used")


@pytest.mark.parametrize("metric", ["NDCG@7", "nDCG@10", "Precision@10", "NDCG"])
def test_a_plot_of_a_metric_not_computed_is_refused(metric, tiny_beir, tmp_path, capsys):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q0 Q0 doc0 1 1.0 x\n")
    one_line_error(capsys, main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), "--plot",
                                 metric]), "--plot", metric)


def test_each_warning_is_printed_once(tiny_beir, tiny_model_dir, tmp_path, capsys):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q0\tghost-doc\t1\n")
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path)) == 0
    err = capsys.readouterr().err
    assert err.count("ghost-doc") == 1 and "warning: 1 judged document(s)" in err


def test_no_normalize_help_reads_right():
    text = _help(["encode"])
    assert "(default: True)" not in text and "(default: False)" not in text


# ---------------------------------------------------------------- the numeric sweep

#: (command, flag, value) that succeed by design, with the reason (docs/cli.md says the same).
DOCUMENTED_SUCCESS = {
    "--batch-size": "a batch never holds more texts than there are: a huge batch is the whole chunk",
    "--chunk-size": "a chunk never holds more passages than the corpus: a huge chunk is the whole corpus",
    "--train-size": "the training sample is at most every vector",
    "--top-k": "a query gets at most every document",
    "--k-values": "a cut-off beyond the ranking scores the whole ranking, as trec_eval does",
}


def _numeric_options(path: tuple[str, ...]) -> list[str]:
    parser = dict(_subparsers(build_parser()))[path]
    found = []
    for action in parser._actions:
        if action.option_strings and action.type in (int, float):
            found.append(action.option_strings[0])
    return found


def _subparsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def _help(path) -> str:
    return dict(_subparsers(build_parser()))[tuple(path)].format_help()


SWEPT = [(path, option) for path in [("encode",), ("index", "build"), ("search",), ("eval", "beir")]
         for option in _numeric_options(path)] + [(("eval", "beir"), "--k-values")]


def test_the_sweep_covers_every_numeric_option():
    assert {(p, o) for p, o in SWEPT} >= {(("encode",), "--chunk-size"), (("encode",), "--max-length"),
                                          (("encode",), "--batch-size"), (("index", "build"), "--train-size"),
                                          (("search",), "--top-k"), (("eval", "beir"), "--top-k"),
                                          (("eval", "beir"), "--chunk-size")}


@pytest.mark.parametrize("value", ["0", "-1", str(HUGE)], ids=["zero", "negative", "huge"])
@pytest.mark.parametrize("path, option", SWEPT, ids=lambda x: " ".join(x) if isinstance(x, tuple) else x)
def test_numeric_options_at_zero_negative_and_huge(path, option, value, built, tiny_beir, tiny_model_dir, tmp_path,
                                                   capsys):
    out = tmp_path / "sweep-out"
    base = {
        ("encode",): ["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(out),
                      *TINY],
        ("index", "build"): ["index", "build", "--embeddings", str(built["emb"]), "--output", str(out)],
        ("search",): ["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output",
                      str(out / "run.trec")],
        ("eval", "beir"): _eval(tiny_beir, tiny_model_dir, tmp_path, "--output", str(out)),
    }[path]
    code = main([*base, option, value])
    if value == str(HUGE) and option in DOCUMENTED_SUCCESS:
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, err[-2000:]
        return
    one_line_error(capsys, code, option)
    assert not out.exists() or path == ("search",) and not (out / "run.trec").exists()


def test_encode_warns_about_empty_documents_and_counts_them(tiny_beir, tiny_model_dir, tmp_path, capsys):
    corpus = tiny_beir / "corpus.jsonl"
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "blank", "title": "", "text": ""}) + "\n")
    assert main(["encode", "--corpus", str(corpus), "--model", str(tiny_model_dir), "--output", str(tmp_path / "emb"),
                 *TINY]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert not [line for line in lines if "warning:" in line and not line.startswith("warning:")]  # own line
    assert len(warnings) == 1 and "1" in warnings[0] and "blank" in warnings[0], captured.err
    assert "encoded 41 passages" in captured.out                                   # still encoded, as documented


@pytest.mark.parametrize("args, fragment", [
    (["encode", "--output", "x"], "required: --corpus"),
    (["search", "--index", "i", "--queries", "q", "--output", "o", "--top-k", "ten"], "--top-k: invalid int"),
    (["eval", "beir", "--dataset", "d", "--pooling", "max"], "--pooling: invalid choice"),
    (["pretrain", "--data", "d", "--output", "o", "--lr-scheduler", "reduce_lr_on_plateau"], "--lr-scheduler"),
    (["no-such-command"], "invalid choice"),
])
def test_parse_errors_are_one_line_too(args, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("retromem: error: ")
    assert fragment in err
    assert "usage:" not in err


# ---------------------------------------------------------------- a review's findings

def test_eval_keeps_top_k_documents_per_query(tiny_beir, tiny_model_dir, tmp_path, capsys):
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path, "--top-k", "1", "--k-values", "1,10")) == 0
    out = capsys.readouterr().out
    run_file = next((tmp_path / "work").rglob("runs/*.trec"))
    per_query = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc = line.split()[:3]
        per_query.setdefault(qid, []).append(doc)
    assert all(len([d for d in docs if d != qid]) == 1 for qid, docs in per_query.items())
    results = json.loads(Path(re.search(r"results: (\S+)", out).group(1), "results.json").read_text())["metrics"]
    assert results["Recall@10"] == results["Recall@1"]                         # one document retrieved: nothing more


def test_results_of_another_query_prefix_are_kept_beside(tiny_beir, tiny_model_dir, tmp_path, capsys):
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path)) == 0
    assert main(_eval(tiny_beir, tiny_model_dir, tmp_path, "--query-prefix", "query: ")) == 0
    printed = re.findall(r"results: (\S+)", capsys.readouterr().out)
    assert len(set(printed)) == 2


@pytest.mark.parametrize("damage, fragment", [
    (lambda folder: (folder / "ids.txt").unlink(), "ids.txt is missing"),
    (lambda folder: (folder / "meta.json").write_text("[1, 2]"), "not the metadata of a embeddings"),
    (lambda folder: (folder / "meta.json").write_text('{"schema": "one"}'), "integer schema"),
])
def test_a_damaged_embeddings_folder_is_one_line(damage, fragment, built, tmp_path, capsys):
    damage(built["emb"])
    one_line_error(capsys, main(["index", "build", "--embeddings", str(built["emb"]), "--output",
                                 str(tmp_path / "i")]), fragment)


def test_an_index_without_its_ids_is_one_line(built, tiny_beir, tmp_path, capsys):
    (built["index"] / "ids.txt").unlink()
    one_line_error(capsys, main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output",
                                 str(tmp_path / "run.trec")]), "ids.txt is missing", "rebuild")


def test_a_workdir_that_is_a_file_is_one_line(tiny_beir, tiny_model_dir, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = ["eval", "beir", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir), "--workdir", str(a_file),
            *TINY]
    one_line_error(capsys, main(args), "--workdir")


def test_abbreviated_options_are_not_taken(tiny_beir, tmp_path, capsys):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q0 Q0 doc0 1 1.0 x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), "--fact", "HNSW32"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --fact" in capsys.readouterr().err


def test_a_changed_batch_size_on_resume_says_so(tiny_beir, tiny_model_dir, tmp_path, capsys, interrupt_second_chunk):
    args = ["encode", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(tmp_path / "emb"),
            "--chunk-size", "8", *TINY]
    assert main([*args, "--batch-size", "4"]) == 130
    capsys.readouterr()
    one_line_error(capsys, main(args), "--batch-size 4", "resume")


def test_an_untrained_index_is_reused_whatever_the_training_sample(built, capsys):
    assert main(["index", "build", "--embeddings", str(built["emb"]), "--output", str(built["index"]),
                 "--train-size", "5"]) == 0
    assert "reused Flat" in capsys.readouterr().out


# ---- eval kilt (issue 14) ----

@pytest.fixture()
def kilt_files(tmp_path):
    source = tmp_path / "knowledge_source.jsonl"
    source.write_text("".join(json.dumps({"wikipedia_id": f"P{i}", "wikipedia_title": f"Page {i}",
                                          "text": [f"Page {i}", "protein cell gene tumor virus " * 3]}) + "\n"
                              for i in range(4)), encoding="utf-8")
    task = tmp_path / "task.jsonl"
    rows = [{"id": f"q{i}", "input": "gene tumor",
             "output": [{"answer": "a", "provenance": [{"wikipedia_id": f"P{i}"}]}]}
            for i in range(3)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "output": [{"answer": "a", "provenance": []}]}) + "\n"
                             for r in rows), encoding="utf-8")
    return {"source": source, "task": task, "preds": preds, "rows": rows, "dir": tmp_path}


def _kilt(files, tiny_model_dir, *extra) -> list[str]:
    return ["eval", "kilt", "--task", str(files["task"]), "--model", str(tiny_model_dir), "--workdir",
            str(files["dir"] / "work"), "--passage-words", "5", *TINY, *extra]


@pytest.mark.parametrize("extra, fragments", [
    (["--passage-words", "0"], ["--passage-words"]),
    (["--passage-stride", "9"], ["--passage-stride", "--passage-words"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--ks", "0,5"], ["--ks"]),
    (["--ks", "five"], ["--ks"]),
    (["--method", "nope"], ["--method", "'nope'", "dense"]),
    (["--source", "nowhere/ks.jsonl"], ["nowhere/ks.jsonl", "does not exist"]),
    (["--rerank", "memory", "--rerank-depth", "9"], ["--rerank, --rerank-depth rerank the passages a reader reads: "
                                                     "give --reader too"]),
])
def test_eval_kilt_refuses_bad_options(extra, fragments, kilt_files, tiny_model_dir, capsys):
    one_line_error(capsys, main(_kilt(kilt_files, tiny_model_dir, *extra)), *fragments)


def test_eval_kilt_bad_task_and_source_files(kilt_files, tiny_model_dir, capsys):
    task, rows = kilt_files["task"], kilt_files["rows"]
    one_line_error(capsys, main(["eval", "kilt", "--task", str(task.parent / "none.jsonl"),
                                 "--predictions", str(kilt_files["preds"])]), "none.jsonl", "does not exist")
    one_line_error(capsys, main(["eval", "kilt", "--task", "nonsense-dev", "--predictions", str(kilt_files["preds"])]),
                   "unknown KILT task", "squad-dev")
    task.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]), encoding="utf-8")
    one_line_error(capsys, main(["eval", "kilt", "--task", str(task), "--predictions", str(kilt_files["preds"])]),
                   f"{task}:4:", "'q0' is given twice: on line 1 and on line 4")
    task.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    source = kilt_files["source"]
    source.write_text(source.read_text() + json.dumps({"wikipedia_id": "P9", "wikipedia_title": "Nine"}) + "\n")
    one_line_error(capsys, main(_kilt(kilt_files, tiny_model_dir)), f"{source}:5:", "no 'text' field")


def test_eval_kilt_gold_pages_missing_from_the_source_are_counted(kilt_files, tiny_model_dir, capsys):
    task, rows = kilt_files["task"], kilt_files["rows"]
    rows[2]["output"][0]["provenance"] = [{"wikipedia_id": "GONE"}]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(_kilt(kilt_files, tiny_model_dir)) == 0
    assert "1 gold page(s) are not in the knowledge source ('GONE')" in capsys.readouterr().out


@pytest.mark.parametrize("lines, fragments", [
    ([{"id": "q0", "output": [{"answer": "a"}]}, {"id": "q1", "output": [{"answer": "a"}]}],
     ["no prediction for id 'q2'"]),
    ([{"id": f"q{i}", "output": [{"answer": ""}]} for i in (0, 1, 2, 7)], [":4:", "id 'q7' is not in the task"]),
    ([{"id": "q0", "output": [{"answer": ""}]}, {"id": "q0", "output": [{"answer": ""}]}],
     [":2:", "'q0' is predicted twice: on line 1 and on line 2"]),
    ([{"id": "q0", "output": []}], [":1:", "exactly one object"]),
    (["{broken"], [":1:", "malformed JSON"]),
])
def test_eval_kilt_bad_predictions(lines, fragments, kilt_files, capsys):
    preds = kilt_files["preds"]
    preds.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    one_line_error(capsys, main(["eval", "kilt", "--task", str(kilt_files["task"]), "--predictions", str(preds)]),
                   *fragments)


@pytest.mark.parametrize("extra", [["--top-k", "5"], ["--model", "minilm"], ["--factory", "HNSW32"],
                                   ["--source", "squad-kilt"], ["--passage-words", "50"]])
def test_eval_kilt_predictions_refuse_retrieval_options(extra, kilt_files, capsys):
    one_line_error(capsys, main(["eval", "kilt", "--task", str(kilt_files["task"]), "--predictions",
                                 str(kilt_files["preds"]), *extra]), extra[0], "would not be used")


# --- BM25, hybrid and fuse (issue 12) ---------------------------------------------------------------------------


@pytest.fixture()
def bm25_index(tiny_beir, tmp_path, capsys):
    index = tmp_path / "bm25"
    assert main(["index", "bm25", "--corpus", str(tiny_beir), "--output", str(index), "--threads", "1"]) == 0
    capsys.readouterr()
    return index


BM25_DOCUMENTED_SUCCESS = {
    "--k1": "any saturation k1 >= 0 is a BM25 (huge: term frequency counts almost linearly)",
    "--top-k": "a query gets at most every document",
    "--fusion-depth": "each searcher gives at most every document",
    "--rrf-k": "a huge RRF constant still ranks by the sum of 1 / (k + rank)",
    "--passage-words": "a passage never holds more words than its page",
}


#: 0 is a meaningful value of these: k1 = 0 scores term presence only, b = 0 no length normalisation, RRF k = 0
BM25_ZERO_ALLOWED = ("--k1", "--b", "--rrf-k")


def _bm25_commands(tiny_beir, tiny_model_dir, index, out: Path) -> dict[tuple[str, ...], list[str]]:
    return {
        ("index", "bm25"): ["index", "bm25", "--corpus", str(tiny_beir), "--output", str(out)],
        ("search", "bm25"): ["search", "--method", "bm25", "--index", str(index), "--queries", str(tiny_beir),
                             "--output", str(out / "run.trec")],
        ("eval", "beir", "bm25"): ["eval", "beir", "--dataset", str(tiny_beir), "--method", "bm25", "--workdir",
                                   str(out.parent / "work"), "--output", str(out)],
        ("fuse",): ["fuse", str(index.parent / "a.trec"), str(index.parent / "a.trec"), "--output",
                    str(out / "run.trec")],
    }


BM25_SWEPT = [(("index", "bm25"), o) for o in ("--threads", "--memory-buffer", "--passage-words")] + \
    [(("search", "bm25"), o) for o in ("--top-k", "--k1", "--b", "--search-threads")] + \
    [(("eval", "beir", "bm25"), o) for o in ("--top-k", "--k1", "--b", "--search-threads", "--threads")] + \
    [(("fuse",), o) for o in ("--top-k", "--rrf-k")]


@pytest.mark.parametrize("value", ["0", "-1", str(HUGE)], ids=["zero", "negative", "huge"])
@pytest.mark.parametrize("path, option", BM25_SWEPT, ids=lambda x: " ".join(x) if isinstance(x, tuple) else x)
def test_bm25_numeric_options_at_zero_negative_and_huge(path, option, value, bm25_index, tiny_beir, tiny_model_dir,
                                                        tmp_path, capsys):
    (bm25_index.parent / "a.trec").write_text("q0 Q0 doc0 1 1.0 x\n")
    out = tmp_path / "sweep-out"
    code = main([*_bm25_commands(tiny_beir, tiny_model_dir, bm25_index, out)[path], option, value])
    if value == str(HUGE) and option in BM25_DOCUMENTED_SUCCESS or value == "0" and option in BM25_ZERO_ALLOWED:
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, err[-2000:]
        return
    one_line_error(capsys, code, option)
    assert not (out / "run.trec").exists() and not (out / "bm25.json").exists()


@pytest.mark.parametrize("args, fragments", [
    (["index", "bm25", "--corpus", "{beir}", "--output", "{index}", "--multifield"], ["another BM25 index",
                                                                                      "not multifield"]),
    (["index", "bm25", "--corpus", "{tmp}/nowhere.jsonl", "--output", "{tmp}/x"], ["nowhere.jsonl"]),
    (["index", "bm25", "--corpus", "{beir}", "--output", "{tmp}/x", "--jvm-heap", "lots"], ["--jvm-heap"]),
    (["search", "--method", "bm25", "--index", "{tmp}", "--queries", "{beir}", "--output", "{tmp}/r.trec"],
     ["not a BM25 index", "retromem index bm25"]),
    (["search", "--method", "bm25", "--index", "{index}", "--queries", "{beir}", "--output", "{tmp}/r.trec",
      "--model", "minilm"], ["--model would not be used with --method bm25"]),
    (["search", "--method", "hybrid", "--index", "{index}", "--queries", "{beir}", "--output", "{tmp}/r.trec"],
     ["--bm25-index"]),
    (["search", "--index", "{index}", "--queries", "{beir}", "--output", "{tmp}/r.trec", "--bm25-index", "{index}"],
     ["--bm25-index would not be used with --method dense"]),
    (["eval", "beir", "--dataset", "{beir}", "--method", "bm25", "--run", "{tmp}/a.trec"], ["--run"]),
    (["eval", "beir", "--dataset", "{beir}", "--method", "bm25", "--fusion", "interpolate"],
     ["--fusion would not be used with --method bm25"]),
    (["eval", "beir", "--dataset", "{beir}", "--method", "hybrid", "--fusion", "interpolate", "--alpha-split",
      "nosuch", "--model", "{model}", "--workdir", "{tmp}/w"], ["no 'nosuch' split to choose alpha on", "--alpha"]),
    (["fuse", "{tmp}/a.trec", "--output", "{tmp}/f.trec"], ["two or more run files"]),
    (["fuse", "{tmp}/a.trec", "{tmp}/a.trec", "--method", "interpolate", "--output", "{tmp}/f.trec"], ["--alpha"]),
    (["fuse", "{tmp}/a.trec", "{tmp}/a.trec", "--alpha", "0.5", "--output", "{tmp}/f.trec"], ["--rrf-k"]),
    (["fuse", "{tmp}/a.trec", "{tmp}/a.trec", "--method", "interpolate", "--alpha", "2", "--output", "{tmp}/f.trec"],
     ["--alpha", "[0, 1]"]),
    (["fuse", "{tmp}/a.trec", "{tmp}/bad.trec", "--output", "{tmp}/f.trec"], ["bad.trec:1:", "expected 6 columns"]),
    (["fuse", "{tmp}/a.trec", "{tmp}/none.trec", "--output", "{tmp}/f.trec"], ["none.trec"]),
])
def test_bm25_bad_input_is_one_line(args, fragments, bm25_index, tiny_beir, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a.trec").write_text("q0 Q0 doc0 1 1.0 x\n")
    (tmp_path / "bad.trec").write_text("q0 doc0 1\n")
    values = {"beir": str(tiny_beir), "index": str(bm25_index), "tmp": str(tmp_path), "model": str(tiny_model_dir)}
    code = main([a.format(**values) for a in args])
    one_line_error(capsys, code, *fragments)


def test_bm25_empty_corpus_is_refused_and_leaves_no_index(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("")
    one_line_error(capsys, main(["index", "bm25", "--corpus", str(corpus), "--output", str(tmp_path / "idx")]),
                   "corpus.jsonl", "empty")  # the library's own refusal, "the corpus holds no passages", in test_bm25
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.tmp-*"))


# ---------------------------------------------------------------- token memories (index memory, --rerank memory)

@pytest.fixture()
def memory(tiny_beir, tiny_model_dir, tmp_path, capsys) -> Path:
    folder = tmp_path / "memory"
    assert main(["index", "memory", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output",
                 str(folder), "--codec", "binary", "--shard-size", "16", *TINY]) == 0
    capsys.readouterr()
    return folder


@pytest.mark.parametrize("args, fragments", [
    (["index", "memory", "--layer", "9"], ["--layer", "9 is out of range", "has 2 layers"]),
    (["index", "memory", "--layer", "-2"], ["--layer", "at least -1"]),
    (["index", "memory", "--codec", "pq:m=100"], ["m=100 does not divide the dimension 64", "closest that can: m=64"]),
    (["index", "memory", "--codec", "pq:bytes=0"], ["bytes per token must be at least 1"]),
    (["index", "memory", "--codec", "zip"], ["--codec", "one of fp32"]),
    (["index", "memory", "--codec", "pq:m"], ["--codec", "key=value"]),
    (["index", "memory", "--merge-ratio", "0"], ["--merge-ratio", "> 0"]),
    (["index", "memory", "--merge-ratio", "1.5"], ["--merge-ratio", "at most 1"]),
    (["index", "memory", "--shard-size", "0"], ["--shard-size", "at least 1"]),
    (["index", "memory", "--layer", "1", "--codec", "binary"], ["other options", "layer: 2 then, 1 now"]),
    (["eval", "beir", "--rerank", "memory"], ["--rerank memory needs --memory"]),
    (["eval", "beir", "--memory", "{memory}"], ["--memory set up memory reranking", "--rerank memory"]),
    (["eval", "beir", "--rerank", "memory", "--memory", "{tmp}"], ["holds no token memory", "retromem index memory"]),
    (["eval", "beir", "--rerank", "memory", "--memory", "{memory}", "--rerank-weight-split", "test"],
     ["--rerank-weight-split must be another split"]),
    (["eval", "beir", "--rerank", "memory", "--memory", "{memory}", "--rerank-depth", "0"], ["--rerank-depth"]),
    (["eval", "beir", "--rerank", "memory", "--memory", "{memory}", "--model", "{st}"], ["different encoder"]),
])
def test_memory_bad_input_is_one_line(args, fragments, memory, tiny_beir, tiny_model_dir, tiny_st_dir, tmp_path,
                                      capsys):
    values = {"memory": str(memory), "tmp": str(tmp_path), "st": str(tiny_st_dir)}
    args = [a.format(**values) for a in args]
    if args[:2] == ["index", "memory"]:
        output = memory if "--layer" in args and "1" in args and "binary" in args else tmp_path / "other"
        args += ["--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--output", str(output), *TINY]
    else:
        args += ["--dataset", str(tiny_beir), "--workdir", str(tmp_path / "work"), *TINY]
        if "--model" not in args:
            args += ["--model", str(tiny_model_dir)]
    code = main(args)
    one_line_error(capsys, code, *fragments)
    assert not (tmp_path / "other").exists()


def test_search_memory_options_without_rerank_are_one_line(built, memory, tiny_beir, tmp_path, capsys):
    code = main(["search", "--index", str(built["index"]), "--queries", str(tiny_beir), "--output",
                 str(tmp_path / "r.trec"), "--memory", str(memory)])
    one_line_error(capsys, code, "--memory set up memory reranking")
    assert not (tmp_path / "r.trec").exists()


# ---- read train / predict / memory (issue 15) ----

@pytest.fixture(scope="module")
def read_world(tmp_path_factory):
    from tests.read_fixtures import write_kilt_world

    return write_kilt_world(tmp_path_factory.mktemp("read-world"))


def _read(command: str, world, tiny_model_dir, out: Path) -> list[str]:
    common = ["--task", str(world["claims"]), "--run", str(world["claims_run"])]
    return {"train": ["read", "train", *common, "--model", str(tiny_model_dir), "--output", str(out), "--k", "2"],
            "predict": ["read", "predict", *common, "--reader", str(out), "--output", str(out / "p.jsonl")],
            "memory": ["read", "memory", *common, "--model", str(tiny_model_dir), "--output", str(out)]}[command]


#: read option values that mean something (they start work instead of being refused): 0 live layers (pure
#: memory), no weight decay, no clipping, ..., and --max-steps -1 (as many as --epochs make).
READ_MEANINGFUL = {(o, "0") for o in ("--k", "--weight-decay", "--max-grad-norm", "--epochs", "--warmup-ratio",
                                      "--seed")} | {("--max-steps", "-1")}
READ_SWEPT = [(command, option) for command in ("train", "predict", "memory")
              for option in _numeric_options(("read", command))]


def test_the_read_sweep_covers_its_numeric_options():
    assert {("train", "--k"), ("train", "--passages"), ("train", "--limit"), ("train", "--batch-size"),
            ("predict", "--provenance"), ("memory", "--k")} <= set(READ_SWEPT)


@pytest.mark.parametrize("value", ["0", "-1"], ids=["zero", "negative"])
@pytest.mark.parametrize("command, option", READ_SWEPT, ids=lambda x: x)
def test_read_numeric_options_at_zero_and_negative(command, option, value, read_world, tiny_model_dir, tmp_path,
                                                   capsys):
    if (option, value) in READ_MEANINGFUL:
        pytest.skip(f"{option} {value} is meaningful")
    out = tmp_path / "out"
    one_line_error(capsys, main([*_read(command, read_world, tiny_model_dir, out), option, value]), option)
    assert not out.exists()


@pytest.mark.parametrize("command, extra, fragments", [
    ("train", ["--k", str(HUGE)], [f"--k {HUGE}: the encoder", "has 2 layers"]),
    ("train", ["--k", "1"], ["give --memory"]),
    ("train", ["--k", "1", "--memory", "{tmp}/none"], ["--memory", "no such folder"]),
    ("train", ["--passage-stride", "200"], ["(--passage-stride) 200 is above --passage-words"]),
    ("train", ["--run", "{tmp}"], ["is a folder without results.json"]),
    ("train", ["--task", "{tmp}/none.jsonl"], ["none.jsonl", "does not exist"]),
    ("train", ["--head", "span"], ["span head cannot express"]),
    ("train", ["--tune-codebook"], ["--tune-codebook tunes the pq codebook", "--k 2 re-encodes the passage text"]),
    ("train", ["--codebook-lr", "0.1"], ["(--codebook-lr) sets the learning rate", "give --tune-codebook too"]),
    ("predict", [], ["not a reader folder"]),
    ("predict", ["--passages", "3", "--rerank", "memory", "--rerank-depth", "2"],
     ["(--rerank-depth) 2 is below the 3 passages read"]),
    ("predict", ["--rerank-memory", "{tmp}"], ["--rerank-memory set up memory reranking: give --rerank memory"]),
    ("memory", ["--k", str(HUGE)], [f"--k {HUGE}: the encoder"]),
    ("memory", ["--k", "2"], ["re-encodes the passage text", "reads no memory"]),
])
def test_read_bad_input_is_one_line(command, extra, fragments, read_world, tiny_model_dir, tmp_path, capsys):
    extra = [e.format(tmp=tmp_path) for e in extra]
    out = tmp_path / "out"
    one_line_error(capsys, main([*_read(command, read_world, tiny_model_dir, out), *extra]), *fragments)


def test_a_run_without_some_questions_is_counted(read_world, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "half.run"
    lines = read_world["claims_run"].read_text().splitlines()
    run.write_text("\n".join(line for line in lines if int(line.split()[0][1:]) < 8) + "\n")
    code = main(["read", "train", "--task", str(read_world["claims"]), "--run", str(run), "--model",
                 str(tiny_model_dir), "--k", "2", "--output", str(tmp_path / "out")])
    one_line_error(capsys, code, "8 question(s) of the task have no retrieved passages", "c8")


def test_eval_kilt_predictions_missing_or_a_folder(kilt_files, capsys):
    task = str(kilt_files["task"])
    one_line_error(capsys, main(["eval", "kilt", "--task", task, "--predictions", str(kilt_files["dir"] / "no.jsonl")]),
                   "no.jsonl", "does not exist")
    one_line_error(capsys, main(["eval", "kilt", "--task", task, "--predictions", str(kilt_files["dir"])]),
                   "is a folder")
    one_line_error(capsys, main(["eval", "kilt", "--task", task, "--predictions", str(kilt_files["preds"]),
                                 "--output", task]), "--output", "is a file")
