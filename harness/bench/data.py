"""`harness bench data`: images per second of the shard reader, against an in-memory tensor baseline and against
ResNet-18 training, all in the same process. Imports no Ray.

`--standard-jpg` also measures the reader on the same split as users hold their data: written by
`webdataset.ShardWriter` as `jpg` + `cls` samples and indexed in place (`harness data prepare webdataset`), so
the two stored forms are compared epoch by epoch in one process.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field

from harness.bench import Bench
from workloads.datasets import ShardReader, load_manifest
from workloads.settings import Section


def _epoch_rate(batches: Callable[[], object]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for x, _ in batches():
        n += len(x)
    return n / (time.perf_counter() - t0), n


def _memory_baseline(images: torch.Tensor, labels: torch.Tensor, batch: int, pad: int, seed: int):
    """The same batches from a uint8 tensor already in memory: permutation, gather, float, pad, grey->RGB."""

    def batches():
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(labels), generator=g)
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            x = images[idx].float().div_(255.0)
            if pad:
                x = F.pad(x, (pad,) * 4)
            yield x.expand(-1, 3, -1, -1).contiguous(), labels[idx]

    return batches


def _train_rate(size: int, batch: int, steps: int = 6) -> float:
    model = torchvision.models.resnet18(num_classes=10).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def standard_jpg_copy(folder: str | Path, split: str, out: Path, per_shard: int = 10_000) -> Path:
    """`split` of a prepared folder as a user's WebDataset holds it (webdataset.ShardWriter, `jpg` + `cls`,
    `{split}-%06d.tar`, JPEG at webdataset's default quality), then indexed in place: the prepared folder it
    returns holds a manifest, no image."""
    import webdataset as wds
    from PIL import Image

    from workloads.datasets.prepare import prepare

    data = ShardReader(folder, split, batch_size=1024, cache=True)._load_all()
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            sink.write({"__key__": f"{i:08d}", "jpg": pil, "cls": int(label)})
    shards = sorted(out.glob(f"{split}-*.tar"))
    pattern = f"{split}={out}/{split}-{{000000..{len(shards) - 1:06d}}}.tar"
    prepare("webdataset", out / "prepared", src=pattern)
    return out / "prepared"


class Settings(Section):
    folder: str = "data/fashion-mnist"
    """Prepared shards."""
    split: str = "train"
    batch_size: Annotated[int, Field(ge=1)] = 256
    pad: Annotated[int, Field(ge=0)] = 2
    """Zero padding per side (2: 28 -> 32)."""
    epochs: Annotated[int, Field(ge=1)] = 3
    standard_jpg: bool = False
    """Also read the split as standard WebDataset shards (webdataset.ShardWriter, jpg + cls, indexed in place),
    epoch by epoch next to the harness's own."""
    seed: int = 0
    out: str = "results/bench/data.json"
    """JSON output."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict:
    folder, split, batch_size, pad, epochs = s.folder, s.split, s.batch_size, s.pad, s.epochs
    standard_jpg, seed = s.standard_jpg, s.seed
    manifest = load_manifest(folder)
    rows: dict = {}
    readers = {"harness": ShardReader(folder, split, batch_size=batch_size, shuffle=True, seed=seed, pad=pad,
                                      cache=False)}
    with tempfile.TemporaryDirectory(prefix="bench-data-jpg-") as tmp:
        if standard_jpg:
            log(f"[bench data] writing {split} as standard jpg + cls shards with webdataset.ShardWriter")
            jpg = standard_jpg_copy(folder, split, Path(tmp))
            readers["jpg"] = ShardReader(jpg, split, batch_size=batch_size, shuffle=True, seed=seed, pad=pad,
                                         cache=False)
        log(f"[bench data] streamed reader (decode every epoch), {epochs} epochs" +
            (", harness shards and standard jpg shards in turn" if standard_jpg else ""))
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for e in range(epochs):
            for name, reader in readers.items():
                reader.set_epoch(e)
                rates[name].append(_epoch_rate(lambda r=reader: r)[0])
    rows["reader_streamed_img_s"] = float(np.median(rates["harness"]))
    if standard_jpg:
        rows["standard_jpg_streamed_img_s"] = float(np.median(rates["jpg"]))
        rows["standard_jpg_vs_harness"] = float(np.median(np.array(rates["jpg"]) / np.array(rates["harness"])))
    log("[bench data] cached reader (decode once, then from memory)")
    cached = ShardReader(folder, split, batch_size=batch_size, shuffle=True, seed=seed, pad=pad, cache=True)
    first, n = _epoch_rate(lambda: cached)
    rows["reader_cached_first_epoch_img_s"] = first
    rates = []
    for e in range(1, epochs + 1):
        cached.set_epoch(e)
        rates.append(_epoch_rate(lambda r=cached: r)[0])
    rows["reader_cached_img_s"] = float(np.median(rates))
    log("[bench data] in-memory tensor baseline")
    data = cached._load_all()
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(data.labels)
    base = [_epoch_rate(_memory_baseline(images, labels, batch_size, pad, seed + e))[0] for e in range(epochs)]
    rows["memory_baseline_img_s"] = float(np.median(base))
    size = (manifest.image.get("height") or 0) + 2 * pad
    log(f"[bench data] ResNet-18 training throughput at {size}x{size}, batch 64")
    rows["resnet18_train_img_s"] = _train_rate(size, 64)
    rows["streamed_vs_train"] = rows["reader_streamed_img_s"] / rows["resnet18_train_img_s"]
    rows["cached_vs_train"] = rows["reader_cached_img_s"] / rows["resnet18_train_img_s"]
    rows["cached_vs_memory_baseline"] = rows["reader_cached_img_s"] / rows["memory_baseline_img_s"]
    if standard_jpg:
        rows["standard_jpg_vs_train"] = rows["standard_jpg_streamed_img_s"] / rows["resnet18_train_img_s"]
    return {"benchmark": "data", "dataset": manifest.dataset, "split": split, "samples_per_epoch": n,
            "image_size": size, "batch_size": batch_size, "threads": torch.get_num_threads(), **rows}


def format_table(r: dict) -> str:
    return "\n".join([
        f"{r['dataset']} {r['split']}: {r['samples_per_epoch']} images/epoch at {r['image_size']}x{r['image_size']}"
        f" RGB, batch {r['batch_size']}, {r['threads']} threads",
        f"  shard reader, streamed (decode each epoch): {r['reader_streamed_img_s']:>10,.0f} img/s",
        *([f"  standard jpg shards, streamed:              {r['standard_jpg_streamed_img_s']:>10,.0f} img/s"
           f"  ({r['standard_jpg_vs_harness']:.2f}x the harness's png shards, epoch by epoch)"]
          if "standard_jpg_streamed_img_s" in r else []),
        f"  shard reader, cached (decoded once):        {r['reader_cached_img_s']:>10,.0f} img/s",
        f"  in-memory tensor baseline:                   {r['memory_baseline_img_s']:>10,.0f} img/s",
        f"  ResNet-18 training (same size, batch 64):    {r['resnet18_train_img_s']:>10,.0f} img/s",
        f"  streamed / training: {r['streamed_vs_train']:.1f}x   cached / training: {r['cached_vs_train']:.1f}x   "
        f"cached / in-memory baseline: {r['cached_vs_memory_baseline']:.2f}x",
    ])


BENCH = Bench(
    "data", "shard reader images/s vs an in-memory tensor and vs ResNet-18 training",
    "Reads a prepared split streamed (decoding every epoch) and cached (decoded once), times the same batches from "
    "an in-memory uint8 tensor, and measures ResNet-18 training images/s at the same size.", Settings, run,
    format_table, positional=("folder",))
