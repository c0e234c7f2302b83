"""Standard WebDataset shards in (indexed in place, local and over HTTP) and out (harness shards read by plain
webdataset), the same labels both ways, and a tiny DAG trained on shards the harness never rewrote."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from datagen import write_fmnist, write_hashlist
from PIL import Image

from workloads.datasets import ShardReader, load_manifest, prepare
from workloads.datasets.codec import decode_label, encode_label
from workloads.errors import DataError


def _image(rng: np.random.Generator, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(buf, format="JPEG" if ext == "jpg" else
                                                                              "PNG")
    return buf.getvalue()


def write_standard(folder: Path, image: str, label: str, per_split: dict[str, int], per_shard: int = 7,
                   classes: int = 10, seed: int = 0) -> dict[str, list]:
    """Shards written by webdataset's own ShardWriter, as a user has them: `{split}-%06d.tar` with an image, a
    label (`cls`, or `json` holding {"label": ..., "caption": ...}) and an extra member the harness must ignore."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n in per_split.items():
        truth[split] = []
        with wds.ShardWriter(str(folder / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for i in range(n):
                y = int(rng.integers(0, classes))
                sample = {"__key__": f"{split}{i:05d}", image: _image(rng, image), "txt": f"sample {i}"}
                sample.update({"cls": y} if label == "cls" else {"json": {"label": y, "caption": "x"}})
                sink.write(sample)
                truth[split].append(y)
    return truth


def _labels_by_webdataset(urls: str, label: str) -> list[int]:
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
    return [s["cls"] if label == "cls" else s["json"]["label"] for s in ds]


@pytest.mark.parametrize("image,label,key", [("jpg", "cls", "cls"), ("png", "json", "json:label")])
def test_standard_shards_are_indexed_in_place_and_read_with_webdatasets_labels(tmp_path, image, label, key):
    truth = write_standard(tmp_path / "src", image, label, {"train": 20, "test": 9})
    src = f"train={tmp_path}/src/train-{{000000..000002}}.tar,test={tmp_path}/src/test-{{000000..000001}}.tar"
    manifest, wrote = prepare("webdataset", tmp_path / "prepared", src=src, label_key=key)
    assert wrote and manifest.splits["train"].count == 20 and manifest.splits["test"].count == 9
    # nothing was copied or re-encoded: the prepared folder holds the manifest and the per-sample CRC indexes
    held = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    assert held == ["manifest.json", "test-000000.idx", "test-000001.idx", "train-000000.idx", "train-000001.idx",
                    "train-000002.idx"]
    assert sum(p.stat().st_size for p in (tmp_path / "prepared").iterdir()) < 0.05 * sum(
        p.stat().st_size for p in (tmp_path / "src").iterdir())
    assert manifest.image == {"height": 28, "width": 28, "channels": 3, "encoding": image}
    for split in ("train", "test"):
        reader = ShardReader(tmp_path / "prepared", split, batch_size=8, channels=3)
        ours = [int(v) for _, y in reader for v in y]
        assert ours == truth[split] == _labels_by_webdataset(src.split(",")[split == "test"].split("=", 1)[1], label)
    x, _ = next(iter(ShardReader(tmp_path / "prepared", "train", batch_size=20, channels=3)))
    first = np.asarray(Image.open(io.BytesIO(next(iter(wds.WebDataset(f"{tmp_path}/src/train-000000.tar",
                                                                       shardshuffle=False)))[image])).convert("RGB"))
    assert np.array_equal((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), first)
    again, wrote = prepare("webdataset", tmp_path / "prepared", src=src, label_key=key)
    assert not wrote  # unchanged shards: not read again


def test_shards_over_http_are_indexed_and_read_from_the_server(tmp_path):
    truth = write_standard(tmp_path / "src", "jpg", "cls", {"train": 12, "test": 5}, per_shard=6)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "src"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        src = f"train={base}/train-{{000000..000001}}.tar,test={base}/test-000000.tar"
        manifest, _ = prepare("webdataset", tmp_path / "prepared", src=src)
        assert [s.name for s in manifest.splits["train"].shards] == [f"{base}/train-000000.tar",
                                                                     f"{base}/train-000001.tar"]
        ours = [int(v) for _, y in ShardReader(tmp_path / "prepared", "train", batch_size=5) for v in y]
        assert ours == truth["train"]
    finally:
        server.shutdown()


def test_two_ranks_read_disjoint_shards_that_together_are_the_split(tmp_path):
    truth = write_standard(tmp_path / "src", "jpg", "cls", {"train": 28}, per_shard=7)
    prepare("webdataset", tmp_path / "p", src=f"{tmp_path}/src/train-{{000000..000003}}.tar")
    seen = [[int(v) for _, y in ShardReader(tmp_path / "p", "train", batch_size=4, rank=r, world_size=2, cache=False)
             for v in y] for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == sorted(truth["train"]) and len(seen[0]) == len(seen[1]) == 14


def test_bad_webdataset_input_is_a_clear_error(tmp_path):
    write_standard(tmp_path / "src", "jpg", "cls", {"train": 6})
    with pytest.raises(DataError, match=r"train-000001.tar \(split 'train'\) does not exist"):
        prepare("webdataset", tmp_path / "p", src=f"{tmp_path}/src/train-{{000000..000009}}.tar")
    with pytest.raises(DataError, match=r"expected an image \(png\) and a label \(cls\), got \['cls', 'jpg', 'txt'\]"):
        prepare("webdataset", tmp_path / "p", src=f"{tmp_path}/src/train-000000.tar", image_key="png")
    with pytest.raises(DataError, match="--label-key 'txt': use cls, json or json:FIELD"):
        prepare("webdataset", tmp_path / "p", src=f"{tmp_path}/src/train-000000.tar", label_key="txt")
    with pytest.raises(DataError, match="names split 'train' twice"):
        prepare("webdataset", tmp_path / "p", src=f"train={tmp_path}/a.tar,train={tmp_path}/b.tar")
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_harness_shards_single_and_multi_label_read_with_plain_webdataset(tmp_path):
    write_fmnist(tmp_path / "fm-src", n_train=20, n_test=8)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "fm-src", shard_size=8)
    single = [int(v) for _, y in ShardReader(tmp_path / "fm", "train", batch_size=6) for v in y]
    urls = [str(tmp_path / "fm" / s.name) for s in load_manifest(tmp_path / "fm").splits["train"].shards]
    plain = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert [s["cls"] for s in plain] == single and plain[0]["png"].size == (28, 28)

    write_hashlist(tmp_path / "hl-src", n={"train.txt": 10, "test.txt": 4, "database.txt": 6})
    prepare("hashlist", tmp_path / "hl", src=tmp_path / "hl-src")
    hot = [row for _, y in ShardReader(tmp_path / "hl", "train", batch_size=4, image_size=32) for row in y]
    urls = [str(tmp_path / "hl" / s.name) for s in load_manifest(tmp_path / "hl").splits["train"].shards]
    plain = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert [s["json"] for s in plain] == [np.flatnonzero(r.numpy()).tolist() for r in hot]


def test_label_members_old_and_new():
    assert encode_label([5, 1, 5], "multi") == ("json", b"[1, 5]")
    assert decode_label("labels", b"1,5", "x", 10) == [1, 5]  # shards written before `json`
    assert decode_label("json", b"[5, 1]", "x", 10) == [1, 5]
    assert decode_label("json:y", json.dumps({"y": 3}).encode(), "x", 10) == 3
    with pytest.raises(DataError, match="is not a class index"):
        decode_label("json:y", b'{"y": 1.5}', "x", 10)
    with pytest.raises(DataError, match="outside the 10 classes"):
        decode_label("cls", b"10", "x", 10)


@pytest.mark.slow
def test_a_tiny_dag_runs_on_shards_indexed_in_place(tmp_path):
    """The plan's nodes, run one after another without Ray (each as a Tune trial would run it)."""
    from harness.execution.runner import run_node
    from harness.execution.store import ArtifactStore
    from harness.planning.dag import load_dag
    from harness.planning.plan import build_plan

    write_standard(tmp_path / "src", "jpg", "cls", {"train": 60, "test": 20}, per_shard=30)
    prepare("webdataset", tmp_path / "wds", src=f"train={tmp_path}/src/train-{{000000..000001}}.tar,"
            f"test={tmp_path}/src/test-000000.tar")
    dag = load_dag(Path(__file__).resolve().parents[1] / "dags" / "smoke.yaml", [
        f"datasets.fashion-mnist.root={tmp_path / 'wds'}", "rules=[bp,frsf]", "tasks={classification: {}}",
        "attacks=[{name: fgsm, sources: [rule, exact], eps: [0, 0.1], n: 8, batch_size: 8}]"])
    store = ArtifactStore(tmp_path / "store")
    nodes = build_plan(dag)
    for node in nodes:
        run_node(node, store)
    assert all(store.done(n.stage, n.key) for n in nodes) and len(nodes) == 1 + 2 + 2 + 4 + 1  # and the budget
    import polars as pl

    from harness.stages.attack import OUTCOMES

    attack = next(n for n in nodes if n.stage == "attack")
    outcomes = pl.read_parquet(store.node_dir("attack", attack.key) / OUTCOMES)
    assert outcomes.height == 8 * 2 and sorted(outcomes["image"].unique().to_list()) == list(range(8))
