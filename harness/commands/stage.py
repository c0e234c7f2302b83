"""`harness stage`: one stage on checkpoints, without Ray or MLflow (what a DAG node runs, by hand).

The evaluate and attack stages take their settings' fields as flags (`EvaluateSettings`, `AttackConfig`); the
training stages read a stage config (YAML, `workloads.config.StageConfig`) with `--set` over it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.commands.common import sets
from harness.commands.flags import add_flags, from_flags

DEFAULT_STAGE_CONFIG = str(Path(__file__).resolve().parents[2] / "workloads" / "configs"
                           / "fashion-mnist-transfer.yaml")


def add(p: argparse.ArgumentParser) -> None:
    from workloads.attacks import AttackConfig
    from workloads.evaluate import EvaluateSettings

    which = p.add_subparsers(dest="stage", required=True, metavar="{pretrain,finetune,evaluate,attack}")

    def training(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=DEFAULT_STAGE_CONFIG,
                       help="YAML stage config (default: the embedded Fashion-MNIST class-split transfer)")
        sets(q, "config", "--set finetune.epochs=1")
        q.add_argument("--out", required=True, help="checkpoint to write")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    training(which.add_parser("pretrain", help="BP training on the source classes"))
    f = which.add_parser("finetune", help="new head, every layer fine-tuned under a learning rule; evaluates")
    f.add_argument("pretrained", nargs="?", default=None, help="pretrain checkpoint (default: config's weights)")
    f.add_argument("--rule", required=True, help="a learning rule, e.g. bp, usf, frsf, brsf")
    training(f)
    e = which.add_parser("evaluate", help="clean top-1 or mAP@k of a fine-tuned checkpoint, and its diagnostics")
    e.add_argument("checkpoint")
    e.add_argument("--device", default=None, help="default: the checkpoint's own")
    add_flags(e, EvaluateSettings)
    a = which.add_parser("attack", help="robustness of a fine-tuned checkpoint to one attack over an eps grid",
                         description="Attacks the first N target test images at every eps of the grid and prints one "
                         "row per eps (robust accuracy or mAP, success rate, perturbation sizes, queries) plus the "
                         "cosine between the rule's and the exact input gradient.")
    a.add_argument("checkpoint")
    add_flags(a, AttackConfig, skip={"params"},
              extra={"n": {"flags": ("-n", "--images")}, "images": {"flags": ("--only-images",)}})
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an attack parameter, e.g. --param steps=50 (docs/extending.md lists each attack's)")
    a.add_argument("--sibling", default=None, help="the checkpoint of the twin fine-tuned with the baseline "
                   "rule, bp by default (needed by --source transfer)")
    a.add_argument("--out", default=None, help="also write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    from harness.execution.allocator import keep_freed_memory

    keep_freed_memory()
    if args.stage == "evaluate":
        from workloads.evaluate import EvaluateSettings, evaluate_checkpoint

        settings = from_flags(args, EvaluateSettings, "harness stage evaluate")
        print(json.dumps(evaluate_checkpoint(args.checkpoint, settings, device=args.device), indent=1))
        return 0
    if args.stage == "attack":
        return _attack(args)
    from harness.config.overrides import assign, read_mapping
    from workloads import train
    from workloads.checkpoint import load_checkpoint
    from workloads.config import stage_config

    cfg = stage_config(assign(read_mapping(args.config, "stage config"), args.sets, args.config), args.config)
    if args.stage == "pretrain":
        path = train.pretrain(cfg, args.out, progress=not args.quiet)
    else:
        path = train.finetune(args.pretrained, args.rule, cfg, args.out, progress=not args.quiet)
    ckpt = load_checkpoint(path)
    print(json.dumps({"checkpoint": str(path), "metrics": ckpt["metrics"], "history": ckpt["history"]}, indent=1))
    return 0


def _attack(args: argparse.Namespace) -> int:
    from harness.config.overrides import assign
    from workloads.attacks import AttackConfig, run_config, write_outcomes
    from workloads.files import atomic_write_text

    params = assign({}, args.param, "harness stage attack", flag="--param")
    cfg = from_flags(args, AttackConfig, "harness stage attack", params=params)
    result = run_config(cfg, args.checkpoint, args.sibling)
    metric = result["metric"]
    print(f"{'eps':>6} {metric:>10} {'success':>8} {'linf':>7} {'l2':>7} {'queries':>8}")
    for r in result["rows"]:
        print(f"{r['eps']:>6.3f} {r[metric]:>10.4f} {r['success_rate']:>8.3f} {r['linf']:>7.4f} {r['l2']:>7.3f}"
              f" {r['queries']:>8.0f}")
    if result["diagnostics"]:
        print(f"rule vs exact input-gradient cosine: {result['diagnostics']['input_grad_cosine_mean']:.3f}")
    outcomes = result.pop("outcomes")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
        table = write_outcomes(outcomes, Path(args.out).with_suffix(".parquet"))
        print(f"wrote {args.out} and the per-image outcomes {table}")
    return 0
