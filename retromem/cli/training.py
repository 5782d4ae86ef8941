"""The ``training`` option group of ``retromem pretrain`` and ``retromem finetune``: the command's own
optimisation options, then those every training run has (:class:`retromem.pretrain.run_settings.RunSettings`),
each built from its declaration."""

from __future__ import annotations

from retromem.cli.options import add_options
from retromem.options import option_specs
from retromem.pretrain.run_settings import RunSettings

#: The options every training run has, in the order the group shows them.
RUN_OPTIONS = tuple(option_specs(RunSettings))


def add_training_options(parser, cls: type, own: tuple[str, ...] = ()) -> None:
    """Add the ``training`` group of ``cls`` (a :class:`RunSettings` subclass): ``own`` fields, then the run's."""
    add_options(parser.add_argument_group("training"), cls, only=(*own, *RUN_OPTIONS))
