"""Data-parallel pretraining: ``accelerate launch`` with two CPU processes ends with identical weights."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoModel, AutoTokenizer, BertConfig

from retromem.model_paths import resolve_model_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Each rank hashes its weights when training starts and ends; the main process also writes final/.
SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import torch
    from transformers import TrainerCallback
    from retromem.pretrain.train import PretrainConfig, pretrain

    def digest(model):
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    class HashWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = digest(model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            report = {"rank": args.process_index, "world_size": args.world_size, "step": state.global_step,
                      "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                      "start": self.start, "end": digest(model)}
            with open(f"{args.output_dir}/rank-{args.process_index}.json", "w") as handle:
                json.dump(report, handle)

    pretrain(PretrainConfig.from_dict(json.load(open(sys.argv[1]))), callbacks=[HashWeights()])
""")


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["cached", "streaming", "streaming-uneven"])
def test_two_cpu_processes_end_with_identical_weights(tmp_path, layout):
    """Cached text with retromae+bow; streamed text with cotmae (pairs of spans) and texts of many lengths,
    so that the two ranks' batches differ in width (each rank reads its own share of the stream), from three
    files, which cannot be shared out whole between two processes; or from two files of very different
    sizes, one for each process, with gradient accumulation (the small share runs out mid-group)."""
    streaming = layout != "cached"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    model_dir = tmp_path / "tiny-bert"
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               vocab_size=len(tokenizer), max_position_embeddings=64).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    words = ["the", "lobster", "sea", "claw", "shell", "ocean", "species", "blue", "red", "game", "battle", "unit",
             "squad", "map", "city", "river"]
    rng = random.Random(0)
    lengths = [rng.randint(8, 60) if streaming else 40 for _ in range(100)]
    lines = [" ".join(rng.choice(words) for _ in range(n)) for n in lengths]
    # streamed: three files, which cannot split evenly between two processes (each reads the one stream)
    shares = {"cached": [lines], "streaming": [lines[0::3], lines[1::3], lines[2::3]],
              "streaming-uneven": [lines[:5], lines[5:]]}[layout]
    for part, share in enumerate(shares):
        (tmp_path / f"corpus-{part}.txt").write_text("\n".join(share), encoding="utf-8")
    out = tmp_path / "run"
    config = {"data": [str(tmp_path / "corpus-*.txt")], "output_dir": str(out), "model": str(model_dir),
              "from_scratch": True,
              "objective": "cotmae" if streaming else "retromae+bow", "streaming": streaming, "min_segment_length": 4,
              "max_length": 32, "per_device_batch_size": 4, "max_steps": 3,
              "save_steps": 100, "logging_steps": 1, "learning_rate": 1e-3, "precision": "fp32",
              "show_progress": False, "cache_dir": str(tmp_path / "text-cache")}
    if layout == "streaming-uneven":  # 5 one-segment texts: batches of 2, 2, 1, an odd count of micro-batches
        config.update(per_device_batch_size=2, gradient_accumulation_steps=2, max_steps=6)
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(tmp_path / "train.py"), str(tmp_path / "config.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(PROJECT_ROOT),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    reports = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["backend"] for r in reports] == ["gloo", "gloo"]
    assert [r["step"] for r in reports] == [config["max_steps"]] * 2
    assert reports[0]["start"] == reports[1]["start"]
    assert reports[0]["end"] == reports[1]["end"]  # identical weights on both ranks after training
    assert reports[0]["end"] != reports[0]["start"]  # and training did change them
    run = json.loads((out / "final" / "training_run.json").read_text())
    assert run["world_size"] == 2 and run["global_step"] == config["max_steps"]
    AutoModel.from_pretrained(out / "final")
