"""Fuzzing the two inputs a user hands the harness: DAG files and shards. Whatever the damage, the answer is a
clear error that names the input (exit code 2 for the CLI), never a traceback from inside a library, never a hang.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import signal
import tarfile
from pathlib import Path

import pytest
import yaml
from datagen import write_fmnist

from harness.cli import main
from workloads.datasets import ShardReader, prepare
from workloads.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
DAGS = sorted((ROOT / "dags").glob("*.yaml"))
WRONG_VALUES = [None, "", "x", "pgdd", -1, 0, 0.5, 1e308, 10**30, -(10**30), float("nan"), float("inf"), True, [],
                {}, [1, "a"], {"a": 1}, "../../etc/passwd", "a" * 5000]
CASES_PER_DAG = 150
SHARD_CASES = 300


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Fail the test (instead of hanging the suite) when one case runs too long."""
    def fire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _paths(node, prefix=()):
    """Every (path, value) in a parsed YAML tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(spec: dict, rng: random.Random) -> dict:
    spec = copy.deepcopy(spec)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in _paths(spec) if p]
        path = rng.choice(paths)
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = rng.choice(["delete", "wrong", "wrong", "rename", "unknown-name", "huge"])
        if op == "delete":
            del parent[last]
        elif op == "wrong":
            parent[last] = copy.deepcopy(rng.choice(WRONG_VALUES))
        elif op == "rename" and isinstance(parent, dict):
            parent[f"{last}x"] = parent.pop(last)
        elif op == "unknown-name" and isinstance(parent[last], str):
            parent[last] = parent[last] + "zz"
        elif op == "huge":
            parent[last] = rng.choice([10**9, 10**12, 2**63, 1e300])
    return spec


def _plan(tmp_path: Path, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    with deadline(60, f"harness plan on {text[:200]!r}"):
        code = main(["plan", str(path), "--out", str(tmp_path / "out"), "--tflops", "1"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("dag", DAGS, ids=[d.stem for d in DAGS])
def test_fuzzed_dag_files_give_clear_errors(dag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped DAGs name data/... relative to the repository
    text = dag.read_text()
    spec = yaml.safe_load(text)
    rng = random.Random(f"dag-fuzz-{dag.stem}")
    tried = errors = 0
    for case in range(CASES_PER_DAG):
        if case % 4 == 3:  # text-level damage: a cut or a flipped byte, YAML errors included
            raw = bytearray(text.encode())
            if rng.random() < 0.5:
                raw = raw[: rng.randrange(len(raw))]
            else:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            fuzzed = raw.decode("utf-8", "replace")
        else:
            fuzzed = yaml.safe_dump(_mutate(spec, rng), sort_keys=False)
        code, err = _plan(tmp_path, fuzzed, capsys)
        tried += 1
        assert code in (0, 2), (code, err, fuzzed)
        if code == 2:
            errors += 1
            assert err.startswith("harness: error: ") and err.count("\n") == 1, err
            assert "fuzzed.yaml" in err, f"the error does not name the DAG file: {err}"
    assert errors > CASES_PER_DAG // 2  # the fuzzer really breaks things


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_fmnist(root / "src", n_train=30, n_test=10)
    prepare("fashion-mnist", root / "out", src=root / "src", shard_size=10)
    return root / "out"


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def _retar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return buf.getvalue()


def _damage(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    op = rng.choice(["truncate", "flip", "flip-many", "drop-label", "wrong-type", "garbage-label", "pickle-label",
                     "garbage-image", "swap-ext", "link"])
    if op == "truncate":
        return op, data[: rng.randrange(len(data))]
    if op in ("flip", "flip-many"):
        raw = bytearray(data)
        for _ in range(1 if op == "flip" else rng.randint(2, 32)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return op, bytes(raw)
    members = _members(data)
    i = rng.randrange(len(members))
    info, payload = members[i]
    if op == "drop-label":
        del members[next(k for k, (m, _) in enumerate(members) if m.name.endswith(".cls"))]
    elif op == "wrong-type":
        d = tarfile.TarInfo(info.name.split(".")[0] + ".dir")
        d.type = tarfile.DIRTYPE
        members.insert(i, (d, b""))
    elif op == "link":
        s = tarfile.TarInfo(info.name)
        s.type, s.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members[i] = (s, b"")
    elif op == "garbage-label":
        j = next(k for k, (m, _) in enumerate(members) if m.name.endswith(".cls"))
        members[j] = (members[j][0], rng.choice([b"-1", b"99", b"x", b"\xff\xfe", b"", b"1,2"]))
    elif op == "pickle-label":  # a label stored as a pickle that would run code if unpickled
        j = next(k for k, (m, _) in enumerate(members) if m.name.endswith(".cls"))
        evil = tarfile.TarInfo(members[j][0].name.replace(".cls", ".pyd"))
        members[j] = (evil, b"cos\nsystem\n(S'touch /tmp/pwned-by-shard'\ntR.")
    elif op == "garbage-image":
        j = next(k for k, (m, _) in enumerate(members) if m.name.endswith(".png"))
        members[j] = (members[j][0], bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))
    elif op == "swap-ext":
        j = next(k for k, (m, _) in enumerate(members) if m.name.endswith(".png"))
        members[j][0].name = members[j][0].name.replace(".png", ".txt")
    for info, payload in members:
        info.size = len(payload)
    return op, _retar(members)


def test_fuzzed_shards_give_clear_errors_naming_the_shard(clean_shards, tmp_path):
    import shutil

    rng = random.Random("shard-fuzz")
    shards = sorted(clean_shards.glob("train-*.tar"))
    seen_ops: dict[str, int] = {}
    caught = 0
    for case in range(SHARD_CASES):
        work = tmp_path / f"c{case}"
        shutil.copytree(clean_shards, work)
        victim = work / rng.choice(shards).name
        original = victim.read_bytes()
        op, damaged = _damage(original, rng)
        seen_ops[op] = seen_ops.get(op, 0) + 1
        victim.write_bytes(damaged)
        for verify in (True, False):
            for cache in (True, False):
                with deadline(30, f"reading a shard damaged by {op}"):
                    try:
                        list(ShardReader(work, "train", batch_size=7, verify=verify, cache=cache))
                    except DataError as exc:
                        caught += 1
                        assert victim.name in str(exc) or str(work) in str(exc), f"{op}: {exc}"
                    else:
                        # without verification a flip in padding or pixel data, or a cut inside the zero blocks
                        # that end a tar, can go unnoticed: the samples read are whole
                        cut_zeros = op == "truncate" and not original[len(damaged):].strip(b"\0")
                        assert not verify and (op in ("flip", "flip-many") or cut_zeros), f"{op} passed, {verify=}"
        shutil.rmtree(work)
    assert not Path("/tmp/pwned-by-shard").exists()
    assert set(seen_ops) >= {"truncate", "flip", "drop-label", "wrong-type", "pickle-label", "link"}
    assert caught >= SHARD_CASES * 2  # every verified read at least
