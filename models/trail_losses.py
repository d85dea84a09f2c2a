"""The TRAIL model's training losses: forecast (L1 on log1p), listwise share, explanation tokens, InfoNCE.

Pure functions of tensors and the model (`models.trail`); the training step (`models.train_step`) weighs and
sums them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.trail import CopyContext, TrailModel


def forecast_loss(forecast_log1p: torch.Tensor, target_count: torch.Tensor) -> torch.Tensor:
    """L1 on the log1p scale: its minimiser is the median count (log1p is monotone), the MAE-optimal point forecast."""
    return F.l1_loss(forecast_log1p, torch.log1p(target_count.float()))


def share_loss(forecast_log1p: torch.Tensor, target_count: torch.Tensor) -> torch.Tensor:
    """Listwise (ListNet-style) loss over rows of one boundary: the cross-entropy between each item's share of
    the rows' true next-bucket total and the softmax of the log1p forecasts (about each forecast's share of
    the forecast total, for counts well above 1). It scores the ranking, not the volume; 0 when no row had an
    interaction."""
    target = target_count.float()
    total = target.sum()
    if float(total) <= 0:
        return forecast_log1p.sum() * 0.0
    return -(target / total * F.log_softmax(forecast_log1p, dim=-1)).sum()


def explanation_loss(model: TrailModel, h: torch.Tensor, labels: torch.Tensor,
                     copy: CopyContext | None = None) -> torch.Tensor:
    """Next-token cross-entropy on the explanation tokens only (labels -100 elsewhere), over the output
    vocabulary (and the copy path's pointer, when given: h is then the last positions of its context)."""
    predict = labels[:, 1:] != -100
    if copy is not None:
        logits = model.output_logits(h, copy)[:, :-1][predict]
    else:
        logits = model.output_logits(h[:, :-1][predict])
    targets = labels[:, 1:][predict]
    if model.restricted_output:
        targets = model.output_index[targets]
        if bool((targets < 0).any()):
            missing = sorted(set(labels[:, 1:][predict][targets < 0].tolist()))
            raise ValueError(f"explanation targets hold token ids {missing[:10]} outside the model's output "
                             "vocabulary (TrailConfig.output_ids); rebuild it from the rationale templates")
    return F.cross_entropy(logits.float(), targets)


def info_nce(forecast_rep: torch.Tensor, positive_rep: torch.Tensor, hard_rep: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """InfoNCE: row i's forecast against its own explanation (positive), the other rows' explanations and
    every hard negative of the batch ([B, K, D]: same item, flipped direction / wrong magnitude)."""
    candidates = torch.cat([positive_rep, hard_rep.reshape(-1, hard_rep.shape[-1])], dim=0)
    logits = forecast_rep @ candidates.T / temperature
    return F.cross_entropy(logits, torch.arange(forecast_rep.shape[0], device=forecast_rep.device))
