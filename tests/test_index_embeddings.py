"""Embeddings on disk: the files, resuming an interrupted encode exactly, refusing another encoder or corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retromem import __version__
from retromem.artifacts import SCHEMA_VERSION, corpus_ref
from retromem.data.beir import iter_corpus
from retromem.errors import MismatchError, MissingDataError
from retromem.index.embeddings import EmbeddingSet, encode_corpus, is_complete
from retromem.index.encoder import Encoder, EncoderConfig

CHUNK = 6          # the tiny corpus has 40 passages: 7 chunks, the last one of 4


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> Encoder:
    return Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", precision="fp32", device="cpu",
                                 batch_size=4))


@pytest.fixture()
def counting(encoder, monkeypatch):
    """Count ``encode_passages`` calls; ``fail_after`` makes the call after that many raise (an interruption)."""
    state = {"calls": 0, "fail_after": None}
    real = Encoder.encode_passages

    def wrapped(self, passages, show_progress=False):
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise Interrupted(f"killed after {state['calls']} chunks")
        state["calls"] += 1
        return real(self, passages, show_progress=show_progress)

    monkeypatch.setattr(Encoder, "encode_passages", wrapped)
    return state


def corpus(tiny_beir):
    return iter_corpus(tiny_beir / "corpus.jsonl")


def test_encode_writes_vectors_ids_and_metadata(tiny_beir, encoder, tmp_path):
    out = tmp_path / "emb"
    result = encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK, corpus_name="tiny")
    passages = list(corpus(tiny_beir))
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "encoder.json", "ids.txt", "meta.json"]
    assert (out / "ids.txt").read_text().splitlines() == [p.id for p in passages] == result.ids
    meta = json.loads((out / "meta.json").read_text())
    corpus_meta = {"name": "tiny", "count": 40, "digest": corpus_ref(passages).digest, "file": None}
    assert meta == dict(encoder.metadata(), count=40, dtype="float32", corpus=corpus_meta, kind="embeddings",
                        schema=SCHEMA_VERSION, retromem=__version__)
    assert json.loads((out / "encoder.json").read_text()) == dict(encoder.metadata(), chunk_size=CHUNK,
                                                                      batch_size=encoder.config.batch_size)
    stored = np.load(out / "embeddings.npy")
    assert stored.dtype == np.float32 and stored.shape == (40, 64)
    # each chunk is encoded on its own: the file holds exactly those vectors, in corpus order
    expected = np.concatenate([encoder.encode_passages(passages[i:i + CHUNK]) for i in range(0, 40, CHUNK)])
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_allclose(stored, encoder.encode_passages(passages), atol=1e-5, rtol=0)

    loaded = EmbeddingSet.load(out)
    assert isinstance(loaded.vectors, np.memmap) and loaded.dim == 64 and loaded.meta == meta
    np.testing.assert_array_equal(loaded.vectors, stored)


def test_keep_chunks_leaves_the_shards(tiny_beir, encoder, tmp_path):
    encode_corpus(corpus(tiny_beir), encoder, tmp_path / "emb", chunk_size=CHUNK, keep_chunks=True)
    names = sorted(p.name for p in (tmp_path / "emb" / "chunks").iterdir())
    assert names == [f"chunk-{i:06d}.{ext}" for i in range(7) for ext in ("ids", "npy", "sha256")]
    assert len((tmp_path / "emb" / "chunks" / "chunk-000006.ids").read_text().splitlines()) == 4


def test_an_interrupted_encode_resumes_and_gives_identical_vectors(tiny_beir, encoder, tmp_path, counting):
    whole = encode_corpus(corpus(tiny_beir), encoder, tmp_path / "whole", chunk_size=CHUNK)
    assert counting["calls"] == 7

    out = tmp_path / "resumed"
    counting.update(calls=0, fail_after=3)
    with pytest.raises(Interrupted):
        encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    assert not is_complete(out)
    finished = sorted(p.name for p in (out / "chunks").iterdir())
    assert finished == [f"chunk-{i:06d}.{ext}" for i in range(3) for ext in ("ids", "npy", "sha256")]   # no half files
    with pytest.raises(MissingDataError, match="run it again to resume"):
        EmbeddingSet.load(out)

    counting.update(calls=0, fail_after=None)
    resumed = encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    assert counting["calls"] == 4                                   # only the 4 unfinished chunks
    assert resumed.ids == whole.ids
    assert np.array_equal(np.asarray(resumed.vectors), np.asarray(whole.vectors))

    counting["calls"] = 0
    again = encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)   # finished: nothing to encode
    assert counting["calls"] == 0 and np.array_equal(np.asarray(again.vectors), np.asarray(whole.vectors))


def test_a_folder_made_by_another_encoder_is_refused(tiny_beir, tiny_model_dir, encoder, tmp_path, counting):
    cls = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="cls", precision="fp32", device="cpu"))
    finished, partial = tmp_path / "finished", tmp_path / "partial"
    encode_corpus(corpus(tiny_beir), encoder, finished, chunk_size=CHUNK)
    counting.update(calls=0, fail_after=2)
    with pytest.raises(Interrupted):
        encode_corpus(corpus(tiny_beir), encoder, partial, chunk_size=CHUNK)
    counting.update(calls=0, fail_after=None)
    for folder in (finished, partial):
        with pytest.raises(MismatchError, match=r"different encoder \(pooling: 'mean' != 'cls'\)") as err:
            encode_corpus(corpus(tiny_beir), cls, folder, chunk_size=CHUNK)
        assert str(folder) in str(err.value)
    assert counting["calls"] == 0


def test_a_different_precision_is_refused_rather_than_mixed(tiny_beir, tiny_model_dir, encoder, tmp_path, counting):
    counting["fail_after"] = 2
    with pytest.raises(Interrupted):
        encode_corpus(corpus(tiny_beir), encoder, tmp_path / "emb", chunk_size=CHUNK)
    counting["fail_after"] = None
    bf16 = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", precision="bf16", device="cpu"))
    with pytest.raises(MismatchError, match="precision: 'fp32' != 'bf16'"):
        encode_corpus(corpus(tiny_beir), bf16, tmp_path / "emb", chunk_size=CHUNK)


def _rewrite_corpus(path, change):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


@pytest.mark.parametrize("change, bad_chunk", [
    (lambda lines: [lines[1], lines[0]] + lines[2:], 0),                      # reordered inside chunk 0
    (lambda lines: lines[:-1], 6),                                            # last passage dropped
    (lambda lines: lines + [json.dumps({"_id": "new", "title": "", "text": "added"})], 6),   # one added
], ids=["reordered", "shorter", "longer"])
def test_a_corpus_changed_after_an_interruption_is_detected(tiny_beir, encoder, tmp_path, change, bad_chunk):
    out = tmp_path / "emb"
    encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK, keep_chunks=True)
    (out / "meta.json").unlink()                 # as if killed between the last chunk and the merge
    (out / "embeddings.npy").unlink()
    _rewrite_corpus(tiny_beir / "corpus.jsonl", change)
    with pytest.raises(MismatchError, match=rf"chunk-{bad_chunk:06d}\.ids does not hold the ids .* the corpus changed"):
        encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)


@pytest.mark.parametrize("change", [
    lambda lines: [lines[1], lines[0]] + lines[2:],
    lambda lines: lines[:-1],
    lambda lines: lines + [json.dumps({"_id": "new", "title": "", "text": "added"})],
], ids=["reordered", "shorter", "longer"])
def test_a_corpus_changed_after_a_finished_encode_is_detected(tiny_beir, encoder, tmp_path, counting, change):
    out = tmp_path / "emb"
    encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    _rewrite_corpus(tiny_beir / "corpus.jsonl", change)
    counting["calls"] = 0
    with pytest.raises(MismatchError, match="embeddings of another corpus"):
        encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    assert counting["calls"] == 0


def test_inconsistent_files_are_refused_on_load(tiny_beir, encoder, tmp_path):
    out = tmp_path / "emb"
    encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    ids = (out / "ids.txt").read_text().splitlines()
    (out / "ids.txt").write_text("\n".join(ids[:-1]) + "\n")
    with pytest.raises(MismatchError, match="39 ids, 40 vectors"):
        EmbeddingSet.load(out)


def test_no_temporary_files_are_left_behind(tiny_beir, encoder, tmp_path):
    out = tmp_path / "emb"
    encode_corpus(corpus(tiny_beir), encoder, out, chunk_size=CHUNK)
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
