"""The objectives' losses: enhanced-decoding mask, vocabulary max-pool, and overfitting each objective."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from retromem.model_paths import resolve_model_path
from retromem.pretrain import mlm
from retromem.pretrain.bow import bag_of_words_loss
from retromem.pretrain.cotmae import neighbour
from retromem.pretrain.dupmae import vocab_max_pool
from retromem.pretrain.model import PretrainModel
from retromem.pretrain.retromae import enhanced_decoding_mask

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Unbelievably, wordpiece tokenization handles rare words gracefully.",
    "Dense retrieval encoders squeeze a passage into one vector.",
    "Photosynthesis turns sunlight into chemical energy in plants.",
    "The committee postponed its decision until the next meeting.",
    "Bottlenecked autoencoders learn sentence embeddings without labels.",
]


@pytest.fixture(scope="module")
def tokenizer():
    """MiniLM's word pieces for SENTENCES only: the same tokenisation with a vocabulary of ~100, so steps are fast."""
    return small_wordpiece_tokenizer(SENTENCES)


def small_wordpiece_tokenizer(sentences: list[str]) -> PreTrainedTokenizerFast:
    minilm = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted({piece for s in sentences for piece in minilm.tokenize(s)})
    core = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(tokenizer) -> BertConfig:
    return BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        vocab_size=len(tokenizer), max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def test_enhanced_decoding_mask_rows():
    lengths = torch.randint(3, 41, (64,))
    lengths[0] = 40
    attention_mask = (torch.arange(40)[None, :] < lengths[:, None]).long()
    for ratio in (0.5, 0.7):
        visible = enhanced_decoding_mask(attention_mask, ratio, generator=torch.Generator().manual_seed(0))
        assert visible.shape == (64, 40, 40) and visible.dtype == torch.bool
        assert visible[:, :, 0].all(), "every row sees the sentence embedding"
        diagonal = visible.diagonal(dim1=1, dim2=2)[:, 1:]
        assert not diagonal.any(), "no reconstructed row sees its own token"
        padding = attention_mask[:, None, :].expand(-1, 40, -1) == 0
        assert not visible[padding].any(), "padding is never visible"
        rows = attention_mask.bool().clone()
        rows[:, 0] = False
        seen = visible[:, :, 1:].sum(-1)[rows].float()
        candidates = (lengths[:, None].expand(-1, 40)[rows] - 2).float()
        assert torch.equal(seen, ((1 - ratio) * candidates).round())
        assert abs(seen.sum().item() / candidates.sum().item() - (1 - ratio)) < 0.01
    again = enhanced_decoding_mask(attention_mask, 0.5)
    assert not torch.equal(again, enhanced_decoding_mask(attention_mask, 0.5)), "the mask is drawn afresh"


def test_vocab_max_pool_matches_dense_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.rand(3, 7) > 0.3
    positions[:, 1] = True
    upstream = torch.randn(3, 50, dtype=torch.float64)
    dense = (hidden @ weight.t()).masked_fill(~positions[..., None], float("-inf")).amax(1)
    dense.backward(upstream)
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    pooled = vocab_max_pool(hidden, weight, positions)
    pooled.backward(upstream)
    assert torch.allclose(pooled, dense)
    assert torch.allclose(hidden.grad, expected[0]) and torch.allclose(weight.grad, expected[1])


def test_linear_cross_entropy_matches_torch(monkeypatch):
    monkeypatch.setattr(mlm, "CE_CHUNK_ELEMENTS", 8 * 50)  # several chunks of 8 rows, the last one partial
    monkeypatch.setattr(mlm, "ROW_BUCKET", 4)
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(50, (30,))
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), targets)
    expected.backward(torch.tensor(3.0, dtype=torch.float64))
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    hidden.grad = weight.grad = bias.grad = None
    loss = mlm.linear_cross_entropy(hidden, weight, bias, targets)
    loss.backward(torch.tensor(3.0, dtype=torch.float64))
    assert torch.allclose(loss, expected)
    for tensor, grad in zip((hidden, weight, bias), grads):
        assert torch.allclose(tensor.grad, grad)
    with torch.no_grad():
        assert torch.allclose(mlm.linear_cross_entropy(hidden, weight, bias, targets), expected)


