"""Artifact metadata: the typed record, old files, the compatibility rule, the corpus digest."""

from __future__ import annotations

import json
import os

import pytest

from retromem import __version__
from retromem.artifacts import (
    PASSAGE_VECTOR_FIELDS,
    QUERY_FIELDS,
    SCHEMA_VERSION,
    ArtifactMeta,
    CorpusDigest,
    CorpusRef,
    EncoderInfo,
    corpus_ref,
    file_digest,
    file_stamp,
    require_compatible,
)
from retromem.data.passage import Passage
from retromem.errors import DataError, MismatchError

ENCODER = EncoderInfo(model="minilm", model_path="/m", fingerprint="f" * 16, pooling="mean", normalize=True,
                      max_length=256, query_prefix="", passage_prefix="", precision="bf16", dim=384)
PASSAGES = [Passage("d1", "some text", "A title"), Passage("d2", "other text")]


def test_metadata_round_trips_through_flat_json(tmp_path):
    corpus = corpus_ref(PASSAGES, name="toy")
    meta = ArtifactMeta(kind="embeddings", encoder=ENCODER, corpus=corpus, details={"count": 2, "dtype": "float32"})
    meta.write(tmp_path / "meta.json")
    raw = json.loads((tmp_path / "meta.json").read_text())
    assert raw["kind"] == "embeddings" and raw["schema"] == SCHEMA_VERSION and raw["retromem"] == __version__
    assert raw["fingerprint"] == "f" * 16 and raw["count"] == 2                  # flat: old readers still find keys
    assert ArtifactMeta.read(tmp_path / "meta.json", "embeddings") == meta


def test_a_legacy_file_loads_without_a_corpus_digest(tmp_path):
    legacy = {**ENCODER.to_dict(), "count": 2, "dtype": "float32", "corpus": "corpus.jsonl"}
    (tmp_path / "meta.json").write_text(json.dumps(legacy))
    meta = ArtifactMeta.read(tmp_path / "meta.json", "embeddings")
    assert meta.schema == 0 and meta.encoder == ENCODER and meta.details == {"count": 2, "dtype": "float32"}
    assert meta.corpus == CorpusRef(name="corpus.jsonl", count=2, digest=None)
    with pytest.raises(MismatchError, match="older retromem"):
        require_compatible(meta, tmp_path, corpus=corpus_ref(PASSAGES))


def test_another_kind_and_a_newer_layout_are_refused(tmp_path):
    ArtifactMeta(kind="faiss_index", encoder=ENCODER).write(tmp_path / "index.json")
    with pytest.raises(MismatchError, match="metadata of a faiss_index, not of a embeddings"):
        ArtifactMeta.read(tmp_path / "index.json", "embeddings")
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "embeddings", "schema": SCHEMA_VERSION + 1}))
    with pytest.raises(DataError, match="upgrade retromem"):
        ArtifactMeta.read(tmp_path / "meta.json", "embeddings")


def test_the_two_rules_name_what_differs():
    meta = ArtifactMeta(kind="embeddings", encoder=ENCODER)
    query_side = {**ENCODER.to_dict(), "precision": "fp32", "passage_prefix": "passage: ", "query_prefix": "q: "}
    require_compatible(meta, "x", encoder=query_side, fields=QUERY_FIELDS)          # queries may differ there
    with pytest.raises(MismatchError, match=r"passage_prefix: '' != 'passage: '; precision: 'bf16' != 'fp32'"):
        require_compatible(meta, "x", encoder=query_side, fields=PASSAGE_VECTOR_FIELDS)
    with pytest.raises(MismatchError, match=r"pooling: index 'mean' vs query encoder 'cls'"):
        require_compatible(meta, "x", encoder={**ENCODER.to_dict(), "pooling": "cls"}, fields=QUERY_FIELDS,
                           labels=("index", "query encoder"))
    assert set(QUERY_FIELDS) < set(PASSAGE_VECTOR_FIELDS)


@pytest.mark.parametrize("change", [
    lambda ps: [Passage("d1", "some text!", "A title"), ps[1]],          # text
    lambda ps: [Passage("d1", "some text", "Another title"), ps[1]],     # title
    lambda ps: [Passage("d1", "some text A title", ""), ps[1]],          # title moved into the text
    lambda ps: list(reversed(ps)),                                        # order
    lambda ps: ps[:1],                                                    # one fewer
], ids=["text", "title", "title-into-text", "order", "count"])
def test_the_corpus_digest_covers_ids_titles_texts_and_order(change):
    before, after = corpus_ref(PASSAGES), corpus_ref(change(PASSAGES))
    assert before.digest != after.digest
    meta = ArtifactMeta(kind="embeddings", corpus=before)
    require_compatible(meta, "x", corpus=corpus_ref(PASSAGES))
    with pytest.raises(MismatchError, match="another corpus, or the corpus changed"):
        require_compatible(meta, "x", corpus=after)


def test_watching_a_stream_digests_it_as_it_passes():
    digest = CorpusDigest()
    assert [p.id for p in digest.watch(PASSAGES)] == ["d1", "d2"]
    assert digest.count == 2 and digest.hexdigest() == corpus_ref(PASSAGES).digest


def test_the_file_stamp_notices_an_edit(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("a\n")
    ref = CorpusRef(name="c", count=1, digest="d", file=file_stamp(path))
    assert ref.same_file(path)
    path.write_text("b\n")
    os.utime(path, ns=(1, 1))
    assert not ref.same_file(path) and not ref.same_file(None) and not ref.same_file(tmp_path / "none")


def test_file_digest_is_the_content_below_the_limit_and_a_stamp_above(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3000)
    full = file_digest(path)
    assert file_digest(path) == full
    path.write_bytes(b"x" * 2999 + b"y")
    assert file_digest(path) != full
    assert file_digest(path, full_limit=100) != file_digest(path)                 # size/mtime/ends policy above
    assert file_digest(tmp_path / "none").startswith("missing:")
