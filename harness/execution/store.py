"""The artifact store: one folder per stage node, `<root>/<stage>/<key>/`, complete once `result.json` exists.

What a node leaves in its folder is its stage's business (a checkpoint, an outcome table); the store knows only the
records that say where a node stands. Every file is written whole or not at all (a local file through a temporary
name, an object in one upload), and `result.json` is written last, so a node killed half-way is never taken as
finished: the next `harness run` simply runs it again. A node that failed for a reason a retry
cannot fix (a diverging loss) leaves `failed.json` instead, which the next run clears and retries. While a node
runs, `running.json` says which process runs it and where (removed when it finishes or fails; left behind by a
process that was killed).

The root is a local folder (one machine, or a mount every node shares) or an object-store URI (`s3://...`,
workloads/storage.py) for a cluster whose nodes share no disk. Stages always see local folders: on an object store
a node runs in a local staging folder, its inputs are fetched into a local cache first (`local_folder`), and its
files are uploaded before its `result.json` (`publish`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from workloads import storage
from workloads.errors import StorageError

RESULT = "result.json"


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        text = storage.check(str(root), "artifact store")
        self.remote = storage.is_remote(text)
        self.root: str | Path = text if self.remote else Path(text.removeprefix("file://")).expanduser().resolve()

    def __str__(self) -> str:
        return storage.display(self.root) if self.remote else str(self.root)

    def check_writable(self) -> None:
        """Fail before any compute when the store cannot take a file (read-only, full, not a folder, unreachable)."""
        probe = storage.join(self.root, f".probe-{os.getpid()}")
        try:
            if not self.remote:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            storage.write_bytes(probe, b"\0" * 4096)
            storage.remove(probe)
        except OSError as exc:
            raise StorageError(f"artifact store {self} is not writable ({getattr(exc, 'strerror', None) or exc}); "
                               "pass --store (or --out) with a place you can write to") from None

    def location(self, stage: str, key: str, name: str = "") -> str:
        """Where a node's folder (or its file `name`) is in the store: a path or a URI."""
        return storage.join(self.root, stage, key, *([name] if name else []))

    def node_dir(self, stage: str, key: str) -> Path:
        """A node's folder on a local store (the stages write into it directly)."""
        if self.remote:
            raise StorageError(f"artifact store {self} is remote: a node's files are fetched with local_folder()")
        return Path(self.root) / stage / key

    def done(self, stage: str, key: str) -> bool:
        return storage.is_file(self.location(stage, key, RESULT))

    def result(self, stage: str, key: str) -> dict:
        where = self.location(stage, key, RESULT)
        try:
            return json.loads(storage.read_bytes(where))
        except (OSError, json.JSONDecodeError) as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{storage.display(where)} cannot be read ({exc}); delete its folder to recompute the "
                               "node") from None

    def write_running(self, stage: str, key: str, where: dict) -> None:
        storage.write_bytes(self.location(stage, key, "running.json"), (json.dumps(where) + "\n").encode())

    def clear_running(self, stage: str, key: str) -> None:
        storage.remove(self.location(stage, key, "running.json"))

    def write_result(self, stage: str, key: str, record: dict) -> None:
        storage.remove(self.location(stage, key, "failed.json"))
        text = json.dumps(record, indent=1, default=_jsonable) + "\n"
        if not self.remote:  # flushed to the disk before the rename: a crash right after keeps the result
            from workloads.files import atomic_write_text

            atomic_write_text(self.location(stage, key, RESULT), text)
        else:
            storage.write_bytes(self.location(stage, key, RESULT), text.encode())
        self.clear_running(stage, key)

    def write_failure(self, stage: str, key: str, error: str) -> None:
        storage.write_bytes(self.location(stage, key, "failed.json"), (json.dumps({"error": error}) + "\n").encode())
        self.clear_running(stage, key)

    def failure(self, stage: str, key: str) -> str | None:
        try:
            return json.loads(storage.read_bytes(self.location(stage, key, "failed.json")))["error"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None

    def clear_failure(self, stage: str, key: str) -> None:
        storage.remove(self.location(stage, key, "failed.json"))

    # -- a store whose nodes share no disk ---------------------------------------------------------------------
    def cache(self) -> Path:
        """This machine's copy of the remote store's finished nodes (node keys name their content, so a copy
        never goes stale): $HARNESS_CACHE, else a folder of the temp dir."""
        base = os.environ.get("HARNESS_CACHE") or Path(tempfile.gettempdir()) / f"harness-cache-{os.getuid()}"
        return Path(base) / hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    def local_folder(self, stage: str, key: str, names: list[str] | None = None) -> Path:
        """A local folder holding a finished node's files (`names` only, if given): the folder itself on a local
        store, a copy fetched into `cache()` on a remote one."""
        if not self.remote:
            return self.node_dir(stage, key)
        local = self.cache() / stage / key
        if not (local / RESULT).is_file():
            wanted = storage.files(self.location(stage, key)) if names is None else names
            storage.download(self.location(stage, key), [n for n in wanted if n != RESULT and
                                                         not (local / n).is_file()], local)
            if names is None:  # complete: the copy's own result.json, written last, says so
                storage.download(self.location(stage, key), [RESULT], local)
        return local

    def files_of(self, stage: str, key: str, names: tuple[str, ...] | list[str]) -> list[Path]:
        """Local copies of those of `names` a finished node left (what the driver logs to MLflow)."""
        if not self.remote:
            return [p for n in names if (p := self.node_dir(stage, key) / n).is_file()]
        present = set(storage.files(self.location(stage, key)))
        wanted = [n for n in names if n in present]
        local = self.local_folder(stage, key, wanted)
        return [local / n for n in wanted]

    def staging(self, stage: str, key: str) -> Path:
        """A fresh local folder a node of a remote store runs in, before `publish` uploads it."""
        folder = self.cache() / ".staging"
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{stage}-{key}-", dir=folder))

    def publish(self, stage: str, key: str, staged: Path, record: dict) -> None:
        """Upload a node's staged files, then its result (last: the node is complete once that exists), then keep
        the staged folder as this machine's copy."""
        storage.upload(staged, self.location(stage, key), skip=(RESULT,))
        self.write_result(stage, key, record)
        local = self.cache() / stage / key
        if not (local / RESULT).is_file():
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            (staged / RESULT).write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
            os.replace(staged, local)
        else:
            shutil.rmtree(staged, ignore_errors=True)


def _jsonable(obj: object) -> object:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
