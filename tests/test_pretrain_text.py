"""Pretraining text: every source kind, segmenting, the on-disk cache, and the errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import retromem.data.pretrain_text as pretrain_text
from retromem.data.beir import data_root
from retromem.data.pretrain_text import load_pretrain_segments
from retromem.data.text_sources import resolve_source
from retromem.errors import DataError, MissingDataError

DOCS = {
    "d1": "The European lobster is a species of clawed lobster from the eastern Atlantic Ocean, "
          "the Mediterranean Sea and parts of the Black Sea. It is closely related to the American lobster.",
    "d2": "Valkyria Chronicles is a tactical role-playing game developed by Sega and Media.Vision for the "
          "PlayStation Portable, released in January 2011 in Japan.",
    "d3": "Short text.",
}



def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load(sources, tokenizer, tmp_path, segment_length=8, **kwargs):
    kwargs.setdefault("min_segment_length", 4)
    return load_pretrain_segments(sources, tokenizer, segment_length, cache_dir=tmp_path / "cache",
                                  show_progress=False, **kwargs)


def by_doc(dataset):
    docs: dict[str, list[tuple[int, list[int]]]] = {}
    for row in dataset:
        docs.setdefault(row["doc_id"], []).append((row["segment"], row["input_ids"]))
    return {doc: [seg for _, seg in sorted(rows)] for doc, rows in docs.items()}


def expected_segments(tokens, length, minimum):
    pieces = [tokens[i:i + length] for i in range(0, len(tokens), length)]
    return [p for p in pieces if len(p) >= minimum]


def test_plain_text_lines_become_documents_cut_into_segments(tokenizer, tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(f"{DOCS['d1']}\n\n   \n{DOCS['d2']}\n{DOCS['d3']}\n", encoding="utf-8")
    segments = load([str(path)], tokenizer, tmp_path)
    docs = by_doc(segments)
    # one document a non-blank line, named file:line; pieces shorter than min_segment_length (4) are
    # dropped: the tails, and all of "Short text." (3 tokens)
    assert len(ids(tokenizer, DOCS["d3"])) < 4
    assert set(docs) == {"wiki.txt:1", "wiki.txt:4"}
    for doc_id, text in (("wiki.txt:1", DOCS["d1"]), ("wiki.txt:4", DOCS["d2"])):
        assert docs[doc_id] == expected_segments(ids(tokenizer, text), 8, 4)
    assert all(1 <= len(row["input_ids"]) <= 8 for row in segments)
    special = set(tokenizer.all_special_ids)
    assert not any(special & set(row["input_ids"]) for row in segments)


def test_jsonl_with_title_and_id_fields(tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [{"id": k, "heading": "Lobsters", "body": v} for k, v in DOCS.items()]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    segments = load([str(path)], tokenizer, tmp_path, text_field="body", title_field="heading", id_field="id")
    docs = by_doc(segments)
    assert set(docs) == {"d1", "d2", "d3"}  # with its title, d3 is long enough
    assert docs["d2"] == expected_segments(ids(tokenizer, "Lobsters " + DOCS["d2"]), 8, 4)


def test_beir_corpus_by_folder_file_and_name(tokenizer, tmp_path, monkeypatch):
    root = tmp_path / "data" / "beir" / "tiny"
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(
        json.dumps({"_id": k, "title": "T", "text": v}) for k, v in DOCS.items()) + "\n", encoding="utf-8")
    monkeypatch.setenv("RETROMEM_DATA", str(tmp_path / "data"))
    assert resolve_source("tiny").kind == "beir"
    for spec in ("tiny", str(root), str(root / "corpus.jsonl"), f"beir:{root}"):
        docs = by_doc(load([spec], tokenizer, tmp_path))
        assert set(docs) == {"d1", "d2", "d3"}
        assert docs["d1"] == expected_segments(ids(tokenizer, "T " + DOCS["d1"]), 8, 4)


def test_datasets_source_and_several_sources_together(tokenizer, tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": v}) for v in DOCS.values()) + "\n", encoding="utf-8")
    text = tmp_path / "more.txt"
    text.write_text(DOCS["d1"] + "\n", encoding="utf-8")
    segments = load([f"datasets:{jsonl}", str(text)], tokenizer, tmp_path)
    docs = by_doc(segments)
    assert docs["0"] == expected_segments(ids(tokenizer, DOCS["d1"]), 8, 4)  # datasets rows are named by index
    assert docs["more.txt:1"] == docs["0"]
    assert set(docs) == {"0", "1", "more.txt:1"}  # row 2, "Short text.", is too short


def test_streaming_gives_the_same_segments_without_a_cache(tokenizer, tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(DOCS.values()) + "\n", encoding="utf-8")
    stored = load([str(path)], tokenizer, tmp_path / "a")
    streamed = load([str(path)], tokenizer, tmp_path / "b", streaming=True)
    assert [dict(r) for r in streamed] == [dict(r) for r in stored]
    assert not (tmp_path / "b" / "cache").exists()
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": v}) for v in DOCS.values()) + "\n", encoding="utf-8")
    streamed_hf = load([f"datasets:{jsonl}"], tokenizer, tmp_path / "c", streaming=True)
    assert [r["input_ids"] for r in streamed_hf] == [r["input_ids"] for r in stored]


def test_a_streamed_glob_is_one_shard_per_file(tokenizer, tmp_path):
    # under a launcher, accelerate gives each process whole shards when there are enough of them
    for i, text in enumerate(DOCS.values()):
        (tmp_path / f"part-{i}.txt").write_text(text + "\n", encoding="utf-8")
    streamed = load([str(tmp_path / "part-*.txt")], tokenizer, tmp_path / "s", streaming=True)
    assert streamed.n_shards == len(DOCS)
    stored = load([str(tmp_path / "part-*.txt")], tokenizer, tmp_path / "c")
    assert [r["input_ids"] for r in streamed] == [r["input_ids"] for r in stored]
    three = load([str(tmp_path / "part-*.txt")], tokenizer, tmp_path / "s", streaming=True, processes=3)
    assert three.n_shards == 3
    # 3 files cannot split evenly among 2 processes: one shard, of which each keeps every other batch
    two = load([str(tmp_path / "part-*.txt")], tokenizer, tmp_path / "s", streaming=True, processes=2)
    assert two.n_shards == 1
    assert [r["input_ids"] for r in two] == [r["input_ids"] for r in stored]


def test_parallel_tokenisation_matches(tokenizer, tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(list(DOCS.values()) * 20) + "\n", encoding="utf-8")
    single = load([str(path)], tokenizer, tmp_path / "one")
    double = load([str(path)], tokenizer, tmp_path / "two", num_proc=2)
    assert double["input_ids"] == single["input_ids"]


def test_second_run_reuses_the_cache_and_changes_invalidate_it(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "wiki.txt"
    path.write_text("\n".join(DOCS.values()) + "\n", encoding="utf-8")
    first = load([str(path)], tokenizer, tmp_path)
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "retromem_text.json").exists()
    assert json.loads((entries[0] / "retromem_text.json").read_text())["segments"] == len(first)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no staging left behind

    def must_not_tokenise(*args, **kwargs):
        raise AssertionError("tokenised again instead of reusing the cache")

    monkeypatch.setattr(pretrain_text, "_tokenize_and_cut", must_not_tokenise)
    again = load([str(path)], tokenizer, tmp_path)
    assert again["input_ids"] == first["input_ids"]
    monkeypatch.undo()

    load([str(path)], tokenizer, tmp_path, segment_length=6)  # another segment length: another entry
    path.write_text("\n".join(DOCS.values()) + "\nOne more line of text for the corpus.\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a changed file (size and time) is a new corpus
    changed = load([str(path)], tokenizer, tmp_path)
    assert len(changed) > len(first)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 3


def test_jsonl_line_without_the_text_field_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": DOCS["d1"]}), "", json.dumps({"body": "no text"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for streaming in (False, True):
        with pytest.raises(DataError) as err:
            load([str(path)], tokenizer, tmp_path, streaming=streaming)
        assert err.value.path == path and err.value.line == 3
        assert f"{path}:3" in str(err.value) and "'text'" in str(err.value) and "--text-field" in str(err.value)


def test_text_that_is_not_utf8_names_file_and_line(tokenizer, tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes("\ufeff".encode() + DOCS["d1"].encode() + b"\ncaf\xe9 au lait\n")
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(json.dumps({"text": DOCS["d2"]}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    for path in (text, jsonl):
        for streaming in (False, True):
            with pytest.raises(DataError) as err:
                load([str(path)], tokenizer, tmp_path, streaming=streaming)
            assert err.value.path == path and err.value.line == 2 and "not UTF-8" in str(err.value)
            assert "iconv" in str(err.value)
    text.write_bytes("\ufeff".encode() + DOCS["d1"].encode() + b"\n")  # a byte-order mark is not text
    assert by_doc(load([str(text)], tokenizer, tmp_path))["latin1.txt:1"][0] == ids(tokenizer, DOCS["d1"])[:8]


def test_truncated_gzip_names_the_line_it_stopped_at(tokenizer, tmp_path):
    import gzip

    whole = gzip.compress(("\n".join([DOCS["d1"]] * 2000) + "\n").encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="truncated or damaged") as err:
        load([str(path)], tokenizer, tmp_path)
    assert err.value.path == path and err.value.line > 1


def test_datasets_sources_are_read_file_by_file(tokenizer, tmp_path):
    # a bad row is reported in its own file, with its row number there
    good, bad = tmp_path / "a.csv", tmp_path / "b.csv"
    good.write_text("text\n" + "".join(f'"{DOCS["d1"]}"\n' for _ in range(5)), encoding="utf-8")
    bad.write_text(f'text\n"{DOCS["d2"]}"\n""\n', encoding="utf-8")
    for streaming in (False, True):
        with pytest.raises(DataError) as err:
            load([f"datasets:{tmp_path}/*.csv"], tokenizer, tmp_path, streaming=streaming)
        assert err.value.path == bad and "row 2 " in str(err.value)
    # streamed CSV and text files know their columns only once read
    for path, body in ((tmp_path / "c.csv", f'id,text\nx,"{DOCS["d1"]}"\n'), (tmp_path / "d.txt", DOCS["d1"] + "\n")):
        path.write_text(body, encoding="utf-8")
        streamed = load([f"datasets:{path}"], tokenizer, tmp_path, streaming=True)
        assert [r["input_ids"] for r in streamed] == expected_segments(ids(tokenizer, DOCS["d1"]), 8, 4)


def test_a_saved_data_set_folder_is_left_as_it_was_and_its_cache_reused(tokenizer, tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [DOCS["d1"], DOCS["d2"]]}).save_to_disk(str(folder))
    before = sorted(p.name for p in folder.iterdir())
    first = load([f"datasets:{folder}"], tokenizer, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the user's folder
    again = load([f"datasets:{folder}"], tokenizer, tmp_path)
    assert [r["input_ids"] for r in again] == [r["input_ids"] for r in first]
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def test_a_title_or_id_field_that_nothing_has_is_an_error(tokenizer, tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": v, "ident": k}) + "\n" for k, v in DOCS.items()), encoding="utf-8")
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"no line has the field\(s\) 'headline'") as err:
            load([str(jsonl)], tokenizer, tmp_path, text_field="body", title_field="headline", streaming=streaming)
        assert err.value.path == jsonl and "--title-field" in str(err.value) and "body, ident" in str(err.value)
    # a field some lines have is fine
    assert load([str(jsonl)], tokenizer, tmp_path, text_field="body", id_field="ident")
    csv = tmp_path / "docs.csv"
    csv.write_text("text,source\n" + "".join(f'"{v}",wiki\n' for v in DOCS.values()), encoding="utf-8")
    with pytest.raises(DataError, match="no 'nope' column") as err:
        load([f"datasets:{csv}"], tokenizer, tmp_path, title_field="nope")
    assert "--title-field" in str(err.value)


def test_empty_corpus_missing_file_and_too_short_texts(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        load([str(empty)], tokenizer, tmp_path)
    with pytest.raises(DataError):
        load([str(empty)], tokenizer, tmp_path, streaming=True)
    with pytest.raises(MissingDataError, match="does not exist"):
        load([str(tmp_path / "absent.txt")], tokenizer, tmp_path)
    with pytest.raises(MissingDataError, match="no file matches"):
        load([str(tmp_path / "shards" / "*.jsonl")], tokenizer, tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("a b\nc\n", encoding="utf-8")
    with pytest.raises(DataError, match="none of the 2 documents has 4 tokens"):
        load([str(short)], tokenizer, tmp_path)
    with pytest.raises(DataError, match="no pretraining text"):
        load([], tokenizer, tmp_path)


def test_glob_of_shards(tokenizer, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, text in enumerate(DOCS.values()):
        Path(shards / f"part{i}.txt").write_text(text + "\n", encoding="utf-8")
    docs = by_doc(load([str(shards / "part*.txt")], tokenizer, tmp_path))
    assert set(docs) == {"part0.txt:1", "part1.txt:1"}  # part2 holds "Short text.", too short


@pytest.mark.slow
def test_real_wikitext_and_scifact(tokenizer, tmp_path):
    wiki = load([str(data_root() / "text" / "wikitext-2" / "valid.txt")], tokenizer, tmp_path, segment_length=126,
                min_segment_length=16)
    assert len(wiki) > 2000
    scifact = load(["scifact"], tokenizer, tmp_path, segment_length=126, min_segment_length=16)
    assert len(set(scifact["doc_id"])) > 5000 and max(len(x) for x in scifact["input_ids"]) == 126
