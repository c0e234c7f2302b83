"""Shards: prepare for every adapter, read back exactly, and fail loudly on every kind of bad input."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from datagen import (
    cifar_batches,
    tar_with,
    write_cifar10_bin,
    write_cifar10_py,
    write_fmnist,
    write_hashlist,
    write_imagefolder,
)

from workloads.datasets import DataError, ShardReader, load_manifest, prepare
from workloads.datasets.adapters.fashion_mnist import FashionMNIST, read_idx
from workloads.datasets.codec import encode_png


def read_all(root, split, **kw):
    reader = ShardReader(root, split, batch_size=7, channels=None, **kw)
    xs, ys = zip(*list(reader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# -- round trips --------------------------------------------------------------------------------------------------
def test_fashion_mnist_round_trip(tmp_path):
    truth = write_fmnist(tmp_path / "src", n_train=23, n_test=9)
    m, wrote = prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src", shard_size=10)
    assert wrote and m.splits["train"].count == 23 and len(m.splits["train"].shards) == 3
    for split in ("train", "test"):
        x, y = read_all(tmp_path / "out", split)
        imgs, labels = truth[split]
        assert np.array_equal(to_uint8(x)[..., 0], imgs)
        assert np.array_equal(y.numpy(), labels)


@pytest.mark.parametrize("layout", ["py", "bin"])
def test_cifar10_round_trip(tmp_path, layout):
    batches = cifar_batches()
    (write_cifar10_py if layout == "py" else write_cifar10_bin)(tmp_path / "src", batches)
    m, _ = prepare("cifar10", tmp_path / "out", src=tmp_path / "src")
    assert m.classes == [f"c{i}" for i in range(10)] and m.splits["train"].count == 30
    x, y = read_all(tmp_path / "out", "train")
    data = np.concatenate([b[0] for b in batches[:5]]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(to_uint8(x), data)
    assert np.array_equal(y.numpy(), np.concatenate([b[1] for b in batches[:5]]))


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    root = write_cifar10_py(tmp_path / "src", cifar_batches())

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="data_batch_1 is not a CIFAR batch.*refusing to load"):
        prepare("cifar10", tmp_path / "out", src=tmp_path / "src")
    assert not (tmp_path / "pwned").exists()


def test_imagefolder_round_trip_with_splits_and_resize(tmp_path):
    truth = write_imagefolder(tmp_path / "src")
    m, _ = prepare("imagefolder", tmp_path / "out", src=tmp_path / "src")
    assert m.classes == ["cat", "dog", "emu"] and set(m.splits) == {"train", "val"}
    assert m.image["height"] is None and m.image["encoding"] == "png"
    # stored bytes are the source's own: decode one shard member and compare
    reader = ShardReader(tmp_path / "out", "val", batch_size=100, image_size=16, channels=3)
    x, y = next(iter(reader))
    assert x.shape == (9, 3, 16, 16) and y.tolist() == [lab for _, lab in truth["val"]]
    with pytest.raises(DataError, match="different sizes; set image_size"):
        ShardReader(tmp_path / "out", "val")


def test_hashlist_multi_label_round_trip(tmp_path):
    truth = write_hashlist(tmp_path / "src")
    m, _ = prepare("hashlist", tmp_path / "out", src=tmp_path / "src")
    assert m.label_kind == "multi" and set(m.splits) == {"train", "query", "database"}
    x, y = read_all(tmp_path / "out", "query", image_size=24)
    assert y.dtype == torch.float32 and y.shape == (4, 5)
    for row, (img, labels) in zip(range(4), truth["test.txt"], strict=True):
        assert np.array_equal(to_uint8(x[row : row + 1])[0], img)
        assert torch.nonzero(y[row]).flatten().tolist() == labels
    # a class subset keeps samples with any kept label and remaps the multi-hot columns
    _, ys = read_all(tmp_path / "out", "database", classes=[3, 1], image_size=24)
    for row in ys:
        assert row.shape == (2,) and row.sum() >= 1


# -- caching and change detection -----------------------------------------------------------------------------
def test_prepare_twice_does_no_work_and_detects_a_changed_source(tmp_path):
    write_fmnist(tmp_path / "src")
    _, wrote = prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src")
    assert wrote
    stamp = (tmp_path / "out" / "train-000000.tar").stat().st_mtime_ns
    _, wrote = prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src")
    assert not wrote and (tmp_path / "out" / "train-000000.tar").stat().st_mtime_ns == stamp
    write_fmnist(tmp_path / "src", seed=1)  # new pixels, same file names and sizes
    _, wrote = prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src")
    assert wrote
    _, wrote = prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src", shard_size=7)  # new options
    assert wrote
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folders left


# -- bad input ----------------------------------------------------------------------------------------------------
def test_missing_source_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--download"):
        prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "nothing")
    with pytest.raises(DataError, match="unknown dataset 'mnist'; known datasets: cifar10, cifar100, fashion-mnist"):
        prepare("mnist", tmp_path / "out")


@pytest.fixture
def shards(tmp_path):
    write_fmnist(tmp_path / "src", n_train=30, n_test=10)
    prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src", shard_size=10)
    return tmp_path / "out"


def test_truncated_shard_names_shard_and_key(shards):
    p = shards / "train-000001.tar"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train-000001.tar .*(truncated|sample '000000\d\d')"):
        list(ShardReader(shards, "train", cache=False))
    with pytest.raises(DataError, match=r"train-000001.tar.*truncated (inside|after) member '000000\d\d\.\w+'"):
        list(ShardReader(shards, "train", cache=False, verify=False))


def test_flipped_byte_names_the_damaged_sample(shards):
    p = shards / "train-000002.tar"
    data = bytearray(p.read_bytes())
    # the label of the 4th sample of this shard (key 00000023): find its member and change the digit
    at = data.index(b"00000023.cls") + 512
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000002.tar does not match its manifest.*sample '00000023' was altered"):
        list(ShardReader(shards, "train"))


def test_corrupt_png_without_verification_names_the_key(shards):
    p = shards / "test-000000.tar"
    data = bytearray(p.read_bytes())
    at = data.index(b"00000004.png") + 512 + 40  # inside the PNG's pixel data
    data[at : at + 8] = b"\xff" * 8
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test-000000.tar, sample '00000004': image does not decode"):
        list(ShardReader(shards, "test", verify=False))


def test_manifest_that_does_not_match_its_shards(shards):
    m = json.loads((shards / "manifest.json").read_text())
    m["splits"]["train"]["count"] = 31
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="split 'train' says 31 samples but its shards hold 30"):
        ShardReader(shards, "train")
    (shards / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json is not valid JSON"):
        load_manifest(shards)


def test_shard_missing_from_disk(shards):
    (shards / "train-000000.tar").unlink()
    with pytest.raises(DataError, match="train-000000.tar is missing"):
        list(ShardReader(shards, "train", cache=False))


def test_label_outside_the_class_list(tmp_path, shards):
    # in a source
    src = tmp_path / "bad"
    write_fmnist(src)
    lab = src / "train-labels-idx1-ubyte.gz"
    import gzip

    raw = bytearray(gzip.decompress(lab.read_bytes()))
    raw[8 + 3] = 12
    lab.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="label 12 is outside the 10 classes"):
        prepare("fashion-mnist", tmp_path / "o2", src=src)
    # in a shard (manifest and checksum consistent, label still out of range)
    m = json.loads((shards / "manifest.json").read_text())
    m["classes"] = m["classes"][:2]
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"sample '000000\d\d': label \d is outside the 2 classes"):
        list(ShardReader(shards, "train"))


def test_empty_split(tmp_path):
    write_fmnist(tmp_path / "src", n_train=0, n_test=5)
    with pytest.raises(DataError, match="split 'train' of fashion-mnist .* is empty"):
        prepare("fashion-mnist", tmp_path / "out", src=tmp_path / "src")
    assert not (tmp_path / "out").exists()


def test_member_with_a_path_is_refused_and_nothing_is_written(shards, tmp_path):
    evil = tar_with([("../escape.png", encode_png(np.zeros((28, 28), np.uint8))), ("../escape.cls", b"1")])
    (shards / "test-000000.tar").write_bytes(evil)
    with pytest.raises(DataError, match="member '../escape.png' whose name is a path"):
        list(ShardReader(shards, "test", verify=False))
    assert not (shards.parent / "escape.png").exists()


def test_cifar_archive_is_read_without_extracting(tmp_path):
    src = write_cifar10_py(tmp_path / "src", cifar_batches())
    import tarfile

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in src.iterdir():
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        info = tarfile.TarInfo("../../../escaped.txt")
        info.size = 3
        import io

        tar.addfile(info, io.BytesIO(b"bad"))
    m, _ = prepare("cifar10", tmp_path / "out", src=archive)
    assert m.splits["test"].count == 6
    assert not list(tmp_path.parent.glob("escaped.txt")) and not (tmp_path / "escaped.txt").exists()


# -- the reader -----------------------------------------------------------------------------------------------
def test_shuffling_is_seeded_and_changes_with_the_epoch(shards):
    def order(seed, epoch, cache):
        r = ShardReader(shards, "train", batch_size=4, shuffle=True, seed=seed, channels=1, cache=cache)
        r.set_epoch(epoch)
        return torch.cat([x.flatten(1)[:, :8] for x, _ in r])

    for cache in (True, False):
        a, b = order(0, 0, cache), order(0, 0, cache)
        assert torch.equal(a, b)
        assert not torch.equal(a, order(0, 1, cache)) and not torch.equal(a, order(1, 0, cache))
        assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, order(0, 1, cache).tolist()))  # same samples


@pytest.mark.parametrize("cache", [True, False])
def test_ranks_split_the_data_without_overlap(shards, cache):
    seen = []
    for rank in range(3):
        r = ShardReader(shards, "train", batch_size=5, rank=rank, world_size=3, channels=1, cache=cache,
                        shuffle=True)
        seen.append({tuple(v[:6].tolist()) for x, _ in r for v in x.flatten(1)})
    assert sum(len(s) for s in seen) == 30 and len(set().union(*seen)) == 30


def test_class_subset_remap_limit_pad_and_rgb(shards, tmp_path):
    r = ShardReader(shards, "train", batch_size=64, classes=[7, 2], pad=2, channels=3)
    x, y = next(iter(r))
    truth = write_fmnist(tmp_path / "again", n_train=30, n_test=10)["train"][1]  # the fixture's labels
    kept = [lab for lab in truth if lab in (7, 2)]
    assert y.tolist() == [0 if lab == 7 else 1 for lab in kept] and len(r) == len(kept)
    assert x.shape == (len(kept), 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and (x[:, :, :2] == 0).all()
    r = ShardReader(shards, "train", batch_size=64, limit=11, image_size=64)
    x, _ = next(iter(r))
    assert x.shape == (11, 3, 64, 64) and len(r) == 11


@pytest.mark.slow
def test_real_fashion_mnist_matches_the_idx_files(tmp_path, fmnist_source):
    m, _ = prepare("fashion-mnist", tmp_path / "fm", src=fmnist_source)
    assert m.splits["train"].count == 60_000 and m.splits["test"].count == 10_000
    for split, stem in (("train", "train"), ("test", "t10k")):
        imgs = read_idx(FashionMNIST._find(fmnist_source, f"{stem}-images-idx3-ubyte"))
        labels = read_idx(FashionMNIST._find(fmnist_source, f"{stem}-labels-idx1-ubyte"))
        reader = ShardReader(tmp_path / "fm", split, batch_size=4096, channels=1)
        x = torch.cat([b[0] for b in reader])
        y = torch.cat([b[1] for b in reader])
        assert np.array_equal(to_uint8(x)[..., 0], imgs) and np.array_equal(y.numpy(), labels)


def test_cifar100_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src" / "cifar-100-python"
    root.mkdir(parents=True)
    truth = {}
    for split, n in (("train", 7), ("test", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        (root / split).write_bytes(pickle.dumps({b"data": data, b"fine_labels": [int(v) for v in fine],
                                                 b"coarse_labels": [0] * n}, protocol=2))
        truth[split] = (data, fine)
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, 2))
    m, _ = prepare("cifar100", tmp_path / "out", src=tmp_path / "src")
    assert m.num_classes == 100 and m.classes[99] == "f99"
    x, y = read_all(tmp_path / "out", "test")
    assert np.array_equal(to_uint8(x), truth["test"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(y.numpy(), truth["test"][1])
