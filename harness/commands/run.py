"""`harness run DAG`: runs every stage node of the DAG that is not already in the artifact store, one Ray Tune run
per stage (in the order of their levels), logs one MLflow child run per node under one parent run, then writes the
report. Run it again after an interruption: finished nodes are skipped; a run whose inputs are unchanged since the
last complete one answers at once. Bad input (the DAG, missing data, an unreachable Ray cluster or MLflow server) is
reported before any compute; exit codes in `harness --help`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.commands.common import dag_args, log, services


def add(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    dag_args(p)
    services(p)
    p.add_argument("--results", default=None, help="report folder (default: results/EXPERIMENT)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")


def main(args: argparse.Namespace) -> int:
    from harness.config import plugins
    from harness.execution import unchanged

    t0 = time.perf_counter()
    inputs = unchanged.digest_inputs(args.dag, args.sets, args.overrides, args.out, args.tracking_uri, args.results,
                                     not args.no_report, plugins.loaded(), args.store)
    last = unchanged.last_complete(*inputs) if inputs else None
    if last is not None:  # nothing changed since the last complete run: its answer stands
        counts = last["nodes"]
        log(f"harness run: {time.perf_counter() - t0:.1f} s; ran: {', '.join(f'{s} 0' for s in counts)}; cached: "
            f"{', '.join(f'{s} {n}' for s, n in counts.items())} (every node is in the store and nothing changed "
            f"since the complete run of {last['at']}: nothing logged, the report stands)")
        if last["summary"]:
            print(last["summary"])
        return 0

    from harness.execution.orchestrator import run_dag
    from harness.planning.dag import load_dag

    dag = load_dag(args.dag, args.sets, args.overrides)
    results = None if args.no_report else Path(args.results or Path("results") / dag.experiment)
    summary = run_dag(dag, out_dir=args.out, tracking_uri=args.tracking_uri, address=args.address, store=args.store)
    log(f"harness run: {summary.seconds:.0f} s; ran: {', '.join(f'{s} {n}' for s, n in summary.ran.items())}; "
        f"cached: {', '.join(f'{s} {n}' for s, n in summary.cached.items())}")
    text = report(summary, results) if results is not None else ""
    if text:
        print(text)
    if inputs and summary.ok and (results is None or text):
        unchanged.record_complete(inputs[0], inputs[1], summary.results, results,
                                  {s: summary.ran[s] + summary.cached[s] for s in summary.ran}, text)
    for label, error in summary.failed.values():
        log(f"harness run: FAILED {label}: {error.splitlines()[0]}")
    if summary.skipped:
        log(f"harness run: {len(summary.skipped)} node(s) skipped because an input failed")
    return 0 if summary.ok else 1


def report(summary, results: Path) -> str:
    """The report of the run's experiment in `results`, attached to the run's parent MLflow run; its summary
    text ("" where it could not be written, which is said, not raised: the run's nodes stand)."""
    from harness.analysis.report import summary_text, write_report
    from harness.execution.tracking import Tracker
    from workloads.errors import HarnessError

    try:
        written = write_report(summary.tracking_uri, summary.experiment, results)
    except HarnessError as exc:
        log(f"[report] not written: {exc}")
        return ""
    Tracker(summary.tracking_uri, summary.experiment).log_report(results, summary.parent_run)
    return summary_text(written)
