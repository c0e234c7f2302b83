"""`harness plan DAG`: counts the stage nodes of a DAG (the trainings are the minimum the grid needs: one
pretraining per dataset x backbone x seed, one fine-tuning per task x rule on top), how many are already in the
artifact store, and estimates the compute: counted image passes weighted by each backbone's FLOPs, at the rate
`harness bench train` measured here or at --tflops (README, "What a grid costs"). Works before the data is
prepared when the DAG gives `sizes` hints.
"""

from __future__ import annotations

import argparse

from harness.commands.common import dag_args


def add(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    dag_args(p)
    p.add_argument("--tflops", type=float, default=None,
                   help="effective training rate in TFLOP/s to estimate hours with (e.g. measured on your GPU)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="also estimate the wall time on N workers (one trial each, e.g. N GPUs): each stage's nodes "
                   "to run, longest first on the worker free soonest; stages one after another, as `harness run` "
                   "runs them")


def main(args: argparse.Namespace) -> int:
    from harness.execution.orchestrator import locations
    from harness.execution.store import ArtifactStore
    from harness.planning.cost import cost_by_stage, dataset_sizes, measured_rate, node_pflop, wall_hours
    from harness.planning.dag import load_dag
    from harness.planning.plan import build_plan
    from harness.stages import STAGES, ordered
    from workloads import storage

    dag = load_dag(args.dag, args.sets, args.overrides)
    nodes = build_plan(dag, require_data=False)
    _, root = locations(dag, args.out, args.store)
    store = ArtifactStore(storage.join(root, "store"))
    if args.tflops is not None:
        rate, source = args.tflops * 1e12, f"--tflops {args.tflops:g}"
    else:
        rate, source = measured_rate() or (None, "no measured rate (run `harness bench train`)")
    sizes, sides = dataset_sizes(dag.config, dag.path)
    cost = cost_by_stage(nodes, sizes, sides, rate)
    print(f"{dag.path}: experiment {dag.experiment!r}, store {store}")
    print(f"{'stage':<10} {'nodes':>7} {'cached':>7} {'to run':>7} {'PFLOP':>10} {'hours':>9}")
    total_h = 0.0
    for stage in ordered():
        level = [n for n in nodes if n.stage == stage.name]
        cached = sum(store.done(stage.name, n.key) for n in level)
        c = cost.get(stage.name, {"pflop": 0.0, "hours": None})
        hours = "" if c["hours"] is None else f"{c['hours']:.2f}"
        total_h += c["hours"] or 0.0
        print(f"{stage.name:<10} {len(level):>7} {cached:>7} {len(level) - cached:>7} {c['pflop']:>10.3f} {hours:>9}")
    trainings = sum(STAGES.get(n.stage).trains for n in nodes)
    print(f"trainings: {trainings} (the minimum for this grid); estimate at {source}"
          + (f": {total_h:.2f} hours of compute in all" if rate else ""))
    if args.workers is not None and rate:
        pflop = node_pflop(nodes, sizes, sides)
        todo = [[pflop[n.key] * 1e15 / rate / 3600 for n in nodes if n.stage == stage.name
                 and not store.done(stage.name, n.key)] for stage in ordered()]
        wall = wall_hours(todo, args.workers)
        print(f"wall time on {args.workers} worker(s): {wall:.2f} hours for the {sum(map(len, todo))} nodes to run "
              f"({sum(map(sum, todo)) / wall / args.workers if wall else 0:.0%} of the workers' time busy)")
    elif args.workers is not None:
        print("wall time: needs a rate (run `harness bench train`, or pass --tflops)")
    return 0


def _workers(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: the number of workers is at least 1")
    return n
