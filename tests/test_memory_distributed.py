"""Data-parallel memory building: `accelerate launch` with two CPU processes (gloo) writes one process's store."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from retromem.data.corpora import open_corpus
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.memory_store import MemoryStore
from retromem.index.token_memories import MemoryConfig, build_memories

from .test_index_distributed import ACCELERATE, PROJECT_ROOT


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_write_the_same_memory_as_one(tiny_beir_session, tiny_model_dir, tmp_path):
    if not ACCELERATE.exists():
        pytest.skip(f"{ACCELERATE} is not installed")
    corpus = tiny_beir_session / "corpus.jsonl"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "retromem.cli", "index", "memory", "--corpus", str(corpus), "--model", str(tiny_model_dir),
               "--output", str(tmp_path / "dist"), "--shard-size", "8", "--codec", "binary", "--merge-ratio", "0.5",
               "--layer", "1", "--precision", "fp32", "--device", "cpu"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("stored 40 passages") == 1, result.stdout  # only rank 0 finishes and reports

    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), precision="fp32", device="cpu"))
    single = build_memories(open_corpus(str(corpus)), encoder,
                            MemoryConfig(shard_size=8, codec="binary", merge_ratio=0.5, layer=1), tmp_path / "single")
    dist = MemoryStore.open(tmp_path / "dist")
    assert dist.complete and len(dist.shards) == len(single.shards) == 5
    assert dist.ids() == single.ids()
    assert dist.meta.details == single.meta.details
    for name in ("codec-mean.npy", "codec-spread.npy"):
        assert np.array_equal(np.load(tmp_path / "dist" / name), np.load(tmp_path / "single" / name))
    for a, b in zip(dist.gather_codes(single.ids()), single.gather_codes(single.ids())):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
