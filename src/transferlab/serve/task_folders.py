"""The served tasks as the command line names them: `NAME=DIR` pairs, checked before anything loads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from transferlab.errors import UserError

TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # becomes a peft adapter name, which must not contain dots


def parse_task_folders(
    options: Sequence[str], flag: str = "--adapter", what: str = "a folder written by 'transferlab train --keep-adapter'"
) -> dict[str, Path]:
    """`NAME=DIR` pairs given with `flag`, names unique; `what` says what DIR must be when none is given."""
    folders: dict[str, Path] = {}
    for option in options:
        name, sep, folder = option.partition("=")
        if not sep or not folder:
            raise UserError(f"{flag} takes NAME=DIR, got '{option}'")
        if not TASK_NAME.fullmatch(name):
            raise UserError(f"task name '{name}': use 1-64 letters, digits, '_' or '-'")
        if name in folders:
            raise UserError(f"task '{name}' is given twice")
        folders[name] = Path(folder)
    if not folders:
        raise UserError(f"give at least one {flag} NAME=DIR ({what})")
    return folders
