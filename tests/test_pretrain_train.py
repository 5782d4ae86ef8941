"""The pretraining driver: a short run, bf16 autocast on CPU, checkpoints, resume after a kill, errors."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertConfig, TrainerCallback

from retromem.device import cpu_supports_bf16, resolve_precision
from retromem.errors import MismatchError, RetromemError
from retromem.model_paths import resolve_model_path
from retromem.pretrain.model import PretrainModel
from retromem.pretrain.train import (
    PretrainConfig,
    _one_device_without_launcher,
    _refuse_changed_run,
    pretrain,
    save_final,
)
from retromem.pretrain.trainer_utils import find_resume_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A folder with a tiny random BERT config and the MiniLM tokenizer (trained from scratch)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               vocab_size=len(tokenizer), max_position_embeddings=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """200 lines of 20-60 words from a small vocabulary: plain text, one document a line."""
    words = ["the", "lobster", "sea", "claw", "shell", "ocean", "species", "blue", "red", "game", "battle", "unit",
             "squad", "map", "city", "river", "north", "south", "early", "late", "history", "king", "war", "peace",
             "music", "album", "song", "record", "chart", "band", "tour", "film"]
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(200)),
                    encoding="utf-8")
    return str(path)


def make_config(tiny_model, corpus, output_dir, **overrides) -> PretrainConfig:
    values = dict(data=[corpus], output_dir=str(output_dir), model=tiny_model, from_scratch=True,
                  objective="retromae+bow", max_length=32, per_device_batch_size=4, max_steps=3, save_steps=100,
                  logging_steps=1, learning_rate=1e-3, warmup=0, precision="fp32", show_progress=False,
                  cache_dir=str(Path(output_dir).parent / "text-cache"))
    values.update(overrides)
    return PretrainConfig(**values)


def test_short_run_logs_components_and_saves_a_loadable_encoder(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    config = make_config(tiny_model, corpus, out, gradient_accumulation_steps=2, save_steps=3,
                         report_to="tensorboard")
    final = pretrain(config)

    assert final == out / "final"
    run = json.loads((final / "training_run.json").read_text())
    assert run["global_step"] == 3 and run["precision"] == "fp32"
    assert torch.isfinite(torch.tensor(run["metrics"]["train_loss"]))
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:  # the components are logged beside the total
        assert {"loss_mlm", "loss_retromae", "loss_bow"} <= set(entry)
        assert all(torch.isfinite(torch.tensor(entry[k])) for k in ("loss", "loss_mlm", "loss_retromae", "loss_bow"))
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/loss_mlm", "train/loss_retromae", "train/loss_bow"} <= set(events.Tags()["scalars"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folders left

    encoder = AutoModel.from_pretrained(final)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        hidden = encoder(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, 6, 64) and torch.isfinite(hidden).all()
    # final/ holds the trained weights: the same as the checkpoint of the last step, not the initial ones
    trained = load_file(final / "model.safetensors")
    checkpoint = load_file(out / "checkpoint-3" / "model.safetensors")
    assert trained.keys() == checkpoint.keys() and all(torch.equal(trained[k], checkpoint[k]) for k in trained)
    for folder in (final, out / "checkpoint-3"):  # final and checkpoints continue with their heads
        reloaded = PretrainModel.from_pretrained(folder)
        assert "retromae" in reloaded.objective and "bow" in reloaded.objective

    # pretraining can go on from final/: the heads come along instead of starting fresh
    probe = HeadsProbe()
    pretrain(make_config(tiny_model, corpus, tmp_path / "again", model=str(final), from_scratch=False, max_steps=1),
             callbacks=[probe])
    saved_heads = load_file(final / "pretrain_heads.safetensors")
    assert saved_heads.keys() == probe.heads.keys()
    assert all(torch.equal(probe.heads[k], saved_heads[k]) for k in saved_heads)


class HeadsProbe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        state = {**{f"mlm_head.{k}": v for k, v in model.mlm_head.state_dict().items()},
                 **{f"heads.{k}": v for k, v in model.heads.state_dict().items()}}
        self.heads = {k: v.detach().clone() for k, v in state.items()}


def test_streaming_text_with_pairs_of_spans(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    final = pretrain(make_config(tiny_model, corpus, out, streaming=True, objective="cotmae", max_steps=2,
                                 save_steps=2))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss_cotmae" in entry] == [1, 2]
    assert json.loads((final / "training_run.json").read_text())["segments"] is None  # streamed: never counted
    assert not (tmp_path / "text-cache").exists()  # streaming tokenises on the fly, caches nothing


class AutocastProbe(TrainerCallback):
    """Record the dtype of a linear layer's output during training."""

    def __init__(self):
        self.dtypes = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        layer = model.encoder.encoder.layer[0].intermediate.dense
        layer.register_forward_hook(lambda module, inputs, output: self.dtypes.add(output.dtype))


