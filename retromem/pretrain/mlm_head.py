"""The vocabulary head of pretraining: the checkpoint's MLM transform, projected onto the word embeddings.

The projection is tied to the encoder's word embeddings *through the module structure*: the head
reads the embedding matrix at call time instead of registering a second reference to it, so
``state_dict()`` holds each tensor once (see :mod:`retromem.pretrain.model`).
"""

from __future__ import annotations

import torch
from torch import nn

from retromem.errors import RetromemError


class MLMHead(nn.Module):
    """Vocabulary head: the checkpoint's transform, then a projection onto the word embeddings.

    ``transform`` is the MaskedLM model's head with its output projection replaced by an identity
    (for BERT: dense + activation + LayerNorm). The projection matrix is the encoder's word
    embedding matrix, read through an unregistered reference (so it appears once in a state dict),
    unless the checkpoint does not tie them, in which case the head owns ``weight``.
    """

    def __init__(
        self, transform: nn.Module, bias: torch.Tensor, embeddings: nn.Embedding, weight: torch.Tensor | None = None
    ):
        super().__init__()
        self.transform = transform
        self.bias = nn.Parameter(bias)
        self.weight = nn.Parameter(weight) if weight is not None else None
        self.__dict__["_embeddings"] = embeddings  # deliberately not a submodule: the tie lives in the encoder

    @property
    def vocab_weight(self) -> torch.Tensor:
        """The (V, H) output projection."""
        return self.weight if self.weight is not None else self._embeddings.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.transform(hidden), self.vocab_weight, self.bias)

    def float32_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits in float32, outside autocast: for a few rows (one per text, as bag-of-words uses).

        Under autocast the (V, H) matrix would be cast to the low precision for the product and its
        gradient cast back, two passes over the whole matrix (47 MB for MiniLM) that cost more than
        the float32 product of a few rows.
        """
        with torch.autocast(hidden.device.type, enabled=False):
            low = next((p.dtype for p in self.transform.parameters() if p.dtype in (torch.float16, torch.bfloat16)),
                       None)
            if low is not None:  # a model loaded in half precision: the transform runs in it, the product in float32
                transformed = self.transform(hidden.to(low)).float()
                return nn.functional.linear(transformed, self.vocab_weight.float(), self.bias.float())
            return nn.functional.linear(self.transform(hidden.float()), self.vocab_weight, self.bias)

    @classmethod
    def from_masked_lm(cls, mlm_model: nn.Module, encoder: nn.Module, tied: bool | None = None) -> MLMHead:
        """Take the head out of an ``AutoModelForMaskedLM`` and tie it to ``encoder``'s word embeddings."""
        base = mlm_model.base_model
        children = [m for m in mlm_model.children() if m is not base and any(True for _ in m.parameters())]
        output = mlm_model.get_output_embeddings()
        if len(children) != 1 or output is None:
            raise RetromemError(
                f"{type(mlm_model).__name__}: cannot find a single MLM head module beside the encoder; "
                "pretraining supports BERT/RoBERTa-style heads"
            )
        head = children[0]
        if tied is None:
            tied = output.weight is mlm_model.get_input_embeddings().weight
        bias = output.bias.detach().clone() if output.bias is not None else torch.zeros(output.weight.shape[0])
        weight = None if tied else output.weight.detach().clone()
        _replace_module(head, output, nn.Identity())
        if output.bias is not None:  # BERT/RoBERTa also register the same bias on the head itself
            _remove_parameter(head, output.bias)
        return cls(head, bias, encoder.get_input_embeddings(), weight)


def _replace_module(root: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    for name, module in list(root.named_modules()):
        if module is target and name:
            parent_name, _, leaf = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, leaf, replacement)
            return
    raise RetromemError("the MLM head's output projection is not inside its head module")


def _remove_parameter(root: nn.Module, target: torch.Tensor) -> None:
    for name, param in list(root.named_parameters(remove_duplicate=False)):
        if param is target or (param.device.type != "meta" and param.data_ptr() == target.data_ptr()):
            parent_name, _, leaf = name.rpartition(".")
            delattr(root.get_submodule(parent_name) if parent_name else root, leaf)
