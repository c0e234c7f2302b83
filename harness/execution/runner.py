"""One stage node, run to completion: its stage reads the inputs' folders, runs the workloads' function and writes
its own folder; the store then records the result. No Ray here: the orchestrator wraps `run_node` as a Tune
trainable, and tests and notebooks can call it directly. On a remote store the stage still sees local folders: its
inputs fetched into this machine's cache, its own a staging folder the store publishes once the stage returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

from harness.execution.store import ArtifactStore
from harness.stages import STAGES, Node, NodeFiles
from harness.stages.base import Progress


def run_node(node: Node, store: ArtifactStore, progress: Progress | None = None, where: dict | None = None) -> dict:
    """Run `node` unless its result is already in the store; return the record.

    `where` (e.g. the Ray node id) is kept in the record, so a run on a cluster says where each node ran."""
    stage, key = node.stage, node.key
    if store.done(stage, key):  # a retried trial whose first attempt finished just before dying
        return store.result(stage, key)
    here = {"host": socket.gethostname(), **(where or {})}
    store.write_running(stage, key, {"pid": os.getpid(), **here, "since": time.time()})
    unknown = sorted(set(node.inputs) - set(node.upstream))
    if unknown:
        raise ValueError(f"node {node.label}: inputs {unknown} name no stage; a stage's nodes read others with "
                         "Node.reads(role=node)")
    t0 = time.perf_counter()
    folder = store.staging(stage, key) if store.remote else store.node_dir(stage, key)
    try:
        inputs = {role: store.local_folder(node.upstream[role], k) for role, k in node.inputs.items()}
        result = STAGES.get(stage).run(node, NodeFiles(folder, inputs), progress or (lambda metrics: None))
    except BaseException:
        if store.remote:  # a staging folder holds nothing worth keeping once its node stopped
            shutil.rmtree(folder, ignore_errors=True)
        store.clear_running(stage, key)  # it stopped: the caller records why (failed.json), or nothing if it must not
        raise
    record = {"node": node.to_dict(), "result": result, "seconds": time.perf_counter() - t0, "where": here}
    if store.remote:
        store.publish(stage, key, folder, record)
    else:
        store.write_result(stage, key, record)
    return record
