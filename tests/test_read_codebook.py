"""MEMORY-VQ-style codebook tuning (``read train --tune-codebook``): the reader decodes a pq memory's codes with its
own copy of the codebook, which training moves while the codes and the memory encoder stay fixed; the tuned
codebook is saved with the reader, survives resume, and reads only codes of the codebook it started from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retromem.cli import main
from retromem.errors import ConfigError, MismatchError
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.memory_codecs import make_codec
from retromem.read.batch import ReadItem, collate
from retromem.read.checkpoint import load_reader, memory_info, read_reader_meta, save_reader
from retromem.read.codebook import codebook_digest, pq_centroids, reader_memory_codec, unpack_codes
from retromem.read.memory import LiveMemory, PassageReader
from retromem.read.model import MemoryReader
from retromem.read.predict import predict
from retromem.read.questions import reading_set
from retromem.read.read_options import ReaderPredictConfig
from retromem.read.reader_config import ReaderSpec
from retromem.read.train import train_reader
from retromem.read.train_config import ReaderTrainConfig
from tests.read_fixtures import write_kilt_world
from tests.test_read_train import CrashAt

pytestmark = pytest.mark.usefixtures("restore_logging")
PQ = {"m": 8, "nbits": 4}  # 64-d tiny BERT states: 8 sub-vectors of 8 dimensions, 16 centroids each


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_kilt_world(tmp_path_factory.mktemp("kilt-world"))


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder(EncoderConfig(model=str(tiny_model_dir), precision="fp32"))


@pytest.fixture(scope="module")
def data(world):
    return reading_set(ReaderTrainConfig(task=str(world["claims"]), run=str(world["claims_run"]), passages=3),
                       force_gold=True)


def memory_of(data, encoder, codec="pq", params=PQ, trained_on=None):
    """A layer-1 memory of the task's passages in ``codec``, trained on its states (or on ``trained_on``)."""
    codec = make_codec(codec, encoder.dim, **params)
    if trained_on is not None:
        codec.train(trained_on)
    return LiveMemory(encoder, [data.passages[i] for i in sorted(data.passages)], 1, codec)


@pytest.fixture(scope="module")
def pq_memory(data, encoder):
    return memory_of(data, encoder)


def config(world, tiny_model_dir, out, **overrides):
    values = dict(task=str(world["claims"]), run=str(world["claims_run"]), output_dir=str(out),
                  model=str(tiny_model_dir), live_layers=1, passages=3, batch_size=4, max_steps=4, save_steps=2,
                  logging_steps=1, show_progress=False, precision="fp32", learning_rate=1e-3, tune_codebook=True,
                  codebook_learning_rate=1e-2)
    values.update(overrides)
    return ReaderTrainConfig(**values)


def tuned_reader(tiny_model_dir, memory, tuned=True, **spec):
    """A classification reader (k = 1 of 2) of ``memory``, decoding its codes with its own codebook if ``tuned``."""
    encoder_meta, layer, codec = memory.info()
    info = memory_info(encoder_meta, layer, codec)
    if tuned:
        info.tuned_codebook = codebook_digest(pq_centroids(memory.codec))
    spec = ReaderSpec(encoder=str(tiny_model_dir), num_layers=2, live_layers=1, head="classification",
                      labels=["REFUTES", "SUPPORTS"], memory=info, **spec)
    torch.manual_seed(1)
    reader = MemoryReader.from_encoder(spec, str(tiny_model_dir)).eval()
    if tuned:
        reader.codebook.start_from(memory.codec)
    return reader


def batch_of(reader, memory, data, questions=4):
    source = PassageReader(reader.spec, reader.tokenizer, data.passages, memory)
    items = [ReadItem(q.qid, q.text, tuple(source.read(q.passage_ids)),
                      label=reader.spec.labels.index(q.answers[0])) for q in data.questions[:questions]]
    return collate(reader.spec, reader.tokenizer, items)


def test_the_readers_codebook_decodes_the_codes_as_the_codec_does(tiny_model_dir, pq_memory, data):
    ids = sorted(data.passages)[:4]
    reader = tuned_reader(tiny_model_dir, pq_memory)
    for (codes, _, _), decoded in zip(pq_memory.gather_codes(ids), pq_memory.gather(ids)):
        sub = unpack_codes(codes, **PQ)
        assert sub.shape == (len(codes), 8) and sub.max() < 16
        with torch.no_grad():
            mine = reader.codebook(torch.from_numpy(sub)).numpy()
        np.testing.assert_array_equal(mine, decoded.vectors)
    # the whole reader: codes through its codebook give the logits of decoded vectors through an untuned twin
    tuned, plain = tuned_reader(tiny_model_dir, pq_memory), tuned_reader(tiny_model_dir, pq_memory, tuned=False)
    coded, decoded = batch_of(tuned, pq_memory, data), batch_of(plain, pq_memory, data)
    assert "memory_codes" in coded and "memory" not in coded and "memory" in decoded
    with torch.no_grad():
        torch.testing.assert_close(tuned(**coded)["logits"], plain(**decoded)["logits"], rtol=0, atol=1e-6)


