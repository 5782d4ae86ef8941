"""`retromem pretrain` and `retromem finetune` from the command line, on a tiny model, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from retromem.cli import main
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
