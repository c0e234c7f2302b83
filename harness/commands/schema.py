"""`harness schema`: writes the JSON Schema of a DAG file, generated from the settings each stage, task, attack and
registry declares (with --plugin, yours too). DAG files point at it with a first line
`# yaml-language-server: $schema=schema.json` (the YAML language server: VS Code, Neovim, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "dags" / "schema.json"


def add(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("--out", default=str(SCHEMA), help="where to write it (default: dags/schema.json)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 2 if the file is not current")


def main(args: argparse.Namespace) -> int:
    from harness.planning.dag import json_schema
    from workloads.errors import ConfigError

    text, out = json_schema(), Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            raise ConfigError(f"{out} is not current: run `harness schema --out {out}` and commit it")
        print(f"{out} is current")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0
