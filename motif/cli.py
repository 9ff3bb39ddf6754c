"""The `motif` command line. Each subcommand lives in its own module, next to the code it drives.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and
keeps heavy imports (torch, transformers) inside `run`, so `motif --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from motif import __version__
from motif.errors import MotifError
from motif.teardown import run_main

# name -> module. Order is the order in `motif --help`.
COMMANDS: dict[str, str] = {
    "grow": "motif.growth.command",
    "plan": "motif.plan",
    "simulate": "motif.simulate.command",
    "train": "motif.train.command",
    "eval": "motif.eval.command",
    "generate": "motif.eval.generate",
    "status": "motif.status",
    "preflight": "motif.preflight",
    "mix": "motif.mix.command",
    "demo": "motif.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motif",
        description="Grow an open Llama 3 into a larger one (LlamaPro depth, MSG width) and train each stage.",
        epilog="Run `motif COMMAND --help` for the options of a command. Docs: docs/ in the repository.",
    )
    parser.add_argument("--version", action="version", version=f"motif {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._module.run(args) or 0)
    except MotifError as e:
        print(f"motif {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"motif {args.command}: interrupted", file=sys.stderr)
        return 130


def kubectl_plugin_main() -> int:
    """`kubectl motif ...` (kubectl runs `kubectl-motif` from PATH): same commands as `motif`."""
    os.environ.setdefault("MOTIF_PROG", "kubectl motif")
    return main()


def entry() -> NoReturn:
    """The `motif` console script: `main()`, then an exit that survives a joined process group."""
    run_main(main)


def kubectl_plugin_entry() -> NoReturn:
    """The `kubectl-motif` console script."""
    run_main(kubectl_plugin_main)