def test_bag_of_words_loss_is_cross_entropy_against_the_distinct_tokens():
    # as the reference implementations build the bag: every distinct token once, equally weighted
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    ids = torch.tensor([[0, 3, 3, 5, 0, 3], [0, 7, 2, 0, 0, 9], [0, 4, 4, 4, 4, 0]])
    positions = torch.tensor([[False, True, True, True, False, True], [False, True, True, False, False, False],
                              [False, True, True, True, True, False]])
    target = torch.zeros(3, 10)
    target[0, 3], target[0, 5], target[1, 7], target[1, 2], target[2, 4] = 0.5, 0.5, 0.5, 0.5, 1.0
    expected = -(target * torch.log_softmax(logits, -1)).sum(1).mean()
    assert torch.allclose(bag_of_words_loss(logits, ids, positions), expected)


@pytest.mark.parametrize(
    ("spec", "options", "component"),
    [
        ("mlm", {}, "mlm"),
        ("retromae", {}, "retromae"),
        ("retromae", {"enhanced_decoding": False}, "retromae"),
        ("dupmae", {}, "dupmae_bow"),
        ("dupmae", {}, "dupmae"),
        ("cotmae", {}, "cotmae"),
        ("bow", {}, "bow"),
        ("retromae+bow+matryoshka", {"matryoshka_submodels": "1:64,2:16"}, "matryoshka"),
    ],
)
def test_loss_falls_when_overfitting_a_few_sentences(tokenizer, spec, options, component):
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), spec, tokenizer=tokenizer, **options)
    collator = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))
    examples = [{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(100):
        output = model(**collator(examples))
        output["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({k: v.item() for k, v in output.items()})
    assert set(history[0]) == {"loss"} | {f"loss_{name}" for name in _components(model)}
    first = sum(h[f"loss_{component}"] for h in history[:3]) / 3
    last = sum(h[f"loss_{component}"] for h in history[-3:]) / 3
    assert last < 0.75 * first, f"{component}: {first:.2f} -> {last:.2f}"
    assert sum(h["loss"] for h in history[-3:]) < 0.75 * sum(h["loss"] for h in history[:3])


def _components(model: PretrainModel) -> set[str]:
    names = {o.name for o in model.plan.objectives}
    if "dupmae" in names:
        names.add("dupmae_bow")
    return names


def test_weights_scale_the_total(tokenizer):
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "mlm:0.5+bow:2", tokenizer=tokenizer, bow_decay="none")
    model.eval()
    batch = model.collator(32)([{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES])
    out = model(**batch)
    assert torch.allclose(out["loss"], 0.5 * out["loss_mlm"] + 2 * out["loss_bow"])
    model.plan.options.bow_decay = "cosine"
    model.set_progress(1.0)
    out = model(**batch)
    assert torch.allclose(out["loss"], 0.5 * out["loss_mlm"])


def test_cast_weight_is_shared_within_one_forward_pass_only():
    weight = torch.nn.Parameter(torch.randn(50, 16))
    with mlm.shared_casts():
        first = mlm.cast_weight(weight, torch.bfloat16)
        assert first.dtype == torch.bfloat16 and torch.equal(first, weight.detach().bfloat16())
        assert mlm.cast_weight(weight, torch.bfloat16) is first  # one cast per pass, shared by every loss
    with mlm.shared_casts():
        assert mlm.cast_weight(weight, torch.bfloat16) is not first  # the next pass casts afresh
    assert mlm.cast_weight(weight, torch.bfloat16) is not mlm.cast_weight(weight, torch.bfloat16)  # no block
    assert mlm.cast_weight(weight, torch.float32).data_ptr() == weight.data_ptr()  # no copy at its own dtype


def test_fused_adamw_steps_reach_the_next_forward_under_autocast(tokenizer):
    # fused AdamW (transformers' default optimizer) updates weights without bumping their version
    # counter: a cast kept across steps would project every later step onto the first step's matrix
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae+bow", tokenizer=tokenizer)
    collator = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))
    batch = collator([{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    fresh = copy.deepcopy(model)  # new parameter objects: nothing cached for them
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        trained, copied = model(**batch), fresh(**batch)
    for name in ("loss_mlm", "loss_bow"):  # (RetroMAE's decoder draws its attention rows afresh every pass)
        torch.testing.assert_close(trained[name], copied[name], rtol=0, atol=0)


def test_linear_cross_entropy_gradients_survive_fp16():
    # in fp16 a (softmax - onehot) / rows of about 1e-8 flushes to zero; the products must see the
    # unscaled gradient. Checked without a GPU under the CPU's fp16 autocast.
    torch.manual_seed(0)
    rows, vocab, hidden_size = 4000, 3000, 16
    hidden = (torch.randn(rows, hidden_size) * 0.5).requires_grad_()
    weight = torch.nn.Parameter(torch.randn(vocab, hidden_size) * 0.5)
    targets = torch.randint(vocab, (rows,))
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight), targets)
    expected.backward()
    reference = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.float16):
        loss = mlm.linear_cross_entropy(hidden, weight, None, targets)
    (loss * 65536.0).backward()  # what a GradScaler does
    for grad, ref in zip((hidden.grad / 65536.0, weight.grad / 65536.0), reference):
        assert (torch.linalg.norm(grad - ref) / torch.linalg.norm(ref)).item() < 0.005


def test_linear_cross_entropy_computes_no_gradients_under_no_grad(monkeypatch):
    seen = []
    original = mlm._LinearCrossEntropy.apply
    monkeypatch.setattr(mlm._LinearCrossEntropy, "apply",
                        staticmethod(lambda h, w, b, t: seen.append(h.requires_grad or w.requires_grad)
                                     or original(h, w, b, t)))
    hidden = torch.randn(8, 4, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(10, 4))
    with torch.no_grad():
        loss = mlm.linear_cross_entropy(hidden, weight, None, torch.randint(10, (8,)))
    assert not loss.requires_grad and seen == [False]  # no gradient products computed for nothing
    mlm.linear_cross_entropy(hidden, weight, None, torch.randint(10, (8,))).backward()
    assert seen == [False, True] and hidden.grad is not None


def test_linear_cross_entropy_under_bf16_autocast_matches_float32(monkeypatch):
    monkeypatch.setattr(mlm, "CE_CHUNK_ELEMENTS", 8 * 50)
    monkeypatch.setattr(mlm, "ROW_BUCKET", 4)
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(50, 16) * 0.3)
    bias = torch.nn.Parameter(torch.randn(50))
    targets = torch.randint(50, (30,))
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), targets)
    expected.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    hidden.grad = weight.grad = bias.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mlm.linear_cross_entropy(hidden, weight, bias, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - expected.item()) < 0.05
    for tensor, grad in zip((hidden, weight, bias), grads):
        assert tensor.grad.dtype == torch.float32
        assert torch.allclose(tensor.grad, grad, atol=0.02, rtol=0.05)


