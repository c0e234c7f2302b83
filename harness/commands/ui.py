"""`harness ui EXPERIMENT`: starts `mlflow ui` on the experiment's store (default: runs/EXPERIMENT/mlflow.db) on
127.0.0.1 unless told otherwise, waits until it answers, prints the experiment's address and one comparing the
fine-tuning runs of its latest run, and serves until Ctrl-C (or SIGTERM, SIGHUP). With --tracking-uri of a
tracking server, which is its own UI, it prints those addresses there and starts nothing.
"""

from __future__ import annotations

import argparse

from harness.commands.common import store_args


def add(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    store_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, this machine "
                   "only; 0.0.0.0 exposes the UI to the network)")
    p.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from harness.analysis.ui import serve

    return serve(args.experiment, args.tracking_uri, args.host, args.port, log=lambda m: print(m, flush=True))
