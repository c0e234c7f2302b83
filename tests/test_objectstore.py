"""The opener every store and dataset reader goes through (workloads/storage.py), against a real S3-compatible
server on 127.0.0.1 (moto's standalone server): objects round-trip whatever their size, a URI never carries a
credential, prepared datasets and the artifact store live there, and a server that stops answering is an error
naming the store, not a hang."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from datagen import write_fmnist
from services import s3_server

from harness.execution.store import ArtifactStore
from workloads import storage
from workloads.datasets import load_manifest, prepare
from workloads.datasets.manifest import check_shard_files
from workloads.datasets.reader import ShardReader
from workloads.errors import ConfigError, DataError, StorageError


def on_s3(test):
    """A test that starts the S3 server: slow and integration."""
    return pytest.mark.slow(pytest.mark.integration(test))



@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.bucket("bkt")
        yield server


@on_s3
def test_objects_round_trip_empty_small_and_multipart(s3, tmp_path):
    root = s3.uri("bkt/rt")
    for name, data in [("empty", b""), ("small", b"hello"), ("big", os.urandom(12 << 20))]:  # > 5 MiB: multipart
        storage.write_bytes(storage.join(root, "d", name), data)
        assert storage.read_bytes(storage.join(root, "d", name)) == data
        assert storage.size(storage.join(root, "d", name)) == len(data)
    assert storage.files(root) == ["d/big", "d/empty", "d/small"]
    assert storage.is_file(storage.join(root, "d", "small")) and not storage.is_file(storage.join(root, "d"))
    storage.remove(storage.join(root, "d", "small"))
    storage.remove(storage.join(root, "d", "small"))  # twice: a missing file is no error
    assert storage.files(storage.join(root, "d")) == ["big", "empty"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "d", "small"))
    with pytest.raises(FileNotFoundError):  # a missing object is missing, not a store that fails, on every path
        storage.download(storage.join(root, "d"), ["small"], tmp_path)


@pytest.mark.parametrize("uri, says", [
    ("s3://AKIA123:s3cr3t@bkt/runs", "credentials in its URI"),
    ("s3://bkt/runs?secret_key=abc", "credentials (secret_key)"),
    ("s3://bkt/runs?endpoint=127.0.0.1", "unknown S3 option(s) endpoint"),
    ("hdfs://nn/runs", "unknown scheme 'hdfs'"),
    ("s3:///runs", "names no bucket"),
    ("s3://bkt/runs?request_timeout=soon", "request_timeout='soon' is not a number"),
    ("s3://bkt/runs?allow_bucket_creation=maybe", "allow_bucket_creation='maybe' is not valid"),
])
def test_a_uri_with_credentials_or_unknown_options_is_refused(uri, says):
    with pytest.raises(ConfigError) as err:
        ArtifactStore(uri)
    assert says in str(err.value) and "s3cr3t" not in str(err.value)


def test_join_keeps_the_query_at_the_end():
    assert storage.join("s3://b/p?scheme=http", "store", "k") == "s3://b/p/store/k?scheme=http"
    assert storage.display("s3://b/p/x?scheme=http") == "s3://b/p/x"
    assert storage.join("file:///tmp/x", "a") == "/tmp/x/a"


@on_s3
def test_a_dataset_prepared_into_the_store_reads_back_with_its_checks(tmp_path, s3):
    write_fmnist(tmp_path / "src", n_train=24, n_test=12)
    root = s3.uri("bkt/data/fm")
    manifest, wrote = prepare("fashion-mnist", root, src=tmp_path / "src", shard_size=10)
    assert wrote and load_manifest(root).splits["train"].count == 24
    assert not prepare("fashion-mnist", root, src=tmp_path / "src", shard_size=10)[1]  # unchanged: nothing written
    check_shard_files(root, manifest, deep=True)
    local = tmp_path / "fm"
    prepare("fashion-mnist", local, src=tmp_path / "src", shard_size=10)
    remote_batches = [(x.sum().item(), y.tolist()) for x, y in ShardReader(root, "train", batch_size=8)]
    assert remote_batches == [(x.sum().item(), y.tolist()) for x, y in ShardReader(local, "train", batch_size=8)]

    shard = manifest.splits["train"].shards[0].name
    data = storage.read_bytes(storage.join(root, shard))
    storage.write_bytes(storage.join(root, shard), data[: len(data) // 2])  # truncated in the store
    with pytest.raises(DataError, match=f"shard s3://bkt/data/fm/{shard} has {len(data) // 2} bytes"):
        check_shard_files(root, manifest)
    with pytest.raises(DataError, match=f"shard s3://bkt/data/fm/{shard} does not match its manifest"):
        list(ShardReader(root, "train", batch_size=8))
    storage.remove(storage.join(root, shard))
    with pytest.raises(DataError, match="is missing"):
        check_shard_files(root, manifest)
    with pytest.raises(DataError, match="no manifest.json in s3://bkt/data/nothing"):
        load_manifest(s3.uri("bkt/data/nothing"))


@on_s3
def test_the_artifact_store_on_s3_keeps_the_node_protocol(tmp_path, s3, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore(s3.uri("bkt/runs/x/store"))
    store.check_writable()
    assert store.remote and not store.done("attack", "k") and str(store) == "s3://bkt/runs/x/store"
    store.write_running("attack", "k", {"pid": 1})
    staged = store.staging("attack", "k")
    (staged / "outcomes.parquet").write_bytes(b"table")
    (staged / "sub").mkdir()
    (staged / "sub" / "more.bin").write_bytes(b"\0" * 10)
    store.publish("attack", "k", staged, {"result": {"n": 3}})
    assert store.done("attack", "k") and store.result("attack", "k") == {"result": {"n": 3}}
    assert storage.files(store.location("attack", "k")) == ["outcomes.parquet", "result.json", "sub/more.bin"]
    assert [p.read_bytes() for p in store.files_of("attack", "k", ["outcomes.parquet", "absent"])] == [b"table"]

    other = ArtifactStore(s3.uri("bkt/runs/x/store"))  # another machine: an empty cache of its own
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache2"))
    folder = other.local_folder("attack", "k")
    assert (folder / "sub" / "more.bin").read_bytes() == b"\0" * 10
    assert json.loads((folder / "result.json").read_text()) == {"result": {"n": 3}}

    store.write_failure("attack", "f", "diverged")
    assert store.failure("attack", "f") == "diverged" and not store.done("attack", "f")
    store.clear_failure("attack", "f")
    assert store.failure("attack", "f") is None


@on_s3
def test_a_store_that_stops_answering_is_an_error_naming_it(s3):
    store = ArtifactStore(s3.uri("bkt/runs/y/store", request_timeout="2", connect_timeout="2", retries="1"))
    store.write_result("pretrain", "k", {"ok": 1})
    os.kill(s3.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError) as err:
            store.done("pretrain", "k")
        waited = time.monotonic() - t0
    finally:
        os.kill(s3.proc.pid, signal.SIGCONT)
    assert "object store s3://bkt/runs/y/store/pretrain/k/result.json" in str(err.value)
    assert "run the same command again to resume" in str(err.value) and waited < 60
    assert store.done("pretrain", "k")  # answering again: nothing was lost


@on_s3
def test_webdataset_shards_on_s3_are_indexed_in_place_and_read_with_their_checks(tmp_path, s3):
    from test_webdataset import write_standard

    truth = write_standard(tmp_path / "src", "jpg", "cls", {"train": 12, "test": 5}, per_shard=6)
    for shard in sorted((tmp_path / "src").iterdir()):
        storage.write_bytes(s3.uri(f"bkt/shards/{shard.name}"), shard.read_bytes())
    src = f"train={s3.uri('bkt/shards/train-{000000..000001}.tar')},test={s3.uri('bkt/shards/test-000000.tar')}"
    manifest, _ = prepare("webdataset", s3.uri("bkt/data/wds"), src=src)
    assert [storage.display(s.name) for s in manifest.splits["train"].shards] == [
        "s3://bkt/shards/train-000000.tar", "s3://bkt/shards/train-000001.tar"]
    root = s3.uri("bkt/data/wds")
    assert [int(v) for _, y in ShardReader(root, "train", batch_size=5) for v in y] == truth["train"]
    check_shard_files(root, load_manifest(root), deep=True)
    storage.write_bytes(s3.uri("bkt/shards/test-000000.tar"), b"\0" * 1024)  # rewritten behind the index's back
    with pytest.raises(DataError, match="shard s3://bkt/shards/test-000000.tar has 1024 bytes"):
        check_shard_files(root, load_manifest(root))


@on_s3
def test_a_node_that_fails_on_s3_leaves_no_staging_folder_and_no_running_record(tmp_path, s3, monkeypatch):
    from harness.execution import runner
    from harness.stages import Node

    class Failing:
        def run(self, node, files, progress):
            (files.folder / "half.bin").write_bytes(b"\0")
            raise RuntimeError("diverged")

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner.STAGES, "get", lambda name: Failing())
    store = ArtifactStore(s3.uri("bkt/runs/fail/store"))
    with pytest.raises(RuntimeError, match="diverged"):
        runner.run_node(Node("attack", "k", "a node", {}, None), store)
    assert not list((store.cache() / ".staging").iterdir())
    assert storage.files(store.location("attack", "k")) == []  # no running.json, no half a file