def test_linear_cross_entropy_ignores_padding_rows(monkeypatch):
    monkeypatch.setattr(mlm, "CE_CHUNK_ELEMENTS", 8 * 50)
    monkeypatch.setattr(mlm, "ROW_BUCKET", 4)
    torch.manual_seed(0)
    hidden = torch.randn(28, 16, dtype=torch.float64, requires_grad=True)  # 21 labelled rows, then 7 padding
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(50, (21,))
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden[:21], weight, bias), targets)
    expected.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    hidden.grad = weight.grad = bias.grad = None
    loss = mlm.linear_cross_entropy(hidden, weight, bias, targets)
    loss.backward()
    assert torch.allclose(loss, expected)
    for tensor, grad in zip((hidden, weight, bias), grads):
        assert torch.allclose(tensor.grad, grad)
    assert not hidden.grad[21:].any()
    with pytest.raises(ValueError, match="29 targets for 28 rows"):
        mlm.linear_cross_entropy(hidden, weight, bias, torch.randint(50, (29,)))


def test_masked_lm_loss_pads_its_rows_to_a_few_shapes(tokenizer, monkeypatch):
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "mlm", tokenizer=tokenizer)
    head = model.mlm_head
    shapes = []
    original = mlm._LinearCrossEntropy.apply
    monkeypatch.setattr(mlm._LinearCrossEntropy, "apply",
                        staticmethod(lambda h, w, b, t: shapes.append(h.shape[0]) or original(h, w, b, t)))
    hidden = torch.randn(2, 40, model.encoder.config.hidden_size, requires_grad=True)
    for count in (1, 31, 32, 33, 70):
        labels = torch.full((2, 40), -100)
        labels.view(-1)[torch.randperm(80)[:count]] = torch.randint(head.vocab_weight.shape[0], (count,))
        selected = labels != -100
        reference = torch.nn.functional.cross_entropy(head(hidden[selected]), labels[selected])
        assert torch.allclose(mlm.masked_lm_loss(hidden, labels, head), reference, atol=1e-5)
    assert shapes == [32, 32, 32, 64, 96]


