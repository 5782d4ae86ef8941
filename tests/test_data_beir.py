"""BEIR loading: by path and by name (in the documented order), streaming, every bad input, download."""

from __future__ import annotations

import functools
import gzip
import http.server
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from retromem.data.beir import PROJECT_ROOT, iter_corpus, load_beir, resolve_beir_dir
from retromem.data.passage import Passage
from retromem.errors import DataError, MissingDataError

from .conftest import tiny_beir_content, write_beir

NAME = "retromem-test-tiny"   # a name no real data folder uses


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def doc(i, text="some text", title="a title") -> str:
    return json.dumps({"_id": f"d{i}", "title": title, "text": text})


# ---------------------------------------------------------------- loading a good data set

def test_load_by_path_keeps_judged_queries_of_the_split(tiny_beir):
    test = load_beir(tiny_beir)
    assert test.root == tiny_beir.resolve() and test.name == "tiny" and test.split == "test"
    assert sorted(test.queries) == [f"q{i}" for i in range(6)]
    assert test.qrels["q0"] == {"doc0": 1, "doc1": 2}
    assert test.report.warnings == [] and test.report.unknown_qrel_queries == 0

    train = load_beir(str(tiny_beir), split="train")
    assert sorted(train.queries) == ["q6", "q7"] and train.qrels == {"q6": {"doc18": 1}, "q7": {"doc21": 1}}


def test_corpus_passages_carry_id_title_text_in_file_order(tiny_beir):
    corpus, _, _ = tiny_beir_content()
    passages = list(load_beir(tiny_beir).iter_corpus())
    assert passages == [Passage(id=d["_id"], title=d["title"], text=d["text"]) for d in corpus]
    assert passages[0].full_text() == f"{corpus[0]['title']} {corpus[0]['text']}"


def test_corpus_streams_without_reading_the_whole_file(tmp_path):
    # a bad line at the end is only met when the stream gets there: the corpus is never read up front
    path = write_lines(tmp_path / "corpus.jsonl", [doc(i) for i in range(5)] + ["{broken"])
    stream = iter_corpus(path)
    assert [p.id for p in itertools.islice(stream, 5)] == [f"d{i}" for i in range(5)]
    with pytest.raises(DataError):
        next(stream)


