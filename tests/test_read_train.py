"""Reader training: a short run on a tiny KILT task over a live memory, resume after a crash with the
uninterrupted run's weights, and the refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from retromem.errors import ConfigError, DataError, MismatchError, MissingDataError
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.memory_codecs import make_codec
from retromem.pretrain.trainer_utils import find_resume_checkpoint
from retromem.read.checkpoint import load_reader
from retromem.read.memory import LiveMemory
from retromem.read.questions import reading_set
from retromem.read.train import train_reader
from retromem.read.train_config import ReaderTrainConfig
from tests.read_fixtures import write_kilt_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_kilt_world(tmp_path_factory.mktemp("kilt-world"))


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder(EncoderConfig(model=str(tiny_model_dir), precision="fp32"))


def config(world, tiny_model_dir, out, task="claims", **overrides):
    values = dict(task=str(world[task]), run=str(world[f"{task}_run"]), output_dir=str(out), model=str(tiny_model_dir),
                  live_layers=1, passages=3, batch_size=4, max_steps=4, save_steps=2, logging_steps=1,
                  show_progress=False, precision="fp32", learning_rate=1e-3)
    values.update(overrides)
    return ReaderTrainConfig(**values)


def live_memory(world, encoder, layer, codec="fp16", task="claims"):
    cfg = ReaderTrainConfig(task=str(world[task]), run=str(world[f"{task}_run"]), passages=3)
    data = reading_set(cfg, force_gold=True)
    return LiveMemory(encoder, list(data.passages.values()), layer, make_codec(codec, encoder.dim))


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated crash at step {self.step}")


def test_a_short_run_saves_a_reader_with_its_memory_and_loss_plot(world, tiny_model_dir, encoder, tmp_path):
    memory = live_memory(world, encoder, 1)
    final = train_reader(config(world, tiny_model_dir, tmp_path / "run"), memory=memory)
    record = json.loads((final / "reader_run.json").read_text())
    assert record["global_step"] == 4 and record["data"]["questions"] == 16 and (final / "training_loss.png").exists()
    reader = load_reader(final)
    assert reader.spec.head == "classification" and reader.spec.labels == ["REFUTES", "SUPPORTS"]
    assert reader.spec.memory.layer == 1 and reader.spec.memory.codec["name"] == "fp16"
    assert reader.spec.memory.encoder["fingerprint"] == encoder.fingerprint


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(world, tiny_model_dir, encoder, tmp_path):
    memory = live_memory(world, encoder, 1)
    settings = dict(max_steps=6, save_steps=3)
    straight = train_reader(config(world, tiny_model_dir, tmp_path / "straight", **settings), memory=memory)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_reader(config(world, tiny_model_dir, crashed, **settings), memory=memory, callbacks=[CrashAt(4)])
    assert find_resume_checkpoint(crashed).name == "checkpoint-3" and not (crashed / "final").exists()
    resumed = train_reader(config(world, tiny_model_dir, crashed, **settings), memory=memory)
    assert json.loads((resumed / "reader_run.json").read_text())["resumed_from"].endswith("checkpoint-3")
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    start = load_file(crashed / "checkpoint-3" / "model.safetensors")
    assert not all(torch.equal(start[k], expected[k]) for k in start)


def test_full_re_encoding_and_the_span_head_train_without_a_memory_folder(world, tiny_model_dir, tmp_path):
    final = train_reader(config(world, tiny_model_dir, tmp_path / "span", task="qa", live_layers=2, max_steps=2))
    reader = load_reader(final)
    assert reader.spec.head == "span" and reader.spec.full and reader.spec.memory is None


def test_refusals(world, tiny_model_dir, encoder, tmp_path):
    with pytest.raises(ConfigError, match="--k 3: the encoder .* has 2 layers"):
        train_reader(config(world, tiny_model_dir, tmp_path / "a", live_layers=3))
    with pytest.raises(ConfigError, match="give --memory"):
        train_reader(config(world, tiny_model_dir, tmp_path / "b"))
    with pytest.raises(MismatchError, match="holds layer 2.*reads layer 1"):
        train_reader(config(world, tiny_model_dir, tmp_path / "c"), memory=live_memory(world, encoder, 2))
    with pytest.raises(DataError, match="span head cannot express"):
        train_reader(config(world, tiny_model_dir, tmp_path / "d", head="span", live_layers=2))
    partial = live_memory(world, encoder, 1)
    del partial._codes[sorted(partial._codes)[0]]
    with pytest.raises(DataError, match=r"1 retrieved passages are not in the memory \(e.g. P0#0\)"):
        train_reader(config(world, tiny_model_dir, tmp_path / "e"), memory=partial)


def test_refusals_name_the_line_and_the_way_out(world, tiny_model_dir, encoder, tmp_path):
    # a memory without the gold passages training forces in
    one = dict(passages=1)
    cfg = ReaderTrainConfig(task=str(world["claims"]), run=str(world["claims_run"]), passages=1)
    retrieved = reading_set(cfg).passages
    forced = reading_set(cfg, force_gold=True)
    assert forced.forced > 0
    memory = LiveMemory(encoder, list(retrieved.values()), 1, make_codec("fp16", encoder.dim))
    with pytest.raises(DataError, match=r"gold passages forced in .*read memory --force-gold.*--no-force-gold"):
        train_reader(config(world, tiny_model_dir, tmp_path / "gold", **one), memory=memory)
    # a memory of other text under the same passage ids (another corpus or passage cut)
    other = [dataclasses.replace(p, text=p.text[::-1]) for p in forced.passages.values()]
    with pytest.raises(MismatchError, match="is not its text's tokens.*--passage-words"):
        train_reader(config(world, tiny_model_dir, tmp_path / "cut", **one),
                     memory=LiveMemory(encoder, other, 1, make_codec("fp16", encoder.dim)))
    # a generative head over a question without an answer: the task's line is named
    lines = world["qa"].read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "output": [{"answer": "  "}]})
    task = tmp_path / "qa-blank-kilt.jsonl"
    task.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"qa-blank-kilt.jsonl:3: 1 question\(s\) have no answer to learn from"):
        train_reader(dataclasses.replace(config(world, tiny_model_dir, tmp_path / "gen", task="qa", head="generative",
                                                live_layers=2), task=str(task), corpus=str(world["source"])))


def test_a_resumed_run_must_keep_the_answer_length(world, tiny_model_dir, encoder, tmp_path):
    memory = live_memory(world, encoder, 1)
    train_reader(config(world, tiny_model_dir, tmp_path / "run", max_steps=2, save_steps=2), memory=memory)
    with pytest.raises(MismatchError, match="max_answer_length: 32 in that run, 8 now"):
        train_reader(config(world, tiny_model_dir, tmp_path / "run", max_steps=4, save_steps=2, max_answer_length=8),
                     memory=memory)


def test_a_head_starts_from_another_readers_of_any_k_and_a_misfit_is_refused(world, tiny_model_dir, encoder,
                                                                             tmp_path):
    from retromem.read.checkpoint import start_head_from
    from retromem.read.model import MemoryReader

    full = train_reader(config(world, tiny_model_dir, tmp_path / "full", live_layers=2, max_steps=2))
    trained = load_file(full / "model.safetensors")
    memory = live_memory(world, encoder, 1)
    final = train_reader(config(world, tiny_model_dir, tmp_path / "k1", init_head=str(full), max_steps=1,
                                learning_rate=1e-12, head_learning_rate=1e-12, warmup_ratio=0.0), memory=memory)
    started = load_file(final / "model.safetensors")
    heads = [name for name in trained if name.startswith("head.")]
    assert heads and all(torch.allclose(started[n], trained[n], atol=1e-6) for n in heads)
    fresh = train_reader(config(world, tiny_model_dir, tmp_path / "fresh", max_steps=1, learning_rate=1e-12,
                                head_learning_rate=1e-12, warmup_ratio=0.0), memory=memory)
    assert not all(torch.allclose(load_file(fresh / "model.safetensors")[n], trained[n], atol=1e-6) for n in heads)
    span = train_reader(config(world, tiny_model_dir, tmp_path / "span", task="qa", live_layers=2, max_steps=1))
    spec = load_reader(final).spec
    with pytest.raises(MismatchError, match="has a span head, and this reader a classification head"):
        start_head_from(MemoryReader.from_encoder(spec, str(tiny_model_dir)), span)
    other = dataclasses.replace(spec, labels=["NOT ENOUGH INFO", "SUPPORTS"])
    with pytest.raises(MismatchError, match=r"trained on the labels \['REFUTES', 'SUPPORTS'\]"):
        start_head_from(MemoryReader.from_encoder(other, str(tiny_model_dir)), full)
    with pytest.raises(MissingDataError, match="is not a reader folder"):
        start_head_from(MemoryReader.from_encoder(spec, str(tiny_model_dir)), tmp_path)
