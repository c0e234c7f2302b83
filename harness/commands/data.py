"""`harness data`: datasets into WebDataset shards once (`prepare`), and what is there (`locate`, `info`, `list`).

`prepare` takes each dataset adapter's own options as flags (its `Options`: a plugin's adapter too), so an adapter
is one file: the flags follow from what it declares.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.common import log
from harness.commands.flags import add_flags


def add(p: argparse.ArgumentParser) -> None:
    from workloads.datasets import available_adapters, get_adapter

    which = p.add_subparsers(dest="data", required=True, metavar="{prepare,locate,info,list}")
    prep = which.add_parser(
        "prepare", help="write {split}-%%06d.tar shards + manifest.json for a dataset",
        description="Reads a dataset in its original format and writes WebDataset shards plus a manifest (counts, "
        "classes, label kind, image size, checksums). Re-running on an unchanged source does nothing. Existing "
        "WebDataset shards are indexed where they are, not copied: `harness data prepare webdataset --src "
        "'train=shards/train-{000000..000099}.tar,test=https://host/test-{0000..0009}.tar' --out data/mine`.")
    prep.add_argument("name", help="a dataset adapter, e.g. fashion-mnist, cifar10, imagefolder, hashlist "
                      "(`harness data list`)")
    prep.add_argument("--src", default=None, help="where the source data is (default: the adapter's usual place)")
    prep.add_argument("--out", default=None, help="output folder, or an object-store URI such as "
                      "s3://BUCKET/data/NAME?endpoint_override=HOST:PORT (docs/cluster.md) (default: data/NAME)")
    prep.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default: %(default)s)")
    prep.add_argument("--download", action="store_true", help="let torchvision download the source if it is missing")
    prep.add_argument("--force", action="store_true", help="rewrite the shards even if the source is unchanged")
    seen: set[str] = set()
    for name in available_adapters():  # each adapter's own options; a name two adapters share is one flag
        options = get_adapter(name).Options
        add_flags(prep, options, skip=seen, note=f"{name}: ")
        seen |= set(options.model_fields)
    loc = which.add_parser("locate", help="print where a dataset adapter finds its source data, or how to get it",
                           description="Exit 0 and print the source folder the adapter would read (what `harness "
                           "data prepare NAME` would read); otherwise exit 2 with how to get the data.")
    loc.add_argument("name", help="a dataset adapter (`harness data list`)")
    loc.add_argument("--src", default=None, help="where to look (default: the adapter's usual places)")
    info = which.add_parser("info", help="print a prepared dataset's manifest summary and verify its shards")
    info.add_argument("folder")
    info.add_argument("--deep", action="store_true", help="also recompute every shard checksum")
    which.add_parser("list", help="list the dataset adapters")


def main(args: argparse.Namespace) -> int:
    from workloads import datasets, storage
    from workloads.datasets.prepare import describe
    from workloads.settings import validate

    if args.data == "list":
        for name in datasets.available_adapters():
            print(f"{name:<14} {datasets.get_adapter(name).description}")
        return 0
    if args.data == "locate":
        print(datasets.get_adapter(args.name)(src=args.src).locate())
        return 0
    if args.data == "info":
        from workloads.datasets.manifest import check_shard_files

        m = datasets.load_manifest(args.folder)
        check_shard_files(args.folder, m, deep=args.deep)
        print(describe(m))
        print("shards: all present" + (", checksums match" if args.deep else " with the sizes the manifest lists"))
        return 0
    adapter = datasets.get_adapter(args.name)
    given = {k: getattr(args, k) for k in vars(args) if k in _all_options()}
    foreign = sorted(set(given) - set(adapter.Options.model_fields))
    if foreign:
        from workloads.errors import InputError

        raise InputError(f"--{foreign[0].replace('_', '-')}: not an option of {args.name} (its options: "
                         f"{', '.join(adapter.Options.model_fields) or 'none'})")
    options = validate(adapter.Options, given, f"harness data prepare {args.name}").model_dump(exclude_unset=True)
    out = args.out or Path("data") / args.name  # a folder or an object-store URI: prepare() takes either

    def progress(split: str, done: int, total: int | None) -> None:
        log(f"[prepare {args.name}] {split}: {done}/{total if total else '?'}")

    manifest, wrote = datasets.prepare(args.name, out, src=args.src, shard_size=args.shard_size,
                                       download=args.download, force=args.force, progress=progress, **options)
    print(("wrote " if wrote else "up to date (source unchanged), nothing written: ") + storage.display(out))
    print(describe(manifest))
    return 0


def _all_options() -> set[str]:
    from workloads.datasets import available_adapters, get_adapter

    return {k for name in available_adapters() for k in get_adapter(name).Options.model_fields}
