"""The artifact store: one folder per stage node, `<root>/<stage>/<key>/`, complete once `result.json` exists.

What a node leaves in its folder is its stage's business (a checkpoint, an outcome table); the store knows only the
records that say where a node stands. Every file is written to a temporary name and renamed
(`workloads.files.atomic_write`), and `result.json` is written last, so a node killed half-way is never taken as
finished: the next `harness run` simply runs it again. A node that failed for a reason a retry
cannot fix (a diverging loss) leaves `failed.json` instead, which the next run clears and retries. While a node
runs, `running.json` says which process runs it and where (removed when it finishes or fails; left behind by a
process that was killed).
The root is a local or shared filesystem path (NFS and the like for a cluster).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workloads.errors import ConfigError, StorageError
from workloads.files import atomic_write_text


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        text = str(root)
        if "://" in text and not text.startswith("file://"):
            raise ConfigError(f"artifact store {text}: only filesystem paths are supported (a shared mount such as NFS "
                              "on a cluster); copy results to object storage after the run")
        self.root = Path(text.removeprefix("file://")).expanduser().resolve()

    def check_writable(self) -> None:
        """Fail before any compute when the store cannot take a file (read-only, full, not a folder)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"artifact store {self.root} is not writable ({exc.strerror or exc}); pass --out with "
                               "a folder you can write to") from None

    def node_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.node_dir(stage, key) / "result.json").is_file()

    def result(self, stage: str, key: str) -> dict:
        path = self.node_dir(stage, key) / "result.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StorageError(f"{path} cannot be read ({exc}); delete its folder to recompute the node") from None

    def write_running(self, stage: str, key: str, where: dict) -> None:
        atomic_write_text(self.node_dir(stage, key) / "running.json", json.dumps(where) + "\n")

    def clear_running(self, stage: str, key: str) -> None:
        (self.node_dir(stage, key) / "running.json").unlink(missing_ok=True)

    def write_result(self, stage: str, key: str, record: dict) -> None:
        d = self.node_dir(stage, key)
        (d / "failed.json").unlink(missing_ok=True)
        atomic_write_text(d / "result.json", json.dumps(record, indent=1, default=_jsonable) + "\n")
        self.clear_running(stage, key)

    def write_failure(self, stage: str, key: str, error: str) -> None:
        atomic_write_text(self.node_dir(stage, key) / "failed.json", json.dumps({"error": error}) + "\n")
        self.clear_running(stage, key)

    def failure(self, stage: str, key: str) -> str | None:
        path = self.node_dir(stage, key) / "failed.json"
        try:
            return json.loads(path.read_text())["error"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None

    def clear_failure(self, stage: str, key: str) -> None:
        (self.node_dir(stage, key) / "failed.json").unlink(missing_ok=True)


def _jsonable(obj: object) -> object:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
