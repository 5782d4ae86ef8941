"""PretrainModel: tied MLM head, save -> AutoModel/SentenceTransformer, heads restored, Trainer checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertConfig

from retromem.errors import MismatchError, MissingDataError, RetromemError
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.io import current_umask
from retromem.pretrain.model import CONFIG_FILE, HEADS_FILE, PretrainModel
from retromem.pretrain.objective_options import ObjectiveError

TEXTS = [
    "Bottlenecked autoencoders learn sentence embeddings without labels.",
    "The quick brown fox jumps over the lazy dog.",
    "Scientific claims need evidence from abstracts.",
    "Short text",
]



def tiny_config(tokenizer) -> BertConfig:
    return BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        vocab_size=len(tokenizer), max_position_embeddings=128,
    )


def examples(tokenizer):
    return [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TEXTS]


def trained_a_little(tokenizer, spec: str, steps: int = 2, **options) -> PretrainModel:
    """A model whose heads differ from any fresh initialisation."""
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), spec, tokenizer=tokenizer, **options)
    collator = model.collator(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        model(**collator(examples(tokenizer)))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_mlm_head_is_tied_through_the_structure(tokenizer):
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae+bow", tokenizer=tokenizer)
    assert model.mlm_head.vocab_weight is model.encoder.embeddings.word_embeddings.weight
    state = model.state_dict()
    pointers = [t.data_ptr() for t in state.values()]
    assert len(pointers) == len(set(pointers)), "no tensor appears twice in the state dict"
    assert not any(k.startswith("mlm_head") and k.endswith("word_embeddings.weight") for k in state)
    assert not any(p.requires_grad for p in model.encoder.pooler.parameters())
    assert set(model.heads) == {"retromae"}
    assert model.segment_length(128) == 126 and model.min_segment_length == 2


def test_save_loads_with_automodel_and_sentence_transformers(tokenizer, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = trained_a_little(tokenizer, "retromae+bow")
    out = tmp_path / "pretrained"
    model.save_pretrained(out)
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["objective"] == "mlm:1+retromae:1+bow:1"
    assert saved["options"]["encoder_mask_ratio"] == 0.3
    assert (out / HEADS_FILE).is_file()
    assert not list(tmp_path.glob(".pretrained.*")), "the staging folder is removed"
    umask = current_umask()
    for path in (out, out / HEADS_FILE, out / "model.safetensors"):  # not mkdtemp's 0700 nor safetensors' 0600
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask

    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.encoder(**encoded).last_hidden_state[:, 0]
        automodel = AutoModel.from_pretrained(out).eval()
        from_auto = automodel(**encoded).last_hidden_state[:, 0]
    st_model = SentenceTransformer(str(out), device="cpu")
    from_st = st_model.encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(from_auto, expected, atol=1e-5)
    assert torch.allclose(from_st.cpu(), expected, atol=1e-5), "SentenceTransformer = [CLS], no normalisation"
    modules = json.loads((out / "modules.json").read_text())
    assert len(modules) == 2 and "Pooling" in modules[1]["type"]
    # and retromem's own encoder (queries and passages alike: no prompt, no prefix) gives the same vectors
    ours = Encoder(EncoderConfig(model=str(out), precision="fp32"))
    assert ours.pooling == "cls"
    for vectors in (ours.encode_queries(TEXTS), ours.encode_passages(TEXTS)):
        torch.testing.assert_close(torch.from_numpy(vectors), expected, atol=1e-5, rtol=1e-4)


def test_from_pretrained_restores_heads_exactly(tokenizer, tmp_path):
    model = trained_a_little(tokenizer, "dupmae", decoder_layers=2, dupmae_bow_weight=0.5)
    model.save_pretrained(tmp_path / "m")
    again = PretrainModel.from_pretrained(tmp_path / "m")
    assert again.objective == model.objective
    assert again.plan.options == model.plan.options
    before, after = model.state_dict(), again.state_dict()
    assert set(before) == set(after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert again.mlm_head.vocab_weight is again.encoder.embeddings.word_embeddings.weight
    batch = again.collator(32)(examples(tokenizer))
    assert torch.isfinite(again(**batch)["loss"])


def test_from_pretrained_with_another_objective_keeps_shared_heads(tokenizer, tmp_path):
    model = trained_a_little(tokenizer, "retromae")
    model.save_pretrained(tmp_path / "m")
    mlm = PretrainModel.from_pretrained(tmp_path / "m", objective="mlm")
    assert mlm.objective == "mlm:1" and len(mlm.heads) == 0
    assert mlm.plan.options.encoder_mask_ratio == 0.15, "a new objective starts from its own defaults"
    for key, value in model.mlm_head.state_dict().items():
        assert torch.equal(mlm.mlm_head.state_dict()[key], value)
    tuned = PretrainModel.from_pretrained(tmp_path / "m", encoder_mask_ratio=0.4)
    assert tuned.plan.options.encoder_mask_ratio == 0.4 and "retromae" in tuned.heads


def test_hf_trainer_checkpoints_and_restores_the_wrapper(tokenizer, tmp_path):
    from transformers import Trainer, TrainingArguments

    def trainer_for(model):
        args = TrainingArguments(
            output_dir=str(tmp_path / "run"), max_steps=2, save_steps=2, per_device_train_batch_size=2,
            report_to=[], use_cpu=True, remove_unused_columns=False, disable_tqdm=True, logging_steps=1,
        )
        return Trainer(model=model, args=args, train_dataset=examples(tokenizer) * 2, data_collator=model.collator(32))

    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae+bow", tokenizer=tokenizer)
    trainer_for(model).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert set(saved) == set(model.state_dict())
    torch.manual_seed(1)
    fresh = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae+bow", tokenizer=tokenizer)
    trainer_for(fresh)._load_from_checkpoint(str(checkpoint))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.mlm_head.vocab_weight is fresh.encoder.embeddings.word_embeddings.weight
    with pytest.raises(RetromemError, match="PretrainModel state dict"):
        model.save_pretrained(checkpoint)


def test_bad_construction_is_refused(tokenizer, tmp_path):
    with pytest.raises(ObjectiveError, match="needs a tokenizer"):
        PretrainModel.from_encoder(tiny_config(tokenizer), "mlm")
    with pytest.raises(ObjectiveError, match="unknown objective"):
        PretrainModel.from_encoder(tiny_config(tokenizer), "retromea", tokenizer=tokenizer)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "mlm", tokenizer=tokenizer)
    with pytest.raises(ObjectiveError, match="exceeds the encoder's 128 positions"):
        model.collator(512)
    model.encoder.save_pretrained(tmp_path / "plain")
    with pytest.raises(MissingDataError, match="pretrain_config.json"):
        PretrainModel.from_pretrained(tmp_path / "plain")


def test_a_model_of_its_own_code_is_refused_not_asked_about(tiny_remote_model_dir, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked whether to run the model's code"))
    with pytest.raises(MismatchError, match="cannot be pretrained here: .*custom code"):
        PretrainModel.from_encoder(str(tiny_remote_model_dir), "mlm")


@pytest.mark.parametrize("positions", [{"position_embedding_type": "relative_key"}, {"position_biased_input": False}])
def test_enhanced_decoding_needs_absolute_positions(tokenizer, positions):
    config = tiny_config(tokenizer)
    for key, value in positions.items():
        setattr(config, key, value)
    for spec in ("retromae", "dupmae"):
        with pytest.raises(ObjectiveError, match="absolute position embeddings"):
            PretrainModel.from_encoder(config, spec, tokenizer=tokenizer)
        model = PretrainModel.from_encoder(config, spec, tokenizer=tokenizer, enhanced_decoding=False)
        assert spec in model.heads


@pytest.mark.slow
def test_from_minilm_initialises_the_missing_mlm_head(tokenizer):
    model = PretrainModel.from_encoder("minilm", "bow")
    assert model.mlm_head.vocab_weight is model.encoder.embeddings.word_embeddings.weight
    assert torch.count_nonzero(model.mlm_head.bias) == 0, "MiniLM has no MLM head: the bias starts at 0"
    batch = model.collator(64)(examples(tokenizer))
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_mlm", "loss_bow"}


@pytest.mark.parametrize("layout", ["sentence-transformers 6", "sentence-transformers 2"])
def test_the_saved_encoder_keeps_the_source_sentence_transformers_length(tiny_st_dir, tmp_path, layout):
    """Pretraining all-MiniLM-L6-v2 (max_seq_length 256, written by sentence-transformers 2 into
    sentence_bert_config.json beside a tokenizer of 512) must not leave an encoder that encodes 512 tokens."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_st_dir, source)
    expected = 64
    if layout == "sentence-transformers 2":
        expected = 48
        (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
        tok_config = json.loads((source / "tokenizer_config.json").read_text())
        (source / "tokenizer_config.json").write_text(json.dumps({**tok_config, "model_max_length": 512}))
    model = PretrainModel.from_encoder(source, "retromae")
    model.save_pretrained(tmp_path / "m")
    assert Encoder(EncoderConfig(model=str(tmp_path / "m"))).max_length == expected, "the source's, not 128 positions"
    PretrainModel.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "again")
    assert Encoder(EncoderConfig(model=str(tmp_path / "again"))).max_length == expected
    model.save_pretrained(tmp_path / "told", max_seq_length=32)
    assert Encoder(EncoderConfig(model=str(tmp_path / "told"))).max_length == 32