def test_gzipped_corpus_is_read(tiny_beir):
    plain = tiny_beir / "corpus.jsonl"
    with open(plain, "rb") as src, gzip.open(tiny_beir / "corpus.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    expected = list(iter_corpus(plain))
    plain.unlink()
    dataset = load_beir(tiny_beir)
    assert dataset.corpus_path.name == "corpus.jsonl.gz"
    assert list(dataset.iter_corpus()) == expected


def test_name_resolves_to_retromem_data_first_then_shared_then_cache(tmp_path, monkeypatch):
    corpus, queries, qrels = tiny_beir_content()
    env_root, cache = tmp_path / "env-data", tmp_path / "cache"
    write_beir(cache / "beir" / NAME, corpus, queries, qrels)
    monkeypatch.setenv("RETROMEM_CACHE", str(cache))
    monkeypatch.setenv("RETROMEM_DATA", str(env_root))
    # only in the cache: found there, nothing downloaded
    assert load_beir(NAME, download=False).root == (cache / "beir" / NAME).resolve()
    # also under $RETROMEM_DATA/beir: that one wins over the cache
    write_beir(env_root / "beir" / NAME, corpus, queries, qrels)
    assert resolve_beir_dir(NAME, download=False) == (env_root / "beir" / NAME).resolve()


def test_retromem_data_comes_before_the_shared_folder(tmp_path, monkeypatch):
    shared = PROJECT_ROOT.parent / "shared" / "data" / "beir" / "scifact"
    if not (shared / "corpus.jsonl").exists():
        pytest.skip(f"{shared} is absent")
    corpus, queries, qrels = tiny_beir_content()
    write_beir(tmp_path / "beir" / "scifact", corpus, queries, qrels)
    monkeypatch.setenv("RETROMEM_DATA", str(tmp_path))
    assert resolve_beir_dir("scifact", download=False) == (tmp_path / "beir" / "scifact").resolve()
    monkeypatch.delenv("RETROMEM_DATA")
    assert resolve_beir_dir("scifact", download=False) == shared.resolve()


def test_unknown_name_without_download_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RETROMEM_DATA", str(tmp_path / "data"))
    with pytest.raises(MissingDataError) as err:
        load_beir(NAME, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    assert "corpus.jsonl" in message and str(tmp_path / "data" / "beir" / NAME) in message
    assert str(tmp_path / "cache" / NAME) in message
    assert message.count(str(tmp_path / "data" / "beir" / NAME)) == 1  # each place named once
    assert "set RETROMEM_DATA" not in message  # it is set


def test_a_missing_folder_given_as_a_path_is_named(tmp_path):
    with pytest.raises(MissingDataError, match="does not exist"):
        load_beir(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- bad input

def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [doc(1), doc(2), '{"_id": "d3", "text": "unterminated'])
    with pytest.raises(DataError) as err:
        list(iter_corpus(path))
    assert err.value.path == path and err.value.line == 3
    assert str(err.value).startswith(f"{path}:3: malformed JSON")


def test_a_line_that_is_not_an_object_is_refused(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [doc(1), '["d2", "text"]'])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: expected a JSON object"):
        list(iter_corpus(path))


@pytest.mark.parametrize("record, message", [
    ({"title": "t", "text": "x"}, "missing '_id'"),
    ({"_id": "", "title": "t", "text": "x"}, "'_id' must be a non-empty string"),
    ({"_id": "d2", "title": "t"}, "no 'text' field"),
    ({"_id": "d2", "title": "t", "text": ["x"]}, "must be strings"),
])
def test_missing_or_bad_fields_name_file_and_line(tmp_path, record, message):
    path = write_lines(tmp_path / "corpus.jsonl", [doc(1), json.dumps(record)])
    with pytest.raises(DataError) as err:
        list(iter_corpus(path))
    assert err.value.line == 2 and message in str(err.value) and str(path) in str(err.value)


def test_integer_ids_are_read_as_strings(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [json.dumps({"_id": 7, "title": "", "text": "x"})])
    assert [p.id for p in iter_corpus(path)] == ["7"]


def test_duplicate_doc_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [doc(1), doc(2), doc(3), doc(2)])
    with pytest.raises(DataError) as err:
        list(iter_corpus(path))
    assert err.value.line == 4 and "first seen on line 2" in str(err.value) and "'d2'" in str(err.value)


def test_empty_texts_are_warned_counted_and_still_yielded(tiny_beir, caplog):
    lines = [doc(1), doc(2, text="", title=""), doc(3, text="  ", title=""), doc(4, text="", title="only title")]
    write_lines(tiny_beir / "corpus.jsonl", lines)
    dataset = load_beir(tiny_beir)
    with caplog.at_level(logging.WARNING, logger="retromem.data.beir"):
        passages = list(dataset.iter_corpus())
    assert [p.id for p in passages] == ["d1", "d2", "d3", "d4"]
    assert passages[1].full_text() == "" and passages[3].full_text() == "only title"
    assert dataset.report.empty_texts == 2
    assert len(dataset.report.warnings) == 1 and "lines 2, 3" in dataset.report.warnings[0]
    assert "'d2'" in dataset.report.warnings[0] and "'d3'" in dataset.report.warnings[0]
    assert "empty title and text" in caplog.text


def test_empty_texts_warning_names_the_first_ids_and_is_given_once_per_report(tiny_beir):
    lines = [doc(i, text="", title="") for i in range(7)] + [doc(7)]
    write_lines(tiny_beir / "corpus.jsonl", lines)
    dataset = load_beir(tiny_beir)
    assert len(list(dataset.iter_corpus())) == 8
    assert len(list(dataset.iter_corpus())) == 8          # streamed again (as a resumed encoding does)
    assert dataset.report.empty_texts == 7
    assert len(dataset.report.warnings) == 1
    warning = dataset.report.warnings[0]
    assert warning.startswith(f"{tiny_beir / 'corpus.jsonl'}: 7 document(s) with empty title and text")
    assert all(f"'d{i}'" in warning for i in range(5)) and "'d5'" not in warning and "..." in warning


def test_an_empty_corpus_is_an_error(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", ["", "  "])
    with pytest.raises(DataError, match="no documents"):
        list(iter_corpus(path))


def test_qrels_naming_unknown_queries_are_dropped_warned_and_counted(tiny_beir, caplog):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("ghost1\tdoc0\t1\nghost2\tdoc1\t1\nghost2\tdoc2\t1\n")
    with caplog.at_level(logging.WARNING, logger="retromem.data.beir"):
        dataset = load_beir(tiny_beir)
    assert dataset.report.unknown_qrel_queries == 2
    assert "ghost1" not in dataset.qrels and "ghost2" not in dataset.qrels
    assert sorted(dataset.queries) == [f"q{i}" for i in range(6)]
    assert "2 query id(s) in qrels/test.tsv are not in queries.jsonl" in caplog.text
    assert dataset.report.warnings and "ghost1" in dataset.report.warnings[0]


def test_qrels_naming_unknown_docs_are_warned_and_counted(tiny_beir, caplog):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("q0\tmissing-doc\t1\nq1\tother-missing\t1\n")
    dataset = load_beir(tiny_beir)
    doc_ids = frozenset(p.id for p in dataset.iter_corpus())
    with caplog.at_level(logging.WARNING, logger="retromem.data.beir"):
        assert dataset.check_qrels_docs(doc_ids) == 2
    assert dataset.report.unknown_qrel_docs == 2
    assert dataset.qrels["q0"]["missing-doc"] == 1          # kept: it counts as a miss
    assert "2 judged document(s)" in caplog.text and "missing-doc" in caplog.text


def test_a_missing_split_lists_the_available_ones(tiny_beir):
    with pytest.raises(MissingDataError) as err:
        load_beir(tiny_beir, split="dev")
    message = str(err.value)
    assert str(tiny_beir / "qrels" / "dev.tsv") in message and "available splits: test, train" in message


@pytest.mark.parametrize("row, message", [
    ("q0\tdoc5", "expected 3 tab-separated columns"),
    ("q0\tdoc5\thigh", "score 'high' is not a number"),
])
def test_malformed_qrels_rows_name_file_and_line(tiny_beir, row, message):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write(row + "\n")
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir)
    assert message in str(err.value) and err.value.line == 14 and err.value.path.name == "test.tsv"


def test_qrels_pair_judged_twice_with_different_grades_names_both_lines(tiny_beir):
    path = tiny_beir / "qrels" / "test.tsv"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("q0\tdoc1\t1\n")               # line 14; line 8 judges q0/doc1 with grade 2
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir)
    message = str(err.value)
    assert err.value.path == path and err.value.line == 14
    assert f"{path}:8" in message and f"{path}:14" in message
    assert "'q0'" in message and "'doc1'" in message and "grade 2" in message and "grade 1" in message
    assert err.value.fix and "one line" in err.value.fix