def test_linear_cross_entropy_refuses_a_second_backward():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = mlm.linear_cross_entropy(hidden, torch.randn(10, 8), None, torch.randint(10, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_float32_logits_equal_the_head_in_float32(tokenizer):
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "bow", tokenizer=tokenizer)
    hidden = torch.randn(3, model.encoder.config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.mlm_head.float32_logits(hidden)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, model.mlm_head(hidden), atol=1e-5)


def test_enhanced_decoding_streams(tokenizer):
    """The content stream holds the sentence embedding, then the ORIGINAL (unmasked) tokens; the query
    stream holds only the sentence embedding and positions, nothing of the tokens."""
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae", tokenizer=tokenizer).eval()
    batch = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))(
        [{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES])
    seen = {}

    def spy(module, args):
        seen["query"], seen["content"], seen["mask"] = args

    model.heads["retromae"].register_forward_pre_hook(spy)
    sentences = {}
    model.encoder.register_forward_hook(lambda m, a, out: sentences.update(cls=out.last_hidden_state[:, 0]))
    with torch.no_grad():
        model(**batch)
    original = torch.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"])
    assert (original != batch["input_ids"]).any(), "the encoder input is masked"
    embeddings = model.encoder.embeddings
    with torch.no_grad():
        tokens = embeddings(input_ids=original)
        n, t = original.shape
        positions = embeddings.position_embeddings.weight[:t] + embeddings.token_type_embeddings.weight[0]
        expected_query = embeddings.LayerNorm(sentences["cls"][:, None, :] + positions[None])
    torch.testing.assert_close(seen["content"][:, 1:], tokens[:, 1:])
    torch.testing.assert_close(seen["content"][:, 0], sentences["cls"])
    torch.testing.assert_close(seen["query"], expected_query)
    assert seen["mask"].shape == (n, 1, t, t)


def test_the_decoder_gets_the_enhanced_decoding_matrix_of_its_options(tokenizer):
    # the matrix the model hands its decoder, at a ratio other than the default: no row sees itself,
    # every row sees the sentence embedding, and each real row sees round((1 - r) * candidates) tokens
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "retromae", tokenizer=tokenizer,
                                       decoder_mask_ratio=0.7).eval()
    batch = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))(
        [{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES])
    seen = {}
    model.heads["retromae"].register_forward_pre_hook(lambda module, args: seen.update(mask=args[2]))
    with torch.no_grad():
        model(**batch)
    mask = seen["mask"][:, 0]
    assert mask.dtype == torch.bool
    assert not mask.diagonal(dim1=1, dim2=2)[:, 1:].any()
    assert mask[..., 0].all()
    for row_mask, length in zip(mask, batch["attention_mask"].sum(1).tolist()):
        visible = row_mask[1:length, 1:].sum(-1)  # the real rows to reconstruct, over the token columns
        assert (visible == round(0.3 * (length - 2))).all()
        assert not row_mask[:, length:].any()  # padding is never seen


def test_cotmae_decodes_each_span_from_its_neighbours_embedding(tokenizer):
    assert neighbour(torch.arange(6)).tolist() == [3, 4, 5, 0, 1, 2]
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), "cotmae", tokenizer=tokenizer).eval()
    batch = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))(
        [{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES])
    seen, sentences = {}, {}
    model.heads["cotmae"].register_forward_pre_hook(lambda module, args: seen.update(hidden=args[0]))
    model.encoder.register_forward_hook(lambda m, a, out: sentences.update(cls=out.last_hidden_state[:, 0]))
    with torch.no_grad():
        model(**batch)
    rows = sentences["cls"].shape[0]
    assert rows == 2 * len(SENTENCES)
    partner = [(r + rows // 2) % rows for r in range(rows)]
    torch.testing.assert_close(seen["hidden"][:, 0], sentences["cls"][partner])
    assert not torch.allclose(seen["hidden"][:, 0], sentences["cls"])


@pytest.mark.parametrize("spec", ["mlm", "bow", "retromae+bow", "dupmae", "cotmae"])
def test_a_model_loaded_in_bf16_runs_without_autocast(tokenizer, spec):
    torch.manual_seed(0)
    model = PretrainModel.from_encoder(tiny_config(tokenizer), spec, tokenizer=tokenizer).to(torch.bfloat16)
    collator = model.collator(max_length=32, generator=torch.Generator().manual_seed(0))
    output = model(**collator([{"input_ids": tokenizer(s, add_special_tokens=False)["input_ids"]} for s in SENTENCES]))
    output["loss"].backward()
    assert torch.isfinite(output["loss"]).item()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
