"""Flags several commands share: a DAG with its overrides and run folder, and the services a run talks to."""

from __future__ import annotations

import argparse
import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sets(p: argparse.ArgumentParser, what: str, example: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help=f"override a {what} value: dotted keys, list items by index, YAML values (e.g. {example})")


def dag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dag", help="DAG spec (YAML), e.g. dags/default.yaml")
    sets(p, "DAG", "--set finetune.epochs=1 --set attacks.0.eps=[0,0.1]")
    p.add_argument("--overrides", action="append", default=[], metavar="FILE",
                   help="a YAML file of DAG values merged over the DAG, e.g. the best.yaml `harness search` writes "
                   "(repeatable; --set applies after)")
    p.add_argument("--out", default=None,
                   help="the driver's run folder: MLflow sqlite store, logs, and by default the store "
                   "(default: runs/EXPERIMENT)")
    p.add_argument("--store", default=None, metavar="URI",
                   help="where the node folders and Ray Tune's storage live: a folder every Ray node reaches, or "
                   "an object-store URI such as s3://BUCKET/PREFIX?endpoint_override=HOST:PORT&scheme=http for "
                   "nodes that share no disk; credentials come from each node's environment, never the URI "
                   "(default: the DAG's `store`, else the run folder; docs/cluster.md)")


def services(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///RUN_FOLDER/mlflow.db; a server: http://HOST:5000)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance on 127.0.0.1)")


def store_args(p: argparse.ArgumentParser) -> None:
    """An experiment's MLflow store, for the commands that only read it."""
    p.add_argument("experiment")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///runs/EXPERIMENT/mlflow.db)")