def test_bf16_autocasts_on_cpu(tiny_model, corpus, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks CPU autocast")
    probe = AutocastProbe()
    pretrain(make_config(tiny_model, corpus, tmp_path / "run", precision="bf16", max_steps=1, objective="bow"),
             callbacks=[probe])
    assert probe.dtypes == {torch.bfloat16}
    assert resolve_precision("auto") == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(RetromemError, match="fp16 mixed precision needs a GPU"):
        resolve_precision("fp16")


def test_training_logs_go_to_logging_not_stdout(tiny_model, corpus, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="retromem.pretrain.train"):
        pretrain(make_config(tiny_model, corpus, tmp_path / "run", max_steps=2, objective="bow", show_progress=True))
    assert "'loss'" not in capsys.readouterr().out  # the progress bar no longer tqdm.write()s every log dict
    logged = [r.getMessage() for r in caplog.records if r.name == "retromem.pretrain.train"]
    assert [m.split(":")[0] for m in logged if "loss_bow" in m] == ["step 1", "step 2"]


RUNNER = textwrap.dedent("""
    import json, sys
    from retromem.pretrain.train import PretrainConfig, pretrain
    pretrain(PretrainConfig.from_dict(json.load(open(sys.argv[1]))))
""")


class ResumeProbe(TrainerCallback):
    """Snapshot the state training starts from, then stop after one step."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.begin_step = state.global_step
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())  # state_dict() holds live tensors
        self.encoder_state = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True
        return control


def test_resume_after_kill_continues_from_the_last_checkpoint(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    config = make_config(tiny_model, corpus, out, max_steps=500, save_steps=2, save_total_limit=2,
                         objective="retromae")
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.__dict__), encoding="utf-8")
    (tmp_path / "runner.py").write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while find_resume_checkpoint(out) is None:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (out / "final").exists()

    checkpoint = find_resume_checkpoint(out)  # the newest complete one (a later one may be half-written)
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert step >= 2 and step % 2 == 0
    saved_optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    saved_encoder = load_file(checkpoint / "model.safetensors")

    probe = ResumeProbe()
    final = pretrain(config, callbacks=[probe])

    assert probe.begin_step == step
    assert_same_state(probe.optimizer_state, saved_optimizer)
    assert saved_optimizer["state"], "the checkpoint's optimizer has moments to restore"
    assert all(torch.equal(probe.encoder_state[k], saved_encoder[k]) for k in saved_encoder)
    run = json.loads((final / "training_run.json").read_text())
    assert run["global_step"] == step + 1 and run["resumed_from"] == str(checkpoint)
    assert [c for c in out.glob("checkpoint-*") if int(c.name.split("-")[1]) > step + 1] == []


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated crash at step {self.step}")


@pytest.mark.parametrize("objective", ["retromae+bow", "cotmae"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_model, corpus, tmp_path, objective):
    # masks are drawn per batch from the seed and the batch's tokens, not from the global generator, which the
    # trainer restores only after fetching the next batches: so a resume masks (and drops out) as the run did
    settings = dict(max_steps=6, save_steps=3, objective=objective, learning_rate=3e-3)
    straight = pretrain(make_config(tiny_model, corpus, tmp_path / "straight", **settings))
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        pretrain(make_config(tiny_model, corpus, crashed, **settings), callbacks=[CrashAt(4)])
    assert find_resume_checkpoint(crashed).name == "checkpoint-3" and not (crashed / "final").exists()
    resumed = pretrain(make_config(tiny_model, corpus, crashed, **settings))
    assert json.loads((resumed / "training_run.json").read_text())["resumed_from"].endswith("checkpoint-3")
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    start = load_file(crashed / "checkpoint-3" / "model.safetensors")
    assert not all(torch.equal(start[k], expected[k]) for k in start)  # and steps 4-6 did train


def test_save_and_logging_intervals_changed_on_resume_are_used(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pretrain(make_config(tiny_model, corpus, out, max_steps=12, save_steps=3, logging_steps=1),
                 callbacks=[CrashAt(4)])
    final = pretrain(make_config(tiny_model, corpus, out, max_steps=12, save_steps=5, logging_steps=4,
                                 save_total_limit=None))
    assert sorted(int(c.name.split("-")[1]) for c in out.glob("checkpoint-*")) == [3, 5, 10, 12]  # and the last
    assert (final / "model.safetensors").exists()
    history = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h and h["step"] > 3] == [4, 8, 12]


def assert_same_state(actual, expected):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(actual.cpu(), expected.cpu())
    elif isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            assert_same_state(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_state(a, e)
    else:
        assert actual == expected


def fake_checkpoint(folder: Path, step: int | None, corrupt: bool = False) -> None:
    folder.mkdir(parents=True)
    if corrupt:
        (folder / "trainer_state.json").write_text('{"global_step": ', encoding="utf-8")
    elif step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")


def test_only_complete_checkpoints_are_resumed(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-2", 2)
    fake_checkpoint(tmp_path / "checkpoint-10", 10)
    fake_checkpoint(tmp_path / "checkpoint-12", None)  # killed before trainer_state.json was written
    fake_checkpoint(tmp_path / "checkpoint-14", 14, corrupt=True)  # killed while writing it
    (tmp_path / "checkpoint-x").mkdir()
    assert find_resume_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert find_resume_checkpoint(tmp_path / "absent") is None


def test_resume_refuses_a_different_run_and_never_refuses_old_checkpoints(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    fake_checkpoint(out / "checkpoint-2", 2)
    (out / "retromem_pretrain_run.json").write_text(json.dumps({"objective": "mlm", "max_length": 32}))
    with pytest.raises(MismatchError, match="objective"):
        pretrain(make_config(tiny_model, corpus, out, objective="retromae"))
    with pytest.raises(RetromemError, match="already holds checkpoints"):
        pretrain(make_config(tiny_model, corpus, out, resume="never"))
    # no objective stands for retromae from a plain encoder: a run that named it or left it out is the same run
    checkpoint = out / "checkpoint-2"
    for previous, current in ((None, "retromae"), ("retromae", None), (None, None)):
        _refuse_changed_run(make_config(tiny_model, corpus, out, objective=current), 1, checkpoint,
                            {"objective": previous, "max_length": 32})
    with pytest.raises(MismatchError, match="objective"):
        _refuse_changed_run(make_config(tiny_model, corpus, out, objective="bow"), 1, checkpoint, {"objective": None})
    # the number of processes sets the batch and where in the data a step is
    with pytest.raises(MismatchError, match="the number of processes: 8 in that run, 4 now"):
        _refuse_changed_run(make_config(tiny_model, corpus, out), 4, checkpoint, {"world_size": 8})


def test_bad_options_are_refused(tiny_model, corpus, tmp_path):
    bad = [
        ({"data": []}, "no pretraining data"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"report_to": "mlflow"}, "unknown report_to"),
        ({"streaming": True, "max_steps": -1}, "streaming"),
        ({"max_steps": -1, "epochs": 0}, "max_steps"),
        ({"resume": str(tmp_path / "nowhere")}, "resume must be"),
        ({"head_learning_rate": 0.0}, r"head_learning_rate \(--head-lr\) must be > 0"),
        ({"learning_rate": -1.0}, r"learning_rate \(--lr\) must be > 0, got -1.0"),
        ({"per_device_batch_size": 0}, r"per_device_batch_size \(--batch-size\) must be at least 1"),
        ({"head_warmup_steps": -1}, r"head_warmup_steps \(--head-warmup-steps\) must be >= 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"dataloader_workers": -2}, "dataloader_workers"),
        ({"shuffle_buffer": 0}, r"shuffle_buffer \(--shuffle-buffer\) must be at least 1"),
        ({"head_warmup_steps": 3, "max_steps": 3}, "leaves none of the 3 steps to the encoder"),
    ]
    for overrides, message in bad:
        with pytest.raises(RetromemError, match=message):
            make_config(tiny_model, corpus, tmp_path / "run", **overrides).validate()
    with pytest.raises(RetromemError, match="unknown pretraining option"):
        PretrainConfig.from_dict({"data": [corpus], "learning_rat": 1e-4})


class OptimizerProbe(TrainerCallback):
    """Records, at the first step, every param group's learning rate and its parameters."""

    def __init__(self):
        self.groups = None

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.groups is None:
            self.groups = [(group["lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups]
            self.heads = {id(p) for p in model.head_parameters()}
            self.all = {id(p) for p in model.parameters() if p.requires_grad}


def test_heads_train_at_their_own_learning_rate(tiny_model, corpus, tmp_path):
    probe = OptimizerProbe()
    pretrain(make_config(tiny_model, corpus, tmp_path / "run", max_steps=2, learning_rate=1e-4,
                         head_learning_rate=1e-3, lr_scheduler="constant", objective="retromae"), callbacks=[probe])
    head_ids = set().union(*(ids for lr, ids in probe.groups if lr == pytest.approx(1e-3)))
    encoder_ids = set().union(*(ids for lr, ids in probe.groups if lr == pytest.approx(1e-4)))
    assert head_ids == probe.heads and head_ids  # the decoder and the MLM head's transform and bias
    assert encoder_ids == probe.all - probe.heads  # everything else, the tied word embeddings included
    assert len(probe.groups) == 4  # decay / no decay, for the encoder and for the heads


class WeightProbe(TrainerCallback):
    """Copies of one encoder and one head parameter before training and after every step, and the rates."""

    def __init__(self):
        self.encoder, self.head, self.rates = [], [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._record(model)
        self.rates.append({bool(g.get("heads")): g["lr"] for g in optimizer.param_groups})

    def _record(self, model):
        heads = {id(p) for p in model.head_parameters()}
        encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
        self.encoder.append(encoder[-1].detach().clone())  # the last encoder layer's output LayerNorm
        self.head.append(next(iter(model.head_parameters())).detach().clone())


def test_a_head_warmup_as_long_as_an_epochs_run_is_refused(tiny_model, corpus, tmp_path):
    # with --epochs the run's length is known only once the data is: the scheduler checks it
    with pytest.raises(RetromemError, match="head_warmup_steps 50 is not below the run's"):
        pretrain(make_config(tiny_model, corpus, tmp_path / "run", max_steps=-1, epochs=0.1, head_warmup_steps=50))


def test_head_warmup_freezes_the_encoder_then_starts_its_schedule(tiny_model, corpus, tmp_path):
    probe = WeightProbe()
    pretrain(make_config(tiny_model, corpus, tmp_path / "run", max_steps=5, head_warmup_steps=2, warmup=0,
                         learning_rate=1e-3, objective="retromae"), callbacks=[probe])
    same = [torch.equal(a, b) for a, b in zip(probe.encoder, probe.encoder[1:])]
    assert same == [True, True, False, False, False]  # frozen for steps 1-2, trained from step 3
    assert not any(torch.equal(a, b) for a, b in zip(probe.head, probe.head[1:]))  # heads train from step 1
    # rates after each step (for the next one): heads decay linearly over the 5 steps; the encoder is at 0,
    # then decays linearly over the remaining 3 steps
    assert [r[True] for r in probe.rates] == pytest.approx([0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3, 0.0])
    assert [r[False] for r in probe.rates] == pytest.approx([0.0, 1e-3, 2e-3 / 3, 1e-3 / 3, 0.0])


class ExplodingModel:
    def save_pretrained(self, folder):
        Path(folder, "model.safetensors").write_text("half a file")
        raise OSError("disk full")


class GoodModel:
    def save_pretrained(self, folder):
        Path(folder, "model.safetensors").write_text("new weights")


def test_final_save_is_atomic(tmp_path):
    final = tmp_path / "final"
    save_final(GoodModel(), final, {"global_step": 1})
    with pytest.raises(OSError, match="disk full"):
        save_final(ExplodingModel(), final, {"global_step": 2})
    assert (final / "model.safetensors").read_text() == "new weights"
    assert json.loads((final / "training_run.json").read_text())["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    save_final(GoodModel(), final, {"global_step": 3})
    assert json.loads((final / "training_run.json").read_text())["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_saved_folders_and_files_get_the_usual_modes(tmp_path):
    # temporary names come from mkdtemp/mkstemp, which make them private (0700, 0600): others could not read a model
    previous = os.umask(0o022)
    try:
        save_final(PrivateFilesModel(), tmp_path / "final", {"global_step": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "final").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "final" / "training_run.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "final" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # safetensors writes 0600
    assert (tmp_path / "final" / "1_Pooling").stat().st_mode & 0o777 == 0o755


class PrivateFilesModel:
    def save_pretrained(self, path):
        (Path(path) / "1_Pooling").mkdir(mode=0o700)
        (Path(path) / "model.safetensors").write_text("weights")
        os.chmod(Path(path) / "model.safetensors", 0o600)


def test_rerunning_a_finished_run_trains_no_further_step(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    config = make_config(tiny_model, corpus, out, max_steps=2, save_steps=2, objective="retromae")
    final = pretrain(config)
    trained = load_file(final / "model.safetensors")
    for crash_before_final in (False, True):  # run again as is; and after a crash that lost final/
        if crash_before_final:
            shutil.rmtree(final)
        assert pretrain(config) == final
        run = json.loads((final / "training_run.json").read_text())
        assert run["global_step"] == 2 and run["resumed_from"] == str(out / "checkpoint-2")
        assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
        again = load_file(final / "model.safetensors")
        assert all(torch.equal(trained[k], again[k]) for k in trained)
    assert (final / "training_loss.png").is_file()  # plotted from the checkpoint's log history


def test_a_finished_run_trains_on_with_more_steps_and_refuses_fewer_or_other_rates(tiny_model, corpus, tmp_path):
    out = tmp_path / "run"
    pretrain(make_config(tiny_model, corpus, out, max_steps=2, save_steps=2, objective="mlm"))
    with pytest.raises(MismatchError, match="learning_rate"):
        pretrain(make_config(tiny_model, corpus, out, max_steps=4, save_steps=2, objective="mlm", learning_rate=5e-4))
    final = pretrain(make_config(tiny_model, corpus, out, max_steps=4, save_steps=2, objective="mlm"))
    run = json.loads((final / "training_run.json").read_text())
    assert run["global_step"] == 4 and run["resumed_from"] == str(out / "checkpoint-2")
    with pytest.raises(RetromemError, match="past this run's 3 steps"):
        pretrain(make_config(tiny_model, corpus, out, max_steps=3, save_steps=2, objective="mlm"))


def test_continuing_from_final_keeps_its_objective_and_options(tiny_model, corpus, tmp_path):
    first = pretrain(make_config(tiny_model, corpus, tmp_path / "first", max_steps=1, objective="cotmae",
                                 objective_options={"decoder_mask_ratio": 0.3}))
    probe = HeadsProbe()
    again = pretrain(make_config(tiny_model, corpus, tmp_path / "again", model=str(first), from_scratch=False,
                                 objective=None, max_steps=1), callbacks=[probe])
    saved = json.loads((again / "pretrain_config.json").read_text())
    assert saved["objective"] == "mlm:1+cotmae:1" and saved["options"]["decoder_mask_ratio"] == 0.3
    assert json.loads((again / "training_run.json").read_text())["objective"] == "mlm:1+cotmae:1"
    first_heads = load_file(first / "pretrain_heads.safetensors")
    assert any(k.startswith("heads.cotmae.") for k in first_heads)
    assert probe.heads.keys() == first_heads.keys()  # the cotmae decoder came along, not a fresh retromae one
    assert all(torch.equal(probe.heads[k], first_heads[k]) for k in first_heads)
    # from a plain encoder, no objective means retromae
    plain = pretrain(make_config(tiny_model, corpus, tmp_path / "plain", objective=None, max_steps=1))
    assert json.loads((plain / "pretrain_config.json").read_text())["objective"] == "mlm:1+retromae:1"


def test_another_objective_says_which_saved_options_it_does_not_carry_over(tiny_model, corpus, tmp_path, caplog):
    first = pretrain(make_config(tiny_model, corpus, tmp_path / "first", max_steps=1, objective="dupmae",
                                 objective_options={"decoder_mask_ratio": 0.3}))
    with caplog.at_level(logging.WARNING, logger="retromem.pretrain.model"):
        again = pretrain(make_config(tiny_model, corpus, tmp_path / "again", model=str(first), from_scratch=False,
                                     objective="dupmae+bow", max_steps=1))
    assert json.loads((again / "pretrain_config.json").read_text())["options"]["decoder_mask_ratio"] == 0.5
    assert "decoder_mask_ratio=0.3 are not carried over (now decoder_mask_ratio=0.5)" in caplog.text


@pytest.mark.parametrize("objective, options, flag", [
    ("retromae", {"dupmae_bow_weight": 2.0}, "--dupmae-bow-weight"),
    ("mlm", {"decoder_mask_ratio": 0.5}, "--decoder-mask-ratio"),
    ("bow", {"matryoshka_submodels": "1:32"}, "--matryoshka-submodels"),
    ("retromae", {"bow_decay": "none"}, "--bow-decay"),
    ("cotmae", {"enhanced_decoding": False}, "--basic-decoding"),
])
def test_an_option_no_objective_of_the_run_acts_on_is_refused(tiny_model, corpus, tmp_path, objective, options,
                                                             flag):
    with pytest.raises(RetromemError, match=f"{flag} .* only, and the objective is"):
        pretrain(make_config(tiny_model, corpus, tmp_path / "run", objective=objective, objective_options=options))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_minimum_segment_below_what_the_objective_needs_is_refused(tiny_model, corpus, tmp_path):
    with pytest.raises(RetromemError, match="min_segment_length 3 is below the 4 tokens"):
        pretrain(make_config(tiny_model, corpus, tmp_path / "run", objective="cotmae", min_segment_length=3))
    with pytest.raises(RetromemError, match=r"min_segment_length \(--min-segment-length\) must be at least 2"):
        make_config(tiny_model, corpus, tmp_path / "run", min_segment_length=1).validate()


def test_several_gpus_without_a_launcher_train_on_one(caplog):
    args = SimpleNamespace(n_gpu=4, world_size=1, _n_gpu=4)
    with caplog.at_level(logging.WARNING, logger="retromem.pretrain.train"):
        _one_device_without_launcher(args)
    assert args._n_gpu == 1 and "accelerate launch --multi_gpu --num_processes 4" in caplog.text
    launched = SimpleNamespace(n_gpu=1, world_size=4, _n_gpu=1)
    _one_device_without_launcher(launched)
    assert launched._n_gpu == 1
