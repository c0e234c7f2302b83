"""What the user can fix, as one hierarchy: each kind names its input and how to fix it, and has an exit code.

The command line prints a `HarnessError` as one line and exits with its kind's `exit_code`; any other exception is
a bug and keeps its traceback (docs/architecture.md, "Errors and exit codes"). The classes sit at the bottom of the
package tree so that workloads (data, checkpoints, training) and the harness (DAGs, Ray, MLflow, the store) raise
the same kinds; `rules/` stays a plain library that raises ValueError, and its callers here check names first.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """Something the user can fix; the message names the input and how to fix it."""

    exit_code = 2


class InputError(HarnessError, ValueError):
    """Bad input: a flag, a name, a value (also a ValueError, as Python code expects of a bad value)."""


class ConfigError(InputError):
    """A DAG, stage config or override that cannot run; the message names the file and the key."""


class DataError(InputError):
    """Bad or missing data; the message names the file, shard or sample and how to fix it."""


class CheckpointError(InputError):
    """A checkpoint that does not exist, is not ours, or cannot be read safely."""


class Invalid(ValueError):
    """Raised by a settings section's own checks, inside validation: `key` (relative to the section, e.g. "sources")
    is where it points. `workloads.settings.validate` turns it into a ConfigError naming the file and the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class DivergenceError(HarnessError):
    """The loss became NaN or infinite; nothing was saved."""

    exit_code = 3


class ServiceError(HarnessError, ConnectionError):
    """An MLflow server or a Ray cluster that does not answer, or answers with an error."""

    exit_code = 4


class StorageError(HarnessError, OSError):
    """An output the disk refuses (read-only, full, not a folder); nothing half-written is left."""

    exit_code = 5


class CheckpointWriteError(StorageError):
    """The disk refused a checkpoint (full, read-only, over a size limit); no file was left behind."""


class TrialError(HarnessError):
    """A trial of a search failed for a reason of its own (its error is in the message)."""

    exit_code = 1


EXIT_CODES = (  # for `harness --help` and the README; 1 is also a `harness run` whose failed nodes are recorded
    (0, "done"),
    (1, "a node or trial failed (recorded in the store and MLflow; the rest of the grid finished)"),
    (2, "bad input: a DAG or config file, a flag, missing or damaged data, a checkpoint"),
    (3, "a training loss diverged (NaN or inf); nothing was saved"),
    (4, "an MLflow server or Ray cluster did not answer"),
    (5, "an output folder the disk refuses (read-only, full)"),
    (70, "an internal error: a bug, printed with its traceback (please report it)"),
    (130, "interrupted (Ctrl-C); finished nodes are kept, run the same command to resume"),
)


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a known name is close to `name`, else ''."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: object, known: Iterable[str], plural: str | None = None) -> str:
    """The one wording for a name not in a registry: what was asked, every known name, the nearest one."""
    known = list(known)
    return f"unknown {kind} {name!r}; known {plural or kind + 's'}: {', '.join(known)}{did_you_mean(name, known)}"
