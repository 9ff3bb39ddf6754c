"""`python -m motif.train STAGE_FILE ...`: the `motif train` command alone.

Same arguments and behaviour as `motif train`; it imports only the trainer's command module, so
each rank starts without loading the other commands.
"""

import argparse
import logging
import sys

from motif.errors import MotifError
from motif.train import command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="motif train", description=command.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return int(command.run(args) or 0)
    except MotifError as e:
        print(f"motif train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("motif train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from motif.teardown import run_main

    run_main(main)
