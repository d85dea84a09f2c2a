"""The hyper-parameters of one TRAIL training run (`TrainConfig`) and each base's measured defaults.

Every field goes into the model card. No torch, no data and no I/O here (see `models.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.backtest_data import DEFAULT_ORIGINS


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (all of them go into the model card)."""

    dataset: str = "ml-100k"
    base: str = "tiny"
    contrastive: bool = True
    seed: int = 0
    steps: int = 0                    # 0: from epochs
    epochs: float = 0.0               # 0: the base's default steps
    batch_size: int = 64              # rows in the forecast pass
    explain_rows: int = 16            # rows (of those) with the explanation loss
    contrastive_rows: int = 16        # rows (of those) in the contrastive loss
    lr: float = 2e-3                  # language model (LoRA adapters for smollm2)
    head_lr: float = 2e-3             # numeric prefix, forecast head, projections
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    lm_weight: float = 1.0
    explain_top_share: float = 0.0    # share of the explanation rows drawn from each boundary's top rows
    explain_top_n: int = 20           # ... the rows with the `explain_top_n` highest next counts of a boundary
    explain_token_share: float = 1.0  # share of the rationale's word tokens in the loss (numbers, signs and
                                      # direction words always count); < 1 spends the LM head on grounding
    contrastive_weight: float = 0.5
    forecast_jitter: float = 0.25     # log-normal sigma on the training forecast in the evidence line
    encoder_grad: bool = False        # backpropagate the contrastive loss through the explanation encoder too
    output_vocab: str = "all"         # "all" tokens, or "rationales": only those the rationale templates write
    copy_path: bool = False           # a pointer over the prompt's tokens beside the vocabulary (needs rationales)
    share_weight: float = 0.0         # > 0: each batch comes from one boundary, plus this x the listwise share loss
    forecast_base: str = "none"       # the head forecasts a log1p correction on top of "ema" / "reddit-decay"
    descriptor: bool = True           # rationale targets may name the item ("this 1995 action thriller")
    lora_r: int = 16
    lora_alpha: int = 32
    n_origins: int = DEFAULT_ORIGINS  # backtest origins to keep out of training (the first one is the cutoff)
    val_days: int = 7                 # validation boundaries (slots) held out at the end of the range
    val_rows: int = 2000              # validation rows scored at the end (a seeded sample)
    val_explained_per_boundary: int = 16  # 7 boundaries x 16: 112 validation explanations
    max_minutes: float = 0.0          # time cap: stops a run short (with a warning), never shapes it; 0: none
    threads: int = 0                  # torch threads; 0: torch's default
    device: str = "cpu"               # "cpu" | "cuda": where the training steps run (validation and saving on CPU)

    @classmethod
    def for_base(cls, base: str, **overrides) -> TrainConfig:
        """Defaults measured on the 2-core machine: tiny trains in minutes; smollm2 uses LoRA and small batches.

        The step count decides the model (same seed, same steps: same weights); each base's time cap is
        about twice its measured run, a guard against a stalled machine, not a budget to fill.
        """
        defaults: dict = {"base": base}
        if base == "smollm2":
            # 600 steps at 5.0 s each took 50.9 minutes on 2 cores; the cap stops a run that takes twice that
            defaults.update(batch_size=16, explain_rows=4, contrastive_rows=8, lr=5e-4, head_lr=1e-3, val_rows=1000,
                            max_minutes=100.0)
        else:
            # docs/trail-model.md "The tiny generator in its fixed steps": the output vocabulary of the rationale
            # templates (129 ids instead of the 49k-way head) and fused AdamW made a step cheap enough for 32
            # explanation rows with every rationale token labelled (0.32 s per step on 2 cores: 700 steps in ~4
            # minutes), and the copy path, which copies the evidence line's numbers, took validation faithfulness
            # from 0.06 to 0.99-1.00 (two seeds). Targets call the item "it": the descriptor ("this 1995 action
            # thriller") measured worse in the same steps.
            # docs/trail-model.md "Forecast levers (issue 13)": batches from one boundary with the listwise share
            # loss at weight 0.5 beat plain L1 on validation MAE and item NDCG@10 on both seeds tried (0 and 1).
            # docs/trail-model.md "The demo's stream (issue 14)": with it, the explanations of the stream's top-10
            # (counts 10-75, which uniform rows rarely hold) failed the checker 6 % of the time; a quarter of the
            # explanation rows from each boundary's top-20 next counts took that to under 1 %.
            defaults.update(batch_size=32, explain_rows=32, contrastive_rows=8, explain_token_share=1.0,
                            output_vocab="rationales", copy_path=True, descriptor=False, max_minutes=8.0,
                            share_weight=0.5, explain_top_share=0.25)
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)

    def default_steps(self) -> int:
        return 600 if self.base == "smollm2" else 700

