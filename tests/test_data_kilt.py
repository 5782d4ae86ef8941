"""KILT data: knowledge-source passages, corpus resolution, task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retromem.data.corpora import open_corpus
from retromem.data.kilt import Provenance, check_provenance, read_kilt_task, resolve_kilt_source, resolve_kilt_task
from retromem.data.kilt_source import iter_kilt_passages, passage_page
from retromem.errors import ConfigError, DataError, MissingDataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


@pytest.fixture
def source(tmp_path):
    return write_jsonl(tmp_path / "ks.jsonl", [
        {"wikipedia_id": "7", "wikipedia_title": "Seven",
         "text": ["Seven", words("a", 6), words("b", 3), words("c", 4)]},
        {"wikipedia_id": 8, "wikipedia_title": "Eight", "text": ["Eight"]},
        {"wikipedia_id": "9", "text": ["Nine title", "x y"]},
    ])


def test_passages_count_words_across_paragraphs(source):
    passages = list(iter_kilt_passages(source, words=5))
    assert [p.id for p in passages] == ["7#0", "7#1", "7#2", "8#0", "9#0"]
    first, second, third = passages[:3]
    assert first.text == "a0 a1 a2 a3 a4" and first.paragraphs == (1, 1) and first.title == "Seven"
    assert second.text == "a5 b0 b1 b2 c0" and second.paragraphs == (1, 3)   # crosses two paragraph boundaries
    assert third.text == "c1 c2 c3" and third.paragraphs == (3, 3)           # the last one is shorter
    assert all(p.page_id == "7" for p in passages[:3])
    assert first.full_text() == "Seven a0 a1 a2 a3 a4"                         # the title is not among the words
    assert passages[3].text == "" and passages[3].page_id == "8" and passages[3].paragraphs == (0, 0)
    assert passages[4].title == "Nine title"                                 # no wikipedia_title: paragraph 0


def test_passages_with_stride_overlap(source):
    passages = [p for p in iter_kilt_passages(source, words=6, stride=4) if p.page_id == "7"]
    assert [p.text.split()[0] for p in passages] == ["a0", "a4", "b2"]
    assert passages[-1].text == "b2 c0 c1 c2 c3"   # ends at the page's last word, no window past it
    assert passages[0].paragraphs == (1, 1) and passages[1].paragraphs == (1, 3)


def test_default_passages_are_100_words_on_scifact():
    path = DATA / "kilt" / "scifact" / "knowledge_source.jsonl"
    first_page = []
    for passage in iter_kilt_passages(path):
        if first_page and passage.page_id != first_page[0].page_id:
            break
        first_page.append(passage)
    assert all(len(p.text.split()) == 100 for p in first_page[:-1])
    assert 0 < len(first_page[-1].text.split()) <= 100
    raw = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert " ".join(p.text for p in first_page) == " ".join(" ".join(raw["text"][1:]).split())


@pytest.mark.parametrize("size, stride", [(0, None), (10, 0), (10, 11)])
def test_bad_passage_sizes_are_refused(source, size, stride):
    with pytest.raises(ConfigError, match="passage"):
        list(iter_kilt_passages(source, words=size, stride=stride))


@pytest.mark.parametrize("line, message", [
    ({"wikipedia_id": "1", "wikipedia_title": "One"}, "has no 'text' field"),
    ({"wikipedia_id": "1", "text": "not a list"}, "must be a list of strings"),
    ({"wikipedia_title": "One", "text": ["One"]}, "missing or empty 'wikipedia_id'"),
    ({"wikipedia_id": "a b", "text": ["One"]}, "whitespace"),
    ("{not json", "malformed JSON"),
])
def test_bad_source_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "ks.jsonl", [{"wikipedia_id": "0", "text": ["Zero", "z"]}, line])
    with pytest.raises(DataError, match=message) as err:
        list(iter_kilt_passages(path))
    assert f"{path}:2:" in str(err.value)


def test_passage_page():
    assert passage_page("Super_Bowl_50#3") == "Super_Bowl_50"
    assert passage_page("a#b") == "a#b" and passage_page("plain") == "plain"


def test_open_corpus_kinds(tmp_path, source):
    kilt = open_corpus(source, passage_words=5)
    assert kilt.kind == "kilt" and kilt.name == "ks" and kilt.path == source.resolve()
    assert kilt.count() == 5 and [p.id for p in kilt.passages()] == [p.id for p in kilt.passages()]
    assert kilt.passage_key() == "w5" and open_corpus(source, 6, 3).passage_key() == "w6s3"
    named = open_corpus("scifact-kilt")
    assert named.kind == "kilt" and named.path == (DATA / "kilt/scifact/knowledge_source.jsonl").resolve()
    assert open_corpus("squad-dev").path == (DATA / "kilt/squad/knowledge_source.jsonl").resolve()
    beir = open_corpus("scifact")
    assert beir.kind == "beir" and beir.name == "scifact" and beir.path.name == "corpus.jsonl"
    assert beir.count() == 5183 and beir.passage_key() == ""
    assert open_corpus(DATA / "beir" / "scifact").path == beir.path
    by_file = open_corpus(beir.path)
    assert by_file.kind == "beir" and by_file.name == "scifact"
    assert next(by_file.passages()).id == next(beir.passages()).id


def test_open_corpus_refusals(tmp_path):
    with pytest.raises(MissingDataError, match="does not exist"):
        open_corpus(tmp_path / "nope.jsonl")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"id": "1", "contents": "x"}])
    with pytest.raises(DataError, match="neither a BEIR corpus line"):
        open_corpus(odd)
    with pytest.raises(ConfigError):
        open_corpus("scifact-kilt", passage_words=0)


# ---- task files ----

def test_read_kilt_task_squad_dev():
    task = resolve_kilt_task("squad-dev")
    assert task.source_path == (DATA / "kilt/squad/knowledge_source.jsonl").resolve()
    examples = read_kilt_task(task.path)
    assert len(examples) == 3000 and examples[0].line == 1 and examples[-1].line == 3000
    first = examples[0]
    assert first.id == "56be4db0acb8001400a502ed" and first.answers == ("Carolina Panthers",)
    assert first.evidence == ((Provenance("Super_Bowl_50", "Super Bowl 50", 1, 1, 249, 266),),)
    several = next(e for e in examples if len(e.answers) > 1)
    assert len(several.evidence) == len(several.answers)


def test_read_kilt_task_errors(tmp_path):
    good = {"id": "q1", "input": "what?", "output": [{"answer": "x", "provenance": [{"wikipedia_id": "1"}]}]}
    dup = write_jsonl(tmp_path / "dup.jsonl", [good, {**good, "id": "q2"}, good])
    with pytest.raises(DataError, match="'q1' is given twice: on line 1 and on line 3") as err:
        read_kilt_task(dup)
    assert f"{dup}:3:" in str(err.value)
    bad_position = write_jsonl(tmp_path / "pos.jsonl", [
        {**good, "output": [{"provenance": [{"wikipedia_id": "1", "start_paragraph_id": "one"}]}]}])
    with pytest.raises(DataError, match="start_paragraph_id"):
        read_kilt_task(bad_position)
    no_input = write_jsonl(tmp_path / "noinput.jsonl", [{"id": "q", "output": []}])
    with pytest.raises(DataError, match="no 'input'"):
        read_kilt_task(no_input)
    with pytest.raises(MissingDataError, match="unknown KILT task"):
        resolve_kilt_task("nonsense-dev")
    with pytest.raises(MissingDataError, match="does not exist"):
        resolve_kilt_task(tmp_path / "none.jsonl")


def test_provenance_without_paragraphs_and_missing_pages(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"id": "a", "input": "?", "output": [
            {"answer": "x", "provenance": [{"wikipedia_id": "1"}]},
            {"answer": "y", "provenance": [{"wikipedia_id": "2"}, {"wikipedia_id": "3"}]}]},
        {"id": "b", "input": "?", "output": [{"answer": "z", "provenance": [{"wikipedia_id": "4", "title": "Four"}]}]},
        {"id": "c", "input": "?", "output": [{"answer": "w"}]},
    ])
    examples = read_kilt_task(path)
    assert examples[0].evidence[0] == (Provenance("1"),) and examples[2].evidence == ()
    report = check_provenance(examples, {"1", "2"}, where="t.jsonl")
    assert (report.missing_pages, report.examples_affected, report.examples_unreachable) == (2, 2, 1)
    assert "2 gold page(s) are not in the knowledge source ('3', '4')" in report.warnings[0]


def test_resolve_kilt_source_names():
    assert resolve_kilt_source("scifact-kilt").name == "knowledge_source.jsonl"
    assert resolve_kilt_source("not-a-source") is None
