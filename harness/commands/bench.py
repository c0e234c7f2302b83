"""`harness bench NAME`: the benchmarks of harness/bench/, each with the flags its settings declare."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands.common import log
from harness.commands.flags import add_flags, from_flags


def add(p: argparse.ArgumentParser) -> None:
    from harness.bench import NAMES, get

    which = p.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(NAMES) + "}")
    for name in NAMES:
        bench = get(name)
        q = which.add_parser(name, help=bench.help, description=bench.description)
        add_flags(q, bench.settings, positional=bench.positional, extra=bench.flags)


def main(args: argparse.Namespace) -> int:
    from harness.bench import get, write_json
    from harness.execution.allocator import keep_freed_memory

    keep_freed_memory()
    bench = get(args.bench)
    settings = from_flags(args, bench.settings, f"harness bench {bench.name}")
    result = bench.run(settings, log)
    print(bench.table(result))
    if result is None:  # nothing to measure here (gpu without CUDA): said above, not an error
        return 0
    if bench.markdown is not None:
        print(f"wrote {bench.markdown(result, settings.out)}")
        print(f"wrote {write_json(result, Path(settings.out).with_suffix('.json'))}")
    else:
        print(f"wrote {write_json(result, settings.out)}")
    return 0
