"""The `transferlab` command. User errors print one line and exit with code 2.

The run commands' options are made from the run config's fields (`options.py`), so an option is declared once:
its field, with its help text, and the names the command lists."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import typer

from transferlab.cli import runs, tools
from transferlab.cli.common import console, quiet_libraries
from transferlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich would read "[default: ...]" as markup and drop it
    help="Transfer learning: every adaptation strategy tried on your data, compared honestly.",
)

# In the order `transferlab --help` lists them.
COMMANDS = {
    "compare": runs.compare,
    "forgetting": runs.forgetting_command,
    "check": runs.check_command,
    "recommend": tools.recommend_command,
    "train": runs.train,
    "auto": runs.auto,
    "predict": tools.predict,
    "export": tools.export,
    "serve": tools.serve,
    "study": runs.study,
    "report": tools.report,
    "lr-table": tools.lr_table,
    "list": tools.list_assets,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job unwinds like Ctrl-C: checkpoints kept, nothing half-written
    try:
        code = app(standalone_mode=False)  # a command's `typer.Exit(n)` comes back as n
    except UserError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: the same command with the same --out resumes where it stopped")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as err:  # usage errors: unknown option, bad value
        err.show()
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
