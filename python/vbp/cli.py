"""The `vbp` command: calibrate, prune, eval, finetune, sweep and demo (`vbp COMMAND --help` for each).

Each command is a module of `vbp.commands`; this file builds the parser from them and turns failures into
`vbp COMMAND: error: ...` with exit status 2 (130 after Ctrl-C)."""

import argparse
import sys

from .commands import COMMANDS
from .errors import VbpError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vbp", description="Variance-Based Pruning of trained networks.")
    parser.add_argument("--version", action="version", version=f"vbp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        # every command's --help shows its defaults
        p = sub.add_parser(command.NAME, help=command.HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_arguments(p)
        p.set_defaults(command_module=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command_module
    try:
        command.run(args)
    except VbpError as exc:
        text = str(exc).strip()
        if text.startswith("Caught VbpError in DataLoader worker"):  # raised in a loader worker: its own message
            text = text.splitlines()[-1].removeprefix("vbp.errors.VbpError: ")
        print(f"vbp {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = command.interrupted_hint(args) if hasattr(command, "interrupted_hint") else "nothing was written"
        print(f"vbp {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
