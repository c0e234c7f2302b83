"""From a validated DAG to stage nodes: the fewest trainings the grid needs, each keyed by what determines it.

Each registered stage plans its own nodes (`Stage.nodes`), level by level, from the DAG and the nodes before it.
A node's key hashes its stage, the settings that change its result, the dataset's name and manifest (not the
folder it sits in) and its inputs' keys: the same pretraining feeds every rule, the same fine-tuned model feeds
every attack, and changing one attack's eps grid changes only that attack's keys. The device is not part of a key
(where a node runs does not name it).
"""

from __future__ import annotations

import hashlib

from harness.planning.dag import Dag
from harness.stages import Node, Plan, ordered
from workloads import storage
from workloads.errors import DataError, StorageError


def data_digest(root: str, where: str, name: str, require: bool = True) -> str:
    """A prepared dataset's identity: the hash of its manifest ("unprepared" where there is none and `require` is
    off)."""
    manifest = storage.join(root, "manifest.json")
    try:
        return hashlib.sha256(storage.read_bytes(manifest)).hexdigest()[:16]
    except (FileNotFoundError, NotADirectoryError):
        if not require:
            return "unprepared"
        shown = storage.display(root)
        raise DataError(f"{where}: datasets.{name}.root: {shown} holds no prepared data (no manifest.json); run "
                        f"`harness data prepare {name} --out {shown}` first") from None
    except StorageError:  # an object store that does not answer: its own message names it
        raise
    except OSError as exc:  # unreadable: permissions, a folder named manifest.json, ...
        raise DataError(f"{where}: datasets.{name}.root: {manifest} cannot be read ({exc.strerror or exc})") from None


def build_plan(dag: Dag, require_data: bool = True) -> list[Node]:
    """Every node of the DAG, stage by stage in the order they run, inputs before users.

    With require_data=False a dataset that is not prepared yet still gets its nodes (for `harness plan`); their
    keys change once it is, so nothing is taken from the store for them."""
    data_digests = {name: data_digest(ds.root, dag.path, name, require_data)
                    for name, ds in dag.config.datasets.items()}
    plan = Plan(dag.config, data_digests)
    for stage in ordered():
        plan.nodes += stage.nodes(plan)
    return plan.nodes
