"""The training option group shared by ``retromem pretrain`` and ``retromem finetune``."""

from __future__ import annotations


def add_training_options(p, lr: float, batch: int, save_steps: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides --epochs when > 0)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    g.add_argument("--batch-size", type=int, default=batch, help="examples per device per step")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0: no clipping)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = bf16 (else fp16) on GPUs, bf16 autocast on CPUs with native bf16, else fp32")
    g.add_argument("--seed", type=int, default=42, help="random seed")
    g.add_argument("--save-steps", type=int, default=save_steps, help="checkpoint every N steps")
    g.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    g.add_argument("--logging-steps", type=int, default=50, help="log losses every N steps")
    g.add_argument("--report-to", default="none", help="none, tensorboard, wandb (comma-separated)")
    g.add_argument("--resume", default="auto",
                   help="auto: continue from the newest checkpoint in --output; never; or a checkpoint folder")
