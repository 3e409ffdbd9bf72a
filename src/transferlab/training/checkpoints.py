"""A training run's files: checkpoints a kill can leave half-written, a folder every process sees, live curves."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from transferlab.distributed import broadcast, is_main_process


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was fully written; a kill in the middle of a save leaves a newer
    one without its trainer state (written last), which is removed."""
    last = None
    if is_main_process() and folder.is_dir():
        while (last := get_last_checkpoint(str(folder))) is not None and not (Path(last) / TRAINER_STATE_NAME).is_file():
            shutil.rmtree(last)
    return broadcast(last)  # every process resumes from rank 0's choice


def tensorboard_callbacks(workdir: Path | None) -> list[TrainerCallback]:
    """Live curves for `tensorboard --logdir RUN/tensorboard`: the Trainer's TensorBoard callback, writing
    a run's job folder RUN/strategies/NAME/foldK-seedS (recipes/run_folder.py) to RUN/tensorboard/NAME-foldK-seedS,
    any other folder to WORKDIR/tensorboard. Nothing without a folder, on processes other than rank 0,
    or when tensorboard is not installed."""
    if workdir is None or not is_main_process():
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:
        return []
    workdir = Path(workdir)
    in_run = len(workdir.parents) > 2 and workdir.parents[1].name == "strategies"
    target = workdir.parents[2] / "tensorboard" / f"{workdir.parent.name}-{workdir.name}" if in_run else workdir / "tensorboard"
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(target)))]


def shared_temporary_folder() -> Path:
    """A checkpoint folder that every process sees: rank 0 makes it and tells the others its name."""
    return Path(broadcast(tempfile.mkdtemp(prefix="transferlab-") if is_main_process() else None))
