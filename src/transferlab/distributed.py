"""Several processes under `accelerate launch`: which one writes, and the state the Trainer shares.

The Trainer splits each batch over the processes and averages gradients (DDP); everything else in a
run (data, splits, tokenisation, the head's scikit-learn fit, evaluation) is computed identically by
every process, and only rank 0 writes results, logs and exported models.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env


def state() -> PartialState:
    """accelerate's view of this run's processes, set up as the Trainer will set it up.

    The Trainer asks accelerate for gloo on the CPU only when ACCELERATE_USE_CPU is set, and
    `accelerate launch --multi_gpu` does not set it, so on a machine without a GPU we do: several
    processes then talk over gloo, as they would over NCCL on GPUs. (`accelerate launch --cpu` starts
    a single process unless given an MPI host file.)
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    return state().is_main_process


def broadcast(value: Any) -> Any:
    """Rank 0's value in every process, for names chosen by the clock or by `mkdtemp`."""
    state()
    return broadcast_object_list([value])[0]