def test_an_exact_duplicate_qrels_line_is_kept_once_counted_and_warned(tiny_beir, caplog):
    path = tiny_beir / "qrels" / "test.tsv"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("q0\tdoc1\t2\nq1\tdoc3\t1.0\n")   # lines 14, 15 repeat lines 8 and 3
    with caplog.at_level(logging.WARNING, logger="retromem.data.beir"):
        dataset = load_beir(tiny_beir)
    assert dataset.qrels["q0"] == {"doc0": 1, "doc1": 2} and dataset.qrels["q1"] == {"doc3": 1, "doc4": 2}
    assert dataset.report.duplicate_qrels == 2
    assert len(dataset.report.warnings) == 1
    warning = dataset.report.warnings[0]
    assert str(path) in warning and "2 duplicate judgment line(s)" in warning
    assert "line 14 repeats line 8" in warning and "duplicate judgment" in caplog.text


@pytest.mark.parametrize("row, hint", [
    ("q0\t0\tdoc5\t1", "awk"),                    # TREC qrels with tabs: 4 columns
    ("q0 0 doc5 1", "awk"),                          # TREC qrels with spaces: 1 column
    ("q0 doc5 1", "tabs"),                           # BEIR columns separated by spaces
    ("q0\tdoc5", "query-id<TAB>corpus-id<TAB>score"),
])
def test_qrels_column_errors_give_a_fix_that_exists(tiny_beir, row, hint):
    with open(tiny_beir / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write(row + "\n")
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir)
    assert err.value.line == 14 and "expected 3 tab-separated columns" in str(err.value)
    assert "--qrels-format" not in str(err.value) and hint in err.value.fix


