"""`retromem pretrain` and `retromem finetune` from the command line, on a tiny model, end to end."""

from __future__ import annotations

import argparse
import json
import os
import re
import typing
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from retromem.cli import build_parser, main
from retromem.index.encoder import Encoder, EncoderConfig


def test_pretrain_then_evaluate_the_result(tiny_model_dir, tiny_beir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETROMEM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--data", str(tiny_beir), "--model", str(tiny_model_dir), "--objective", "retromae+bow",
                 "--output", str(out), "--max-steps", "2", "--batch-size", "4", "--max-length", "32",
                 "--precision", "fp32", "--save-steps", "1", "--logging-steps", "1",
                 "--encoder-mask-ratio", "0.4", "--decoder-mask-ratio", "0.6", "--max-grad-norm", "0.5",
                 "--dataloader-workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out / 'final'}" in printed
    assert "{'loss'" not in printed  # library logs go through logging, not stdout
    final = out / "final"
    options = json.loads((final / "pretrain_config.json").read_text())
    assert options["options"]["encoder_mask_ratio"] == 0.4
    assert options["options"]["decoder_mask_ratio"] == 0.6
    config = json.loads((final / "training_run.json").read_text())["config"]
    assert (config["max_grad_norm"], config["dataloader_workers"]) == (0.5, 1)
    assert (final / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # loss curves, as a picture
    AutoModel.from_pretrained(final)
    SentenceTransformer(str(final), device="cpu")

    assert main(["eval", "beir", "--dataset", str(tiny_beir), "--model", str(final), "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--plot", "none"]) == 0
    table = capsys.readouterr().out
    assert "| NDCG@10 |" in table.replace("| system ", "")
    encoder = Encoder(EncoderConfig(model=str(final), precision="fp32"))
    assert encoder.pooling == "cls"


def test_pretrain_bad_objective_is_one_clear_line(tiny_model_dir, tiny_beir, tmp_path, capsys):
    code = main(["pretrain", "--data", str(tiny_beir), "--model", str(tiny_model_dir), "--objective", "retromea",
                 "--output", str(tmp_path / "x"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("retromem: error:") and "retromea" in err and len(err.strip().splitlines()) == 1


def test_finetune_on_beir_train_qrels_and_jsonl(tiny_st_dir, tiny_beir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETROMEM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ft"
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"query": "tides", "positive": "the moon pulls the sea", "negative": "a dry desert"})
                     + "\n")
    assert main(["finetune", "--beir", str(tiny_beir), "--jsonl", str(extra), "--model", str(tiny_st_dir),
                 "--output", str(out), "--max-steps", "2", "--batch-size", "2", "--hard-negatives", "1",
                 "--mine-top-k", "5", "--precision", "fp32", "--save-steps", "100", "--logging-steps", "1",
                 "--max-grad-norm", "0.5", "--allow-duplicates", "--mining-workdir", str(tmp_path / "mining"),
                 "--encode-batch-size", "3"]) == 0
    assert f"-> {out / 'final'}" in capsys.readouterr().out
    assert (out / "final" / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    examples = [json.loads(line) for line in (out / "train_examples.jsonl").read_text().splitlines()]
    assert len(examples) == 3  # the two train qrels of the tiny set, then the JSONL record
    assert examples[-1] == {"anchor": "tides", "positive": "the moon pulls the sea", "negative_1": "a dry desert"}
    config = json.loads((out / "final" / "finetune_run.json").read_text())["config"]
    assert (config["max_grad_norm"], config["no_duplicates"], config["encode_batch_size"]) == (0.5, False, 3)
    assert list((tmp_path / "mining").iterdir())  # mining's cache went where it was told
    st = SentenceTransformer(str(out / "final"), device="cpu")
    ours = Encoder(EncoderConfig(model=str(out / "final"), precision="fp32")).encode(["a query about the sea"])
    np.testing.assert_allclose(ours, st.encode(["a query about the sea"]), atol=1e-5)


def test_finetune_without_training_data_is_one_clear_line(tmp_path, capsys):
    assert main(["finetune", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retromem: error: no training data") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--output" in text and "--max-steps" in text and "--precision" in text


# ---------------------------------------------------------------- bad values: one line naming the flag, exit 2

HUGE_INT, HUGE_FLOAT = 10**12, 1e30


class Accepted(Exception):
    """Raised where an accepted run would write its run file and train: the sweep stops there."""

    def __init__(self, settings):
        super().__init__("accepted")
        self.settings = settings


@pytest.fixture()
def stop_at_training(monkeypatch):
    from retromem.pretrain.run import TrainingRun

    def accept(self):
        raise Accepted(self.settings)

    monkeypatch.setattr(TrainingRun, "accept", accept)


@pytest.fixture(scope="module")
def shared_dirs(tmp_path_factory):
    return {"cache": tmp_path_factory.mktemp("text-cache"), "mining": tmp_path_factory.mktemp("mining")}


def error_line(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("retromem: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def pretrain_args(model, data, out, cache, *extra, max_steps=True):
    return ["pretrain", "--data", str(data), "--model", str(model), "--output", str(out), "--batch-size", "4",
            "--max-length", "32", "--precision", "fp32", "--cache-dir", str(cache),
            *(["--max-steps", "2"] if max_steps else []), *extra]


def finetune_args(model, data, out, mining, *extra, max_steps=True):
    return ["finetune", "--beir", str(data), "--model", str(model), "--output", str(out), "--batch-size", "2",
            "--hard-negatives", "1", "--mine-top-k", "5", "--precision", "fp32", "--mining-workdir", str(mining),
            *(["--max-steps", "2"] if max_steps else []), *extra]


def test_pretrain_max_steps_0_or_negative_is_refused_instead_of_training_an_epoch(tiny_model_dir, tiny_beir_session,
                                                                                  shared_dirs, tmp_path, capsys):
    for value in ("0", "-2"):
        code = main(pretrain_args(tiny_model_dir, tiny_beir_session, tmp_path / "run", shared_dirs["cache"],
                                  f"--max-steps={value}", max_steps=False))
        error_line(capsys, code, "--max-steps", f"got {value}")
    assert not (tmp_path / "run").exists()


def test_finetune_mini_batch_size_without_cached_mnrl_is_refused(tiny_st_dir, tiny_beir_session, shared_dirs,
                                                                 tmp_path, capsys, stop_at_training):
    code = main(finetune_args(tiny_st_dir, tiny_beir_session, tmp_path / "run", shared_dirs["mining"],
                              "--mini-batch-size", "8"))
    error_line(capsys, code, "--mini-batch-size", "cached-mnrl")
    with pytest.raises(Accepted) as accepted:
        main(finetune_args(tiny_st_dir, tiny_beir_session, tmp_path / "run", shared_dirs["mining"],
                           "--mini-batch-size", "8", "--loss", "cached-mnrl"))
    assert accepted.value.settings.mini_batch_size == 8


@pytest.mark.parametrize("extra", [["--mine-top-k", "50"], ["--mining-model", "minilm", "--mine-skip", "2"]])
def test_finetune_mining_options_without_hard_negatives_are_refused(extra, tiny_st_dir, tiny_beir_session, shared_dirs,
                                                                    tmp_path, capsys, stop_at_training):
    args = finetune_args(tiny_st_dir, tiny_beir_session, tmp_path / "run", shared_dirs["mining"], "--hard-negatives",
                         "0", *extra)
    error_line(capsys, main(args), *[a for a in extra if a.startswith("--")], "--hard-negatives 0")
    with pytest.raises(Accepted):                             # with negatives to mine, the same options are used
        main([*args[:-len(extra) - 2], *extra])


def test_from_scratch_help_and_behaviour_agree(tiny_model_dir, tiny_beir_session, shared_dirs, tmp_path, capsys,
                                               stop_at_training):
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = commands.choices["pretrain"]
    text = next(a.help for a in parser._actions if "--from-scratch" in a.option_strings)
    assert "a folder or alias (whose own tokenizer is used" in text
    assert "config.json file (which needs --tokenizer)" in text
    args = pretrain_args(tiny_model_dir, tiny_beir_session, tmp_path / "run", shared_dirs["cache"], "--from-scratch")
    with pytest.raises(Accepted):  # a folder: its own tokenizer, no --tokenizer needed
        main(args)
    config_json = ["--model", str(tiny_model_dir / "config.json")]
    error_line(capsys, main([*args, *config_json]), "--tokenizer", "config.json")
    with pytest.raises(Accepted):
        main([*args, *config_json, "--tokenizer", str(tiny_model_dir)])


def test_a_run_that_logged_no_loss_says_so_and_one_loss_is_plotted(tiny_model_dir, tiny_beir_session, shared_dirs,
                                                                   tmp_path, caplog):
    base = pretrain_args(tiny_model_dir, tiny_beir_session, tmp_path / "quiet", shared_dirs["cache"], "--save-steps",
                         "2", "--objective", "mlm")
    assert main(base) == 0  # two steps, a loss logged every 50 (the default): none
    record = json.loads((tmp_path / "quiet" / "final" / "training_run.json").read_text())
    assert record["loss_plot"] is None and "--logging-steps" in record["loss_plot_note"]
    assert not (tmp_path / "quiet" / "final" / "training_loss.png").exists()
    assert "has no training_loss.png" in caplog.text
    once = [*base[:base.index("--output")], "--output", str(tmp_path / "once"), *base[base.index("--output") + 2:],
            "--logging-steps", "2"]
    assert main(once) == 0
    final = tmp_path / "once" / "final"
    assert json.loads((final / "training_run.json").read_text())["loss_plot"] == "training_loss.png"
    assert (final / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_refused_run_leaves_no_run_file(tiny_model_dir, tiny_st_dir, tiny_beir_session, shared_dirs, tmp_path,
                                          capsys):
    out = tmp_path / "pretrain"
    code = main(pretrain_args(tiny_model_dir, tiny_beir_session, out, shared_dirs["cache"], "--objective", "retromae",
                              "--dupmae-bow-weight", "2"))  # refused once the model is built: no objective uses it
    error_line(capsys, code, "--dupmae-bow-weight")
    assert not (out / "retromem_pretrain_run.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    out = tmp_path / "finetune"
    code = main(["finetune", "--jsonl", str(bad), "--model", str(tiny_st_dir), "--output", str(out), "--batch-size",
                 "1", "--precision", "fp32", "--mining-workdir", str(shared_dirs["mining"])])
    error_line(capsys, code, f"{bad}:2", "missing 'positive'")
    assert not (out / "retromem_finetune_run.json").exists()


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_an_output_that_is_a_file_is_one_line_and_left_alone(command, tiny_model_dir, tiny_st_dir, tiny_beir_session,
                                                             shared_dirs, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    args = (pretrain_args(tiny_model_dir, tiny_beir_session, out, shared_dirs["cache"]) if command == "pretrain"
            else finetune_args(tiny_st_dir, tiny_beir_session, out, shared_dirs["mining"]))
    error_line(capsys, main(args), f"--output {out} is a file")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_an_output_that_cannot_be_written_is_one_line(command, tiny_model_dir, tiny_st_dir, tiny_beir_session,
                                                      shared_dirs, tmp_path, capsys):
    if os.geteuid() == 0:   # root writes in any folder of an ordinary file system, but not in sysfs
        out = Path("/sys/retromem-test-run")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    args = (pretrain_args(tiny_model_dir, tiny_beir_session, out, shared_dirs["cache"]) if command == "pretrain"
            else finetune_args(tiny_st_dir, tiny_beir_session, out, shared_dirs["mining"]))
    error_line(capsys, main(args), "cannot write in")
    assert not out.exists()


def _numeric_options(command: str):
    """Every numeric option of the command, from the declarations (so an option added later is swept too)."""
    from retromem.cli.options import _base_type
    from retromem.options import flag, option_specs
    from retromem.pretrain.finetune_config import FinetuneConfig
    from retromem.pretrain.objective_options import ObjectiveOptions
    from retromem.pretrain.pretrain_config import PretrainConfig

    classes = (PretrainConfig, ObjectiveOptions) if command == "pretrain" else (FinetuneConfig,)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for name, spec in option_specs(cls).items():
            kind = _base_type(hints[name])[0]
            if spec.cli and kind in (int, float):
                yield cls.__name__, name, flag(cls, name), kind


def _sweep_cases():
    for command in ("pretrain", "finetune"):
        for owner, name, option, kind in _numeric_options(command):
            huge = HUGE_INT if kind is int else HUGE_FLOAT
            for value in (kind(0), kind(-2), huge):
                yield pytest.param(command, owner, name, option, value, id=f"{command} {option}={value:g}")


#: The values the commands take as given, each a documented meaning (docs/pretraining.md, "Edge values"); every
#: other 0, negative or huge value of a numeric option must be refused, naming the flag.
ACCEPTED = {
    "pretrain": {("--max-steps", HUGE_INT), ("--epochs", HUGE_FLOAT), ("--lr", HUGE_FLOAT), ("--head-lr", HUGE_FLOAT),
                 ("--weight-decay", 0), ("--weight-decay", HUGE_FLOAT), ("--max-grad-norm", 0),
                 ("--max-grad-norm", HUGE_FLOAT), ("--seed", 0), ("--save-steps", HUGE_INT),
                 ("--save-total-limit", HUGE_INT), ("--logging-steps", HUGE_INT), ("--head-warmup-steps", 0),
                 ("--warmup", 0), ("--dataloader-workers", 0), ("--dupmae-bow-weight", 0),
                 ("--dupmae-bow-weight", HUGE_FLOAT), ("--matryoshka-samples", 0)},
    "finetune": {("--max-steps", HUGE_INT), ("--epochs", HUGE_FLOAT), ("--lr", HUGE_FLOAT), ("--weight-decay", 0),
                 ("--weight-decay", HUGE_FLOAT), ("--max-grad-norm", 0), ("--max-grad-norm", HUGE_FLOAT),
                 ("--seed", 0), ("--save-steps", HUGE_INT), ("--save-total-limit", HUGE_INT),
                 ("--logging-steps", HUGE_INT), ("--scale", HUGE_FLOAT), ("--hard-negatives", 0),
                 ("--mine-top-k", HUGE_INT), ("--mine-skip", 0), ("--mine-max-score-ratio", HUGE_FLOAT),
                 ("--encode-batch-size", HUGE_INT), ("--warmup-ratio", 0), ("--mini-batch-size", HUGE_INT)},
}


@pytest.mark.parametrize("command, owner, name, option, value", list(_sweep_cases()))
def test_every_numeric_option_refuses_or_keeps_an_edge_value(command, owner, name, option, value, tiny_model_dir,
                                                             tiny_st_dir, tiny_beir_session, shared_dirs, tmp_path,
                                                             capsys, stop_at_training):
    given = [f"{option}={value}"]
    budget = option != "--epochs"  # --max-steps would override --epochs
    if command == "pretrain":
        args = pretrain_args(tiny_model_dir, tiny_beir_session, tmp_path / "run", shared_dirs["cache"], "--objective",
                             "dupmae+bow+matryoshka", *given, max_steps=budget)  # every objective option acts
    else:
        extra = ["--loss", "cached-mnrl"] if option == "--mini-batch-size" else []
        args = finetune_args(tiny_st_dir, tiny_beir_session, tmp_path / "run", shared_dirs["mining"], *extra, *given,
                             max_steps=budget)
        if option == "--hard-negatives" and value == 0:  # nothing is mined: the mining options would be refused
            args = _without(args, "--mine-top-k", "--mining-workdir")
    try:
        code = main(args)
    except Accepted as accepted:
        assert (option, value) in ACCEPTED[command], f"{option} {value} was accepted: refuse it or document it"
        settings = accepted.settings
        kept = settings.objective_options[name] if owner == "ObjectiveOptions" else getattr(settings, name)
        assert kept == value and type(kept) is type(value)  # taken as given, not clamped or reinterpreted
        return
    assert (option, value) not in ACCEPTED[command], capsys.readouterr().err[-2000:]
    error_line(capsys, code, option)


def _without(args: list[str], *options: str) -> list[str]:
    """``args`` without each of ``options`` and the value after it."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        else:
            kept.append(arg)
    return kept


# ---------------------------------------------------------------- a review's findings

def test_a_model_kind_pretraining_cannot_build_is_one_line(tiny_model_dir, tmp_path, tiny_beir_session, shared_dirs,
                                                            capsys):
    from transformers import AutoTokenizer, T5Config

    config = tmp_path / "t5" / "config.json"
    config.parent.mkdir()
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=vocab).to_json_file(config)
    args = pretrain_args(config, tiny_beir_session, tmp_path / "run", shared_dirs["cache"], "--from-scratch",
                         "--tokenizer", str(tiny_model_dir))
    error_line(capsys, main(args), "cannot be pretrained here", "BERT-like")
    assert not (tmp_path / "run" / "retromem_pretrain_run.json").exists()


def test_a_folder_of_the_other_kind_of_run_is_refused_before_any_work(tiny_model_dir, tiny_st_dir, tiny_beir_session,
                                                                     shared_dirs, tmp_path, capsys):
    pretrain_run = tmp_path / "pretrain"
    assert main(pretrain_args(tiny_model_dir, tiny_beir_session, pretrain_run, shared_dirs["cache"],
                              "--save-steps", "1")) == 0
    before = sorted(p.name for p in pretrain_run.iterdir())
    capsys.readouterr()
    error_line(capsys, main(finetune_args(tiny_st_dir, tiny_beir_session, pretrain_run, shared_dirs["mining"])),
               "holds another kind of run", "retromem_pretrain_run.json")
    assert sorted(p.name for p in pretrain_run.iterdir()) == before                     # nothing mined into it
    error_line(capsys, main(finetune_args(tiny_st_dir, tiny_beir_session, tmp_path / "ft", shared_dirs["mining"],
                                          "--resume", str(pretrain_run / "checkpoint-2"))),
               "--resume", "holds another kind of run")


def test_a_budget_below_the_checkpoint_leaves_the_run_file_as_it_was(tiny_model_dir, tiny_beir_session, shared_dirs,
                                                                      tmp_path, capsys):
    out = tmp_path / "run"
    args = pretrain_args(tiny_model_dir, tiny_beir_session, out, shared_dirs["cache"], "--save-steps", "1",
                         max_steps=False)
    assert main([*args, "--max-steps", "2"]) == 0
    run_file = (out / "retromem_pretrain_run.json").read_text()
    capsys.readouterr()
    error_line(capsys, main([*args, "--max-steps", "1"]), "past this run's 1 steps")
    assert (out / "retromem_pretrain_run.json").read_text() == run_file


def test_a_head_warmup_as_long_as_an_epochs_run_leaves_no_run_file(tiny_model_dir, tiny_beir_session, shared_dirs,
                                                                  tmp_path, capsys):
    out = tmp_path / "run"
    args = pretrain_args(tiny_model_dir, tiny_beir_session, out, shared_dirs["cache"], "--epochs", "0.01",
                         "--head-warmup-steps", "5", max_steps=False)
    error_line(capsys, main(args), "--head-warmup-steps", "encoder would never train")
    assert not (out / "retromem_pretrain_run.json").exists()
