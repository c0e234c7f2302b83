"""`harness search DAG`: searches lr_backbone, lr_head, weight_decay and epochs for each rule on one cell of the
DAG (dataset x backbone x task; the first of each unless named), scoring every epoch on a held-out part of the
training split and stopping poor trials early with ASHA (harness/search.py). The DAG's own setting is scored too and
kept unless a trial beats it. Writes the winners as a DAG override file (use it with `harness run DAG --overrides
FILE`), a figure of the validation curves, and one MLflow parent run with a child per trial.
"""

from __future__ import annotations

import argparse

from harness.commands.common import dag_args, log, services
from harness.commands.flags import add_flags, from_flags


def add(p: argparse.ArgumentParser) -> None:
    from harness.search import SearchSettings

    p.description = __doc__
    dag_args(p)
    services(p)
    add_flags(p, SearchSettings)
    p.add_argument("--write", default=None, help="override file to write (default: RUN_FOLDER/search/best.yaml)")


def main(args: argparse.Namespace) -> int:
    from harness.planning.dag import load_dag
    from harness.search import SearchSettings, format_result, search_dag

    dag = load_dag(args.dag, args.sets, args.overrides)
    settings = from_flags(args, SearchSettings, "harness search")
    result = search_dag(dag, settings, out_dir=args.out, tracking_uri=args.tracking_uri, address=args.address,
                        store_root=args.store,
                        override_path=args.write, log=log)
    print(format_result(result))
    return 0