def test_the_awk_hint_turns_trec_qrels_into_qrels_the_loader_reads(tiny_beir, tmp_path):
    import subprocess

    awk = shutil.which("awk")
    if awk is None:
        pytest.skip("no awk here")
    trec = tmp_path / "qrels.trec"
    trec.write_text("q0 0 doc0 1\nq0 0 doc1 2\nq1 0 doc3 1\n", encoding="utf-8")
    target = tiny_beir / "qrels" / "test.tsv"
    target.write_text("q0\t0\tdoc0\t1\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir)
    command = err.value.fix.split("convert it with ", 1)[1].split(" FILE.trec", 1)[0]
    with open(trec, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        subprocess.run(["sh", "-c", command], stdin=src, stdout=dst, check=True)
    assert load_beir(tiny_beir).qrels == {"q0": {"doc0": 1, "doc1": 2}, "q1": {"doc3": 1}}


@pytest.mark.parametrize("line, message", [
    ('{"_id": "q9"}', "no 'text' string"),
    ('{"_id": "q9", "text": " "}', "query 'q9' has empty text"),
    ('{"_id": "q1", "text": "again"}', "duplicate query id 'q1' (first seen on line 2)"),
])
def test_bad_queries_name_file_and_line(tiny_beir, line, message):
    with open(tiny_beir / "queries.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir)
    assert message in str(err.value) and err.value.line == 9 and err.value.path.name == "queries.jsonl"


def test_a_folder_without_queries_is_refused(tiny_beir):
    (tiny_beir / "queries.jsonl").unlink()
    with pytest.raises(MissingDataError, match="queries.jsonl"):
        load_beir(tiny_beir)


# ---------------------------------------------------------------- download (loopback only)

class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def zip_server(tmp_path):
    """Serve ``<NAME>.zip`` (a BEIR folder inside, as the BEIR mirror lays it out) from 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    source = write_beir(tmp_path / "src" / NAME, *tiny_beir_content())
    with zipfile.ZipFile(served / f"{NAME}.zip", "w") as zf:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                zf.write(file, Path(NAME) / file.relative_to(source))
    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}.zip", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def no_proxy(monkeypatch, tmp_path):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("RETROMEM_DATA", str(tmp_path / "no-data-here"))


def test_download_lands_in_the_cache_and_is_reused(tmp_path, monkeypatch, zip_server, no_proxy):
    url, requests = zip_server
    monkeypatch.setenv("RETROMEM_BEIR_URL", url)
    monkeypatch.setenv("RETROMEM_CACHE", str(tmp_path / "cache"))
    dataset = load_beir(NAME)
    target = tmp_path / "cache" / "beir" / NAME
    assert dataset.root == target.resolve() and requests == [f"/{NAME}.zip"]
    assert (target / "corpus.jsonl").is_file() and (target / "qrels" / "test.tsv").is_file()
    assert sorted(dataset.queries) == [f"q{i}" for i in range(6)] and len(list(dataset.iter_corpus())) == 40
    assert [p.name for p in (tmp_path / "cache" / "beir").iterdir()] == [NAME]   # no staging left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask                       # not mkdtemp's private 0700
    assert (target / "corpus.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    load_beir(NAME)
    assert len(requests) == 1                                                   # second load: from the cache


def test_download_into_an_explicit_cache_dir(tmp_path, monkeypatch, zip_server, no_proxy):
    url, _ = zip_server
    monkeypatch.setenv("RETROMEM_BEIR_URL", url)
    dataset = load_beir(NAME, cache_dir=tmp_path / "elsewhere")
    assert dataset.root == (tmp_path / "elsewhere" / NAME).resolve()


def test_a_download_that_is_not_a_zip_is_refused(tmp_path, monkeypatch, zip_server, no_proxy):
    url, _ = zip_server
    served = tmp_path / "served" / f"{NAME}.zip"
    served.write_text("<html>not found</html>")
    monkeypatch.setenv("RETROMEM_BEIR_URL", url)
    with pytest.raises(DataError, match="not a zip archive"):
        load_beir(NAME, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_download_says_where_to_put_the_files(tmp_path, monkeypatch, no_proxy):
    with socket.socket() as probe:        # a port that was free a moment ago, closed now: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RETROMEM_BEIR_URL", f"http://127.0.0.1:{port}/{{name}}.zip")
    with pytest.raises(MissingDataError) as err:
        load_beir(NAME, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert f"could not download BEIR data set '{NAME}'" in message and f"127.0.0.1:{port}" in message
    assert "Put corpus.jsonl, queries.jsonl and qrels/<split>.tsv" in message
    assert str(tmp_path / "no-data-here" / "beir" / NAME) in message and str(tmp_path / "cache" / NAME) in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_document_id_with_whitespace_is_refused_with_its_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "fine"}\n{"_id": "d 2", "text": "bad id"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: .*whitespace"):
        list(iter_corpus(corpus))
