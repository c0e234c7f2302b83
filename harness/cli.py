"""`harness`: the command line. Subcommands import their heavy dependencies lazily, so `--help` is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed as ratios to a baseline run in the same process")
    which = bench.add_subparsers(dest="bench", required=True, metavar="{rules}")
    r = which.add_parser(
        "rules",
        help="training-step and input-gradient cost of each learning rule vs plain PyTorch BP",
        description="Times one training step (forward, backward, Adam) and one input-gradient step (an attack's "
        "d loss/d input with parameters requiring grad) for each rule, interleaved with a plain-autograd twin of "
        "the same model, and prints the ratios of medians. Runs without Ray; works on CUDA.",
    )
    r.add_argument("--backbones", type=_csv, default=["resnet18"], help="comma list (default: resnet18; also "
                   "alexnet, vgg16, any torchvision classification model)")
    r.add_argument("--rules", type=_csv, default=None, help="comma list (default: every registered rule)")
    r.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default: 30)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    r.add_argument("--image-size", type=int, default=None, help="override the per-backbone image size")
    r.add_argument("--batch-size", type=int, default=None, help="override the per-backbone batch size")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="results/bench/rules.json", help="JSON output (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for sign-symmetry learning rules as robust fine-tuners (arXiv 2502.05925).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_bench(sub)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    from harness.runtime import tune_allocator

    tune_allocator()
    if args.bench == "rules":
        import rules
        from harness.bench import rules as bench_rules

        names = args.rules or rules.available_rules()
        for n in names:
            rules.get_rule(n)  # unknown names fail here, before any model is built
        result = bench_rules.run(
            args.backbones, names, device=args.device, rounds=args.rounds, image_size=args.image_size,
            batch_size=args.batch_size, seed=args.seed, log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        print(bench_rules.format_table(result))
        path = bench_rules.write_json(result, args.out)
        print(f"wrote {path}")
        return 0
    raise AssertionError(args.bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return _run_bench(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