def test_training_moves_the_centroids_and_the_live_layers_and_nothing_below(tiny_model_dir, pq_memory, data):
    # (the question encoder frozen: with it tuned, the lower layers get the question's gradient, never the memory's)
    reader = tuned_reader(tiny_model_dir, pq_memory, tune_question_encoder=False).train()
    batch = batch_of(reader, pq_memory, data, questions=8)
    reader(**batch)["loss"].backward()
    grad = reader.codebook.centroids.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for p in (*reader.encoder.embeddings.parameters(), *reader.layers[0].parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reader.layers[1].parameters())
    # only the codebook trained (no dropout): the loss on the batch falls, below the labels' entropy it starts at
    reader.eval()
    for p in reader.parameters():
        p.requires_grad_(False)
    reader.codebook.centroids.requires_grad_(True)
    optimizer = torch.optim.Adam([reader.codebook.centroids], lr=0.1)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = reader(**batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert torch.equal(reader.codebook.initial, torch.from_numpy(pq_centroids(pq_memory.codec)))


def test_a_trained_reader_saves_its_codebook_and_loads_to_the_same_outputs(world, tiny_model_dir, pq_memory, data,
                                                                           tmp_path):
    final = train_reader(config(world, tiny_model_dir, tmp_path / "run", tune_question_encoder=False), memory=pq_memory)
    spec = read_reader_meta(final).details["spec"]
    assert spec["tune_question_encoder"] is False
    assert spec["memory"]["tuned_codebook"] == codebook_digest(pq_centroids(pq_memory.codec))
    weights = load_file(final / "model.safetensors")
    start = torch.from_numpy(pq_centroids(pq_memory.codec))
    assert torch.equal(weights["codebook.initial"], start)
    assert not torch.allclose(weights["codebook.centroids"], start)  # tuned
    base = load_file(tiny_model_dir / "model.safetensors")
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert torch.equal(weights[f"encoder.{name}"], base[name])  # the question encoder was frozen
    assert not torch.equal(weights["encoder.encoder.layer.1.attention.self.query.weight"],
                           base["encoder.layer.1.attention.self.query.weight"])
    reader = load_reader(final)
    assert reader.spec.tuned_codebook
    batch = batch_of(reader, pq_memory, data)
    save_reader(reader, tmp_path / "again")
    again = load_reader(tmp_path / "again")
    with torch.no_grad():
        logits = reader(**batch)["logits"]
        assert torch.equal(again(**batch)["logits"], logits)
        plain = tuned_reader(tiny_model_dir, pq_memory, tuned=False)
        plain.load_state_dict({k: v for k, v in reader.state_dict().items() if not k.startswith("codebook.")})
        untuned = plain(**batch_of(plain, pq_memory, data))["logits"]
    assert not torch.allclose(untuned, logits)  # the tuned centroids are what it reads
    # predict reads through them too
    cfg = ReaderPredictConfig(task=str(world["claims"]), run=str(world["claims_run"]), passages=3,
                              show_progress=False)
    answers = {p.id: p.answer for p in predict(cfg, memory=pq_memory, reader=again).predictions}
    expected = [reader.spec.labels[i] for i in logits.argmax(-1).tolist()]
    assert [answers[q.qid] for q in data.questions[:4]] == expected


def test_a_tuned_reader_reads_only_codes_of_its_codebook(tiny_model_dir, pq_memory, data, encoder, world):
    reader = tuned_reader(tiny_model_dir, pq_memory)
    cfg = ReaderPredictConfig(task=str(world["claims"]), run=str(world["claims_run"]), passages=3,
                              show_progress=False)
    with pytest.raises(MismatchError, match=r"is in codec .*'m': 4.*trained on codec .*'m': 8"):
        predict(cfg, memory=memory_of(data, encoder, params={"m": 4, "nbits": 4}), reader=reader)
    ids = sorted(data.passages)
    sample = np.concatenate([r.vectors for r in pq_memory.gather(ids)])[::2]
    other = memory_of(data, encoder, trained_on=sample)  # the same codec, centroids trained on another sample
    assert other.info()[2]["params"] == pq_memory.info()[2]["params"]
    with pytest.raises(MismatchError, match="coded with another pq codebook"):
        predict(cfg, memory=other, reader=reader)
    # a memory coded on the fly with the reader's starting codebook has the stored memory's very codes
    codec = reader_memory_codec(reader)
    recoded = LiveMemory.from_states(*_states_of(pq_memory, ids), codec)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(recoded.gather_codes(ids), pq_memory.gather_codes(ids)))


def _states_of(memory, ids):
    """(encoder meta, ids, states, token ids, layer) of a live memory, its states decoded (pq codes are a fixed
    point: coding a decoded vector gives back its code)."""
    meta, layer, _ = memory.info()
    rows = memory.gather(ids)
    return meta, ids, [r.vectors for r in rows], [r.token_ids for r in rows], layer


