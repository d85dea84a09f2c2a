"""`trail train`: fine-tune TRAIL (arXiv 2602.04225) on an event log and save it under artifacts/models/.

Only argument parsing and progress bars here; the work is `models.train.train`. Heavy imports (torch,
transformers) happen inside `run` so `trail --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the TRAIL forecaster + explainer (tiny from scratch, or SmolLM2 with LoRA)",
        description="Train TRAIL on the boundaries before the first backtest origin and save weights "
        "(safetensors), tokenizer, config and a model card to --out (default artifacts/models/trail-BASE).",
    )
    p.add_argument("--dataset", default="ml-100k", help="ml-100k or a click-event JSONL/Parquet log (default ml-100k)")
    p.add_argument("--base", choices=("tiny", "smollm2"), default="tiny",
                   help="tiny: a few-million-parameter Llama from scratch; smollm2: SmolLM2-135M-Instruct + LoRA")
    p.add_argument("--no-contrastive", action="store_true", help="turn the contrastive loss off (ablation)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default artifacts/models/trail-BASE[-nocontrastive] in the repo)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps, which decide the model (default: tiny 700, ~4 minutes on 2 cores; "
                   "smollm2 600, ~51 minutes)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training rows (instead of --steps)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forecast batch (32 tiny, 16 smollm2)")
    p.add_argument("--explain-rows", type=int, default=None, help="rows per step with the explanation loss")
    p.add_argument("--contrastive-rows", type=int, default=None, help="rows per step in the contrastive loss")
    p.add_argument("--lr", type=float, default=None, help="language-model learning rate (LoRA for smollm2)")
    p.add_argument("--head-lr", type=float, default=None, help="learning rate of the prefix, head and projections")
    p.add_argument("--explain-token-share", type=float, default=None,
                   help="share of the rationale's word tokens in the loss (numbers and directions always count)")
    p.add_argument("--output-vocab", choices=("all", "rationales"), default=None,
                   help="the generator's output tokens: all 49k, or only those the rationale templates write "
                   "(default: tiny rationales, smollm2 all)")
    p.add_argument("--copy-path", action=argparse.BooleanOptionalAction, default=None,
                   help="a pointer that copies tokens (numbers) from the prompt's evidence line beside the output "
                   "vocabulary (default: tiny on, smollm2 off; needs --output-vocab rationales)")
    p.add_argument("--no-descriptor", action="store_true",
                   help="rationale targets call the item 'it', never 'this 1995 action thriller'")
    p.add_argument("--forecast-base", choices=("none", "ema", "reddit-decay"), default=None,
                   help="forecast a log1p correction on top of this counting baseline instead of the count itself "
                   "(default none)")
    p.add_argument("--share-weight", type=float, default=None,
                   help="> 0: draw each batch from one boundary and add this weight x a listwise loss on each "
                   "item's share of the batch's next-bucket total (default: tiny 0.5, smollm2 0 = off)")
    p.add_argument("--explain-top-share", type=float, default=None,
                   help="share of each step's explanation rows drawn from the rows with the highest next counts of "
                   "their boundary (the counts a stream's top-K explains; default: tiny 0.25, smollm2 0)")
    p.add_argument("--contrastive-weight", type=float, default=None, help="weight of the InfoNCE loss (0.5)")
    p.add_argument("--origins", dest="n_origins", type=int, default=None,
                   help="backtest origins kept out of training (default 50; match `trail backtest --origins`)")
    p.add_argument("--val-days", type=int, default=None, help="validation boundaries held out (default 7)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time cap in minutes: stops a run short with a warning, never shapes it (default: tiny 8, "
                   "smollm2 100; 0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the training steps run (default cpu; cuda on a machine with an NVIDIA GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the model card as JSON at the end")
    p.set_defaults(func=run)


PLAIN_EVERY = 50   # training steps between two progress lines when there is no terminal to draw bars on


def plain_progress_line(done: int, total: int, elapsed_s: float, losses: str) -> str:
    """One progress line of the training loop, for logs and pipes: steps, time so far and left, the losses."""
    left = elapsed_s / done * (total - done) if done else 0.0
    return (f"train {done}/{total} steps, {elapsed_s:.0f} s elapsed, ~{left:.0f} s left"
            + (f", {losses}" if losses else ""))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from models import train as trainer
    from models.train_config import TrainConfig

    cfg = TrainConfig.for_base(
        args.base, dataset=args.dataset, contrastive=not args.no_contrastive, seed=args.seed, steps=args.steps,
        epochs=args.epochs, batch_size=args.batch_size, explain_rows=args.explain_rows,
        contrastive_rows=args.contrastive_rows, lr=args.lr, head_lr=args.head_lr,
        contrastive_weight=args.contrastive_weight, explain_token_share=args.explain_token_share,
        output_vocab=args.output_vocab, copy_path=args.copy_path, forecast_base=args.forecast_base,
        share_weight=args.share_weight, explain_top_share=args.explain_top_share,
        descriptor=False if args.no_descriptor else None,
        n_origins=args.n_origins, val_days=args.val_days,
        max_minutes=args.max_minutes, threads=args.threads, device=args.device,
    )
    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console) as bars:
        tasks: dict[str, int] = {}
        current = {"name": ""}

        def on_phase(name: str, total: int) -> None:
            current["name"] = name
            tasks[name] = bars.add_task(name, total=total, info="")

        def on_advance(info: dict) -> None:
            text = " ".join(f"{k} {v:.3f}" for k, v in info.items())
            bars.update(tasks[current["name"]], advance=1, info=text)
            if not console.is_terminal:   # no live bars when stderr is a file or a pipe (e.g. `trail demo | tee`)
                task = bars.tasks[tasks[current["name"]]]
                if current["name"] == "train" and (task.completed % PLAIN_EVERY == 0 or task.finished):
                    console.print(plain_progress_line(int(task.completed), int(task.total or 0),
                                                      task.elapsed or 0.0, text), soft_wrap=True)

        card = trainer.train(cfg, args.out.resolve() if args.out else None,
                             trainer.Progress(on_phase=on_phase, on_advance=on_advance))
    m = card["metrics"]
    hp = card["hyperparameters"]
    if hp["stopped_early"]:
        warning = trainer.cut_short_warning(hp["steps_done"], hp["steps_planned"], hp["max_minutes"])
        console.print(f"[bold red]WARNING: {warning}[/]")
    console.print(f"saved {card['name']} ({card['version']}) to {card['out_dir']} in {card['timing']['total_s']} s")
    if "val_mae" in m:
        console.print(f"validation: MAE {m['val_mae']:.3f} (recent-pop {m['val_mae_recent_pop']:.3f}), "
                      f"faithfulness {m['val_faithfulness']:.3f}, direction {m['val_direction_consistency']:.3f}")
    if "val_top_faithfulness" in m:
        console.print(f"validation, top {m['val_top_explained']} forecasts (what a stream explains): "
                      f"faithfulness {m['val_top_faithfulness']:.3f}, "
                      f"direction {m['val_top_direction_consistency']:.3f}")
    if "val_all_mae" in m:
        best = m["val_all_baselines"]
        console.print(f"validation, all {m['val_all_rows']} rows: MAE {m['val_all_mae']:.3f}, item NDCG@10 "
                      f"{m['val_all_item_ndcg@10']:.3f}; " + ", ".join(
                          f"{k} {v['mae']:.3f} / {v['item_ndcg@10']:.3f}" for k, v in best.items()))
    if args.json:
        print(json.dumps(card, indent=2))
    return 0
