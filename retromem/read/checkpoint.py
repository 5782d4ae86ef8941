"""A reader on disk: an HF-style folder, and the check that a memory is the one the reader reads.

Layout::

    config.json          the encoder's Hugging Face config (AutoConfig reads it)
    tokenizer files      the encoder's tokenizer
    model.safetensors    every weight of the reader (encoder, live layers, head, decoder)
    decoder/config.json  the generative head's decoder config (and a seq2seq model's tokenizer)
    reader.json          artifact metadata (kind ``reader``): the memory's encoder (fingerprint...),
                         ``spec`` (:class:`retromem.read.reader_config.ReaderSpec`: k, head, labels, lengths,
                         the memory's layer and codec) and what training recorded

A reader reads only a memory of its encoder, its layer and its codec (:func:`require_memory`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from retromem.artifacts import ArtifactMeta, EncoderInfo
from retromem.errors import MismatchError, MissingDataError
from retromem.read.reader_config import MemoryInfo, ReaderSpec

META_FILE = "reader.json"
WEIGHTS_FILE = "model.safetensors"
DECODER_DIR = "decoder"
#: What the memory's encoder must share with the one the reader was trained on.
MEMORY_ENCODER_FIELDS = ("fingerprint", "max_length", "passage_prefix", "dim")


def save_reader(reader: Any, folder: str | Path, details: Mapping[str, Any] | None = None) -> Path:
    """Write ``reader`` (a :class:`retromem.read.model.MemoryReader`) to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reader.encoder.config.save_pretrained(folder)
    if getattr(reader.encoder, "_auto_class", None):  # a model of its own code: the folder keeps a copy of it
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(reader.encoder, folder, config=reader.encoder.config)
    reader.tokenizer.save_pretrained(folder)
    if reader.spec.head == "generative":
        decoder = reader.head.decoder
        decoder.config.save_pretrained(folder / DECODER_DIR)
        if reader.head.seq2seq:
            reader.head.answer_tokenizer.save_pretrained(folder / DECODER_DIR)
    state = {name: tensor.detach().contiguous().clone() for name, tensor in reader.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    spec = reader.spec
    meta = ArtifactMeta(kind="reader",
                        encoder=EncoderInfo.from_dict(spec.memory.encoder) if spec.memory else None,
                        details={"spec": spec.to_json(), **dict(details or {})})
    meta.write(folder / META_FILE)
    return folder


def read_reader_meta(folder: str | Path) -> ArtifactMeta:
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise MissingDataError(f"{folder} is not a reader folder (no {META_FILE}): give the final/ folder of "
                               "`retromem read train`")
    return ArtifactMeta.read(path, "reader")


def load_reader(folder: str | Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> Any:
    """The reader saved in ``folder`` (built from its configs, then its weights loaded); ``trust_remote_code``
    runs the copy of its encoder's own code the folder holds (a reader of such an encoder needs it)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from retromem.model_paths import remote_code_refusal
    from retromem.read.model import MemoryReader

    folder = Path(folder)
    meta = read_reader_meta(folder)
    spec = ReaderSpec.from_json(meta.details["spec"])
    with remote_code_refusal(f"the reader {folder}"):
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        encoder = AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        decoder = None
        if spec.head == "generative":
            decoder = _load_decoder(folder / DECODER_DIR, trust_remote_code)
    reader = MemoryReader(spec, encoder, tokenizer, decoder)
    reader.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return reader.to(device).eval()


def start_head_from(reader: Any, folder: str | Path) -> None:
    """Copy the head of the trained reader in ``folder`` into ``reader`` (a new :class:`MemoryReader`): the same
    kind of head over the same hidden size (for classification the same labels, in order; for a generative head
    the same decoder), whatever its k. Refuses (:class:`MismatchError`) a head that does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    theirs = ReaderSpec.from_json(read_reader_meta(folder).details["spec"])
    mine = reader.spec
    fix = "give --init-head a reader trained with the same head, or leave it out (a fresh head)"
    if theirs.head != mine.head:
        raise MismatchError(f"--init-head {folder} has a {theirs.head} head, and this reader a {mine.head} head: {fix}")
    if mine.head == "classification" and theirs.labels != mine.labels:
        raise MismatchError(f"--init-head {folder} was trained on the labels {theirs.labels}, this task has "
                            f"{mine.labels}: {fix}")
    if mine.head == "generative" and (theirs.decoder_model, theirs.decoder_layers) != (mine.decoder_model,
                                                                                      mine.decoder_layers):
        raise MismatchError(f"--init-head {folder} has another decoder (--decoder-model {theirs.decoder_model}, "
                            f"--decoder-layers {theirs.decoder_layers}) than this reader (--decoder-model "
                            f"{mine.decoder_model}, --decoder-layers {mine.decoder_layers}): {fix}")
    state = {name[len("head."):]: tensor for name, tensor in load_file(str(folder / WEIGHTS_FILE)).items()
             if name.startswith("head.")}
    own = reader.head.state_dict()
    shapes = [f"{name} {tuple(state[name].shape)} there, {tuple(own[name].shape)} here"
              for name in own if name in state and state[name].shape != own[name].shape]
    odd = sorted(set(own) ^ set(state))
    if shapes or odd:
        raise MismatchError(f"the head of --init-head {folder} does not fit this reader's "
                            f"({'; '.join(shapes) or 'weights on one side only: ' + ', '.join(odd[:3])}): it was "
                            f"trained over another encoder; {fix}")
    reader.head.load_state_dict(state)


def require_memory(spec: ReaderSpec, encoder: EncoderInfo | Mapping[str, Any] | None, layer: int,
                   codec: Mapping[str, Any], where: str | Path) -> None:
    """Refuse (:class:`MismatchError`) a memory at ``where`` that was made by another encoder, holds another
    layer or another codec than the reader was trained on."""
    if spec.full:
        return  # full re-encoding reads passage text, no memory
    expected = spec.memory
    if expected is None:
        raise MismatchError(f"the reader records no memory, so it cannot read {where}")
    info = encoder.to_dict() if isinstance(encoder, EncoderInfo) else dict(encoder or {})
    diffs = EncoderInfo.from_dict(expected.encoder).differences(info, MEMORY_ENCODER_FIELDS, ("reader", "memory"))
    if diffs:
        raise MismatchError(f"{where} was made by another encoder than the reader reads ({'; '.join(diffs)}): "
                            "build the memory with the reader's encoder (`retromem read memory`)")
    if int(layer) != spec.memory_layer:
        raise MismatchError(f"{where} holds layer {layer}, and the reader (k = {spec.live_layers} live layers of "
                            f"{spec.num_layers}) reads layer {spec.memory_layer}: build the memory with --layer "
                            f"{spec.memory_layer}, or use a reader trained for layer {layer}")
    theirs, mine = codec_identity(codec), codec_identity(expected.codec)
    if theirs != mine:
        raise MismatchError(f"{where} is in codec {theirs}, and the reader was trained on codec {mine}: build the "
                            "memory in the reader's codec, or train a reader on this one")


def codec_identity(codec: Mapping[str, Any]) -> dict[str, Any]:
    """A codec's name, dimension, code size and parameters (not its trained tables, nor how many vectors trained
    it): what must agree between a memory and the reader trained on one like it."""
    out = {k: codec[k] for k in ("name", "dim", "code_size") if k in codec}
    params = {k: v for k, v in dict(codec.get("params") or {}).items() if k != "train_size"}
    if params:
        out["params"] = params
    return out


def memory_info(encoder: EncoderInfo | Mapping[str, Any], layer: int, codec: Mapping[str, Any]) -> MemoryInfo:
    info = encoder.to_dict() if isinstance(encoder, EncoderInfo) else dict(encoder)
    return MemoryInfo(encoder=info, layer=int(layer), codec=codec_identity(codec))


def _load_decoder(folder: Path, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, BertLMHeadModel

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if getattr(config, "is_encoder_decoder", False):
        model = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=trust_remote_code)
        model.retromem_tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return model
    return BertLMHeadModel(config)
