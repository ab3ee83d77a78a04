"""The `vbp` command's subcommands, one module each: NAME, HELP, add_arguments(parser), run(args), and
optionally interrupted_hint(args) (what to run after Ctrl-C). Adding a command is adding a module here and
its name to COMMANDS."""

from . import calibrate, demo, eval, export, finetune, profile, prune, sweep

COMMANDS = (calibrate, prune, eval, finetune, sweep, demo, profile, export)
