"""The `vbp` command: calibrate, prune, eval, finetune, sweep and demo (`vbp COMMAND --help` for each).

Each command is a module of `vbp.commands`; this file builds the parser from them and turns failures into
`vbp COMMAND: error: ...` with exit status 2 (130 after Ctrl-C)."""

import argparse
import sys
import warnings

from .commands import COMMANDS
from .errors import VbpError
from .workflows.unreadable import unreadable_report


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not for options without one, nor where the help already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    version = f"vbp {__version__}"
    parser = argparse.ArgumentParser(prog="vbp", description="Variance-Based Pruning of trained networks.")
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, formatter_class=_HelpFormatter)
        p.add_argument("--version", action="version", version=version)
        command.add_arguments(p)
        p.set_defaults(command_module=command)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line of the command's output, not Python's file:line form."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command_module
    show_warning, warnings.showwarning = warnings.showwarning, _show_warning
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
    finally:
        warnings.showwarning = show_warning
        skipped = unreadable_report()  # taken (and forgotten) however the run ends; said after a run that ended
    if skipped:
        print(skipped, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
