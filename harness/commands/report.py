"""`harness report EXPERIMENT`: reads the experiment's finished runs from MLflow into polars and writes
results/EXPERIMENT/ (CSV, Markdown, PNG, README.md); prints the main tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.common import store_args


def add(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    store_args(p)
    p.add_argument("--results", default=None, help="report folder (default: results/EXPERIMENT)")


def main(args: argparse.Namespace) -> int:
    from harness.analysis.report import summary_text, write_report
    from harness.execution.tracking import existing_store

    uri = existing_store(args.experiment, args.tracking_uri)
    print(summary_text(write_report(uri, args.experiment, args.results or Path("results") / args.experiment)))
    return 0
