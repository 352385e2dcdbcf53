"""The slow start of IIET: which change lets it leave the unigram plateau as early as Transformer++ (docs/training.md).

Trains each variant on the same data, order, seed and learning-rate schedule (the schedule of a ``--train_tokens``
run), stops all of them at ``--stop_tokens`` (with a checkpoint: rerunning continues or skips), and reports the
validation loss along the way plus a diagnostic of layer 0: the cosine between its last iterate and its input (how
much of the token's own embedding survives the first layer) and between its last two iterates (convergence).

    python benchmarks/slow_start.py --data enwiki-8k-256 --output_dir bench_results/slow_start

Variants (``--variants``): ``NAMES`` below (``variants()`` says what each changes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import iiet  # noqa: F401
from iiet.data import PackedDataset
from iiet.models.names import resolve
from iiet.models.presets import PRESETS
from iiet.plotting import pyplot, save_figure
from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from iiet.train.trainer import Trainer

NAMES = ["transformer++", "iiet-r3", "iiet-r3-init0.1", "iiet-r3-emb16", "iiet-r3-normalized", "iiet-r3-explicit-first"]


def variants(num_layers: int) -> dict[str, tuple[dict, dict, str]]:
    """variant -> (scheme, model config overrides, label): a named model (iiet.models.names) and what it changes."""
    def named(name: str, overrides: dict | None = None, change: str = "", **scheme_changes) -> tuple[dict, dict, str]:
        model = resolve(name, num_layers)
        return {**model.scheme, **scheme_changes}, overrides or {}, model.label + (f", {change}" if change else "")

    return {
        "transformer++": named("transformer++"),
        "iiet-r3": named("iiet-r3", change="as in the paper"),
        "iiet-r3-init0.1": named("iiet-r3", {"residual_init_scale": 0.1}, "residual_init_scale 0.1"),
        "iiet-r3-emb16": named("iiet-r3", {"embedding_multiplier": 16.0}, "embedding_multiplier 16"),
        "iiet-r3-normalized": named("iiet-r3", change="normalized history", history="normalized"),
        "iiet-r3-explicit-first": named("iiet-r3-fl"),
    }


@torch.no_grad()
def layer0_diagnostic(model, ids: torch.Tensor) -> dict[str, float]:
    """Cosine(last iterate of layer 0, its input) and cosine(last two iterates of layer 0)."""
    model.eval()
    states = model.model(ids, output_iterations=True).iterations[0]
    cos = torch.nn.functional.cosine_similarity
    out = {"cos_output_input": cos(states[-1], states[0], dim=-1).mean().item()}
    if len(states) > 2:
        out["cos_last_two_iterates"] = cos(states[-1], states[-2], dim=-1).mean().item()
    model.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared data directory (iiet data-prepare)")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--variants", nargs="+", default=NAMES, choices=NAMES)
    parser.add_argument("--train_tokens", type=int, default=1_200_000, help="length of the lr schedule, in tokens")
    parser.add_argument("--stop_tokens", type=int, default=475_136, help="where every variant stops")
    parser.add_argument("--batch_tokens", type=int, default=4096)
    parser.add_argument("--micro_batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_batches", type=int, default=50, help="validation batches per evaluation")
    parser.add_argument("--output_dir", default="bench_results/slow_start")
    args = parser.parse_args()

    out = Path(args.output_dir)
    steps = args.train_tokens // args.batch_tokens
    stop = args.stop_tokens // args.batch_tokens
    probe = torch.stack([PackedDataset(args.data, split="val")[i] for i in range(4)])
    table = variants(PRESETS[args.preset]["num_hidden_layers"])
    results = {}
    for name in args.variants:
        scheme, overrides, label = table[name]
        config = TrainConfig(
            model=ModelConfig(preset=args.preset, scheme=scheme, overrides=overrides),
            data=DataConfig(path=args.data),
            optim=OptimConfig(lr=args.lr, warmup_ratio=0.05, batch_tokens=args.batch_tokens,
                              micro_batch_size=args.micro_batch_size, max_steps=steps),
            run=RunConfig(output_dir=str(out / name), seed=args.seed, device="cpu", eval_every=max(1, steps // 10),
                          eval_batches=args.eval_batches, checkpoint_every=max(1, steps // 5), log_every=5,
                          progress_bar=False),
        )
        trainer = Trainer(config)  # resumes from the run's last checkpoint, if any
        try:
            trainer.fit(until_step=stop)
            end = layer0_diagnostic(trainer.model, probe)
        finally:
            trainer.close()
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        curve = {r["tokens"]: r["val_loss"] for r in rows if "val_loss" in r and r["step"] <= stop}
        results[name] = {"label": label, "val_loss": curve, "layer0_at_stop": end}
        print(f"{label:<50} val loss {list(curve.values())[-1]:.3f}  layer 0 {end}", flush=True)

    (out / "slow_start.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    tokens = sorted({t for r in results.values() for t in r["val_loss"]})
    lines = ["| variant | " + " | ".join(f"{t / 1e3:.0f}k" for t in tokens) + " | layer 0: cos(out, in) | "
             "cos(last two iterates) |", "|---" * (len(tokens) + 3) + "|"]
    for r in results.values():
        cells = [f"{r['val_loss'][t]:.3f}" if t in r["val_loss"] else "-" for t in tokens]
        d = r["layer0_at_stop"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {d['cos_output_input']:.2f} | "
                     + (f"{d['cos_last_two_iterates']:.3f}" if "cos_last_two_iterates" in d else "-") + " |")
    (out / "slow_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, out / "slow-start.png")


def _plot(results: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for r in results.values():
        ax.plot([t / 1e3 for t in r["val_loss"]], list(r["val_loss"].values()), "o-", label=r["label"])
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Leaving the unigram plateau (same data, seed and lr schedule)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
