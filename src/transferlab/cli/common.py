"""What every command shares: the two consoles, the run folder's default name, progress on stderr."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rich.console import Console

from transferlab.errors import UserError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # a redirected table is not cut to 80 columns


def quiet_libraries() -> None:
    """Keep the terminal for our own progress: library load reports and known-harmless warnings go.

    transformers is optional here: `predict --backend onnxruntime` runs where it is not installed."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers
    except ImportError:
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def out_dir(given: Path | None, command: str) -> Path:
    """The run folder: --out, or a new one under runs/ named by the command and the time."""
    if given:
        if given.exists() and not given.is_dir():
            raise UserError(f"--out {given}: a file is there; a run writes a folder")
        return given
    from transferlab.distributed import broadcast

    # Under `accelerate launch` rank 0 names the folder: the processes' clocks may be a second apart.
    return Path(broadcast(f"runs/{command}-{datetime.now():%Y%m%d-%H%M%S}"))


def quiet_unless_main() -> None:
    """Under `accelerate launch` only rank 0 reports; the other processes train silently beside it."""
    from transferlab.distributed import is_main_process

    if not is_main_process():
        console.quiet = out.quiet = True


def progress_logger() -> Callable[[str], None]:
    return lambda message: console.print(message, style="dim", soft_wrap=True, highlight=False)


class training_progress:
    """A rich progress bar over training steps, fed by the Trainer through `transferlab.training.loop`."""

    def __enter__(self) -> Callable[[str], None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from transferlab.training import loop

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
        )
        self._progress.start()
        self._task = None

        def on_step(step: int, total: int) -> None:
            if self._task is not None:
                self._progress.update(self._task, completed=step, total=total)

        loop.PROGRESS_HOOKS.append(on_step)
        self._hook = on_step
        return self._start

    def _start(self, name: str) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(name, total=None)

    def __exit__(self, *exc: object) -> None:
        from transferlab.training import loop

        loop.PROGRESS_HOOKS.remove(self._hook)
        self._progress.stop()