def test_tune_codebook_refusals(world, tiny_model_dir, data, encoder, tmp_path):
    with pytest.raises(ConfigError, match="codec fp16"):
        train_reader(config(world, tiny_model_dir, tmp_path / "a"), memory=memory_of(data, encoder, "fp16", {}))
    with pytest.raises(ConfigError, match=r"codec opq\(m=8,nbits=4\)"):
        train_reader(config(world, tiny_model_dir, tmp_path / "b"), memory=memory_of(data, encoder, "opq"))
    with pytest.raises(ConfigError, match="--k 2 re-encodes the passage text"):
        train_reader(config(world, tiny_model_dir, tmp_path / "c", live_layers=2))
    with pytest.raises(ConfigError, match="give --tune-codebook too"):
        train_reader(config(world, tiny_model_dir, tmp_path / "d", tune_codebook=False))


def test_a_resumed_tuning_run_ends_with_the_uninterrupted_runs_codebook(world, tiny_model_dir, pq_memory, tmp_path):
    settings = dict(max_steps=4, save_steps=2)
    straight = train_reader(config(world, tiny_model_dir, tmp_path / "straight", **settings), memory=pq_memory)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_reader(config(world, tiny_model_dir, crashed, **settings), memory=pq_memory, callbacks=[CrashAt(3)])
    assert "codebook.centroids" in load_file(crashed / "checkpoint-2" / "model.safetensors")
    resumed = train_reader(config(world, tiny_model_dir, crashed, **settings), memory=pq_memory)
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert torch.equal(actual["codebook.centroids"], expected["codebook.centroids"])
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_the_command_trains_predicts_and_evaluates_a_tuned_reader(world, tiny_model_dir, tmp_path, capsys):
    common = ["--task", str(world["claims"]), "--run", str(world["claims_run"]), "--passages", "3"]
    memory = tmp_path / "memory"
    assert main(["read", "memory", *common, "--model", str(tiny_model_dir), "--k", "1", "--force-gold",
                 "--codec", "pq:m=8,nbits=4", "--output", str(memory)]) == 0
    assert main(["read", "train", *common, "--memory", str(memory), "--model", str(tiny_model_dir), "--k", "1",
                 "--tune-codebook", "--codebook-lr", "0.01", "--output", str(tmp_path / "run"), "--max-steps", "2",
                 "--batch-size", "4", "--precision", "fp32"]) == 0
    final = tmp_path / "run" / "final"
    assert load_reader(final).spec.tuned_codebook
    out = tmp_path / "pred.jsonl"
    assert main(["read", "predict", *common, "--memory", str(memory), "--reader", str(final), "--output",
                 str(out)]) == 0
    assert len(out.read_text().splitlines()) == 16
    assert main(["eval", "kilt", "--task", str(world["claims"]), "--model", str(tiny_model_dir), "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--output", str(tmp_path / "eval"), "--reader", str(final),
                 "--reader-passages", "3"]) == 0
    results = json.loads((tmp_path / "eval" / "reader" / "results.json").read_text())
    assert results["metadata"]["memory"] == "computed for the retrieved passages"  # coded with the reader's codebook
    assert main(["read", "predict", *common, "--passages", "2", "--memory", str(memory), "--reader", str(final),
                 "--output", str(tmp_path / "reranked.jsonl"), "--rerank", "memory", "--rerank-depth", "3"]) == 0
    # another memory of these passages (e.g. a dev set's): coded with a codebook of its own it is refused, coded with
    # the reader's (--codebook-of) it is read, to the very predictions of the memory the reader was trained on
    fewer = ["--task", str(world["claims"]), "--run", str(world["claims_run"]), "--passages", "2", "--limit", "4"]
    capsys.readouterr()
    for name, extra in (("own", ["--codec", "pq:m=8,nbits=4"]), ("readers", ["--codebook-of", str(final)])):
        assert main(["read", "memory", *fewer, "--model", str(tiny_model_dir), "--k", "1", *extra, "--output",
                     str(tmp_path / name)]) == 0
    assert main(["read", "predict", *fewer, "--memory", str(tmp_path / "own"), "--reader", str(final), "--output",
                 str(tmp_path / "own.jsonl")]) == 2
    assert "coded with another pq codebook" in capsys.readouterr().err
    for name, memory_dir in (("readers", tmp_path / "readers"), ("trained-on", memory)):
        assert main(["read", "predict", *fewer, "--memory", str(memory_dir), "--reader", str(final), "--output",
                     str(tmp_path / f"{name}.jsonl")]) == 0
    assert (tmp_path / "readers.jsonl").read_text() == (tmp_path / "trained-on.jsonl").read_text()
    assert main(["read", "memory", *fewer, "--model", str(tiny_model_dir), "--k", "0", "--codebook-of", str(final),
                 "--output", str(tmp_path / "k0")]) == 2
    assert "that reader reads layer 1 (--k 1), not layer 2" in capsys.readouterr().err
