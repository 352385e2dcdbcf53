"""Is one learning rate fair to every arm? Final validation loss of study arms over a grid of peak learning rates.

Each (arm, lr) is the pretraining run ``iiet reproduce`` would train for that arm in a study with that ``--lr``
(``iiet.study.reproduce.train_config``: the same data, order, seed, schedule and, for the compute-matched arms, the
same tokens or depth), so a verdict made at one lr can be checked against each arm's best. Runs are resumable
(rerun the command: finished runs are read, interrupted ones continue from their checkpoints); ``--workers`` trains
that many at once with one CPU thread each. Prints a table and writes ``lr_sweep.json`` and ``lr_sweep.png``.

    OMP_NUM_THREADS=1 python benchmarks/lr_sweep.py --data enwiki-8k-256 --output_dir bench_results/lr_sweep \\
        --arms '[transformer++, iiet-r3, transformer++-deep]' --lrs '[3e-4, 1e-3, 3e-3]' --train_tokens 1200000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

import iiet  # noqa: F401
from iiet.plotting import pyplot, save_figure
from iiet.study.reproduce import train_config
from iiet.study.study import Study, StudyConfig, arm_label
from iiet.train.metrics import read_metrics
from iiet.train.trainer import run_training


def _study(args, lr: float) -> Study:
    return Study(StudyConfig(
        output_dir=str(Path(args.output_dir) / f"lr{lr:g}"), preset=args.preset, data=args.data, seq_len=args.seq_len,
        train_tokens=args.train_tokens, batch_tokens=args.batch_tokens, micro_batch_size=args.micro_batch_size, lr=lr,
        warmup_ratio=args.warmup_ratio, arms=list(args.arms), explicit_first_layer=args.explicit_first_layer,
        compute_matched=True, device="cpu"))


def _train(config, threads: int) -> None:
    torch.set_num_threads(threads)
    run_training(config)


def _final(run_dir: Path) -> dict | None:
    """The finished run's last validation (None while it is unfinished)."""
    if not (run_dir / "final" / "config.json").is_file():
        return None
    records = [r for r in read_metrics(run_dir) if "val_loss" in r]
    return {"val_loss": records[-1]["val_loss"], "tokens": records[-1].get("tokens")} if records else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared data directory (iiet data-prepare)")
    parser.add_argument("--output_dir", default="bench_results/lr_sweep")
    parser.add_argument("--arms", type=yaml.safe_load, default=["transformer++", "iiet-r3"],
                        help="study arms, including transformer++-flops / transformer++-deep")
    parser.add_argument("--lrs", type=yaml.safe_load, default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--train_tokens", type=int, default=1_200_000)
    parser.add_argument("--batch_tokens", type=int, default=4096)
    parser.add_argument("--micro_batch_size", type=int, default=16)
    parser.add_argument("--warmup_ratio", type=float, default=0.05)
    parser.add_argument("--explicit_first_layer", type=yaml.safe_load, default=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if not (Path(args.data) / "meta.json").is_file():
        parser.error(f"--data {args.data}: no prepared data there (meta.json); run iiet data-prepare first.")
    lrs = [float(lr) for lr in args.lrs]
    runs = {(arm, lr): train_config(_study(args, lr), arm, 0) for arm in args.arms for lr in lrs}
    pending = [config for config in runs.values() if _final(Path(config.run.output_dir)) is None]
    if pending:
        workers = max(1, min(args.workers, len(pending)))
        threads = max(1, torch.get_num_threads() // workers)
        print(f"training {len(pending)} runs, {workers} at a time ({threads} thread(s) each)", flush=True)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(_train, config, threads) for config in pending]:
                future.result()

    table = {arm: {f"{lr:g}": _final(Path(runs[arm, lr].run.output_dir)) for lr in lrs} for arm in args.arms}
    out = Path(args.output_dir)
    (out / "lr_sweep.json").write_text(json.dumps({"settings": vars(args), "lrs": lrs,
                                                   "final": table}, indent=1))
    print(f"final validation loss (nats/token), {args.train_tokens:,} tokens, preset {args.preset}")
    print("| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |")
    print("|---|" + "---:|" * (len(lrs) + 1))
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    for arm, row in table.items():
        losses = {lr: row[f"{lr:g}"]["val_loss"] for lr in lrs if row[f"{lr:g}"]}
        finite = {lr: loss for lr, loss in losses.items() if loss == loss}  # a diverged run's loss is NaN
        best = min(finite, key=finite.get) if finite else None
        cells = [f"{losses[lr]:.3f}" if lr in losses else "–" for lr in lrs]
        print(f"| {arm_label(arm)} | " + " | ".join(cells) + (f" | {best:g} |" if best else " | – |"))
        ax.plot(list(losses), list(losses.values()), "o-", label=arm_label(arm))
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])  # the grid's lrs only: log minor-tick labels overlap
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(f"{args.preset}, {args.train_tokens:,} tokens per run", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, out / "lr_sweep.png")
    print(f"wrote {out / 'lr_sweep.json'} and {out / 'lr_sweep.png'}")


if __name__ == "__main__":
    main()
