"""`harness`: the command line. Only the chosen command's module is imported (harness/commands/), so `--help` is
instant; `--plugin MODULE` imports a user's own rules, attacks, backbones, datasets, tasks or stages first.

Errors: a `workloads.errors.HarnessError` (something the user can fix) prints one line and exits with its kind's
code; anything else is a bug and keeps its traceback (exit 70). `--debug` shows the traceback for both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from harness.commands import ALIASES, COMMANDS
from harness.execution import interrupts
from workloads.errors import EXIT_CODES, HarnessError


def _top() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    parser = argparse.ArgumentParser(
        prog="harness", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark harness for sign-symmetry learning rules as robust fine-tuners (arXiv 2502.05925).",
        epilog=f"exit codes:\n{codes}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of every error, also of bad input")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", dest="plugins",
                        help="import a module of your own first (repeatable): what it registers works like the "
                        "built-in rules, attacks, backbones, datasets, tasks and stages (docs/extending.md)")
    return parser


def _chosen(argv: list[str]) -> str | None:
    """The command word in `argv` (the first argument that is not a global option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--plugin":
            skip = True
        elif not arg.startswith("-"):
            return ALIASES.get(arg, arg)
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full flags of the command `argv` names (the others only list themselves)."""
    parser = _top()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(list(sys.argv[1:] if argv is None else argv))
    for name, (module, help_line) in COMMANDS.items():
        aliases = [a for a, target in ALIASES.items() if target == name]
        p = sub.add_parser(name, aliases=aliases, help=help_line)
        if name == chosen:
            importlib.import_module(f"harness.commands.{module}").add(p)
    return parser


def _plugins_first(argv: list[str]) -> None:
    """--plugin modules are imported before the parser is built: their dataset formats' options are flags."""
    from harness.config.plugins import load_plugins

    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--plugin"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--plugin=")]
    load_plugins(names)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # SIGTERM (`timeout`, `kill`, a scheduler) and SIGHUP (a closed terminal) end a command as Ctrl-C does, so
    # every `finally` runs: the servers a command started are stopped with all their workers, not orphaned. Inside
    # a Ray Tune run the stop waits for a safe point (harness/execution/interrupts.py)
    restore_signals = interrupts.install()
    try:
        _plugins_first(argv)
        args = build_parser(argv).parse_args(argv)
        name = ALIASES.get(args.command, args.command)
        return importlib.import_module(f"harness.commands.{COMMANDS[name][0]}").main(args)
    except HarnessError as exc:
        if debug:
            traceback.print_exc()
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; finished nodes are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001  (a bug, not the user's input: keep everything needed to report it)
        traceback.print_exc()
        print("harness: internal error (a bug, not your input; the traceback above says where): please report it",
              file=sys.stderr)
        return 70
    finally:
        restore_signals()


if __name__ == "__main__":
    sys.exit(main())
