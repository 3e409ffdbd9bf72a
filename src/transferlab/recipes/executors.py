"""Where the independent runs of `compare` (strategy x fold x seed) execute: in turn, or on Ray workers.

Every run starts from the pretrained backbone with its own seed and shares nothing with the others
but the prepared experiment (data, splits, one tokenisation), so they can run anywhere and in any
order; results come back in job order, so `results.json` is the same whichever executor ran them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from transferlab.errors import UserError
from transferlab.recipes.experiment import Experiment, Job, Outcome, run_job
from transferlab.recipes.run_folder import RunFolder

EXECUTORS = ("sequential", "ray")


class Sequential:
    """One run after another in this process, checkpointing under the run folder."""

    def __init__(self, progress: Callable[[str], None] | None = None):
        self.progress = progress

    def map(self, experiment: Experiment, jobs: list[Job], out_dir: Path) -> Iterator[Outcome]:
        several = len(experiment.splits) * experiment.config.seeds > 1
        for job in jobs:
            if self.progress:
                self.progress(f"{job.strategy} fold {job.fold + 1} seed {job.seed}" if several else job.strategy)
            yield run_job(experiment, job, RunFolder(out_dir).workdir(*job.key))


class RayExecutor:
    """Runs dispatched as Ray tasks: a local Ray started for the sweep, or a cluster at `address`.

    The experiment is put into Ray's object store once. Each task checkpoints into a temporary
    folder of its own worker (a cluster node need not see the run folder) and returns its metrics
    and log; rank-0-style writing stays with the driver.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_run: float = 1):
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run

    def map(self, experiment: Experiment, jobs: list[Job], out_dir: Path) -> Iterator[Outcome]:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            local = {"num_cpus": self.num_cpus, "include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, log_to_driver=False, **local)
        try:
            task = ray.remote(num_cpus=self.cpus_per_run)(run_job)
            shared = ray.put(experiment)
            refs = [task.remote(shared, job, None) for job in jobs]
            for ref in refs:
                yield ray.get(ref)
        finally:
            if started_here:
                ray.shutdown()


def make_executor(
    name: str, progress: Callable[[str], None] | None = None, address: str | None = None, num_cpus: int | None = None
) -> Sequential | RayExecutor:
    if name == "sequential":
        if address or num_cpus:
            raise UserError("--ray-address and --ray-cpus apply to --executor ray")
        return Sequential(progress)
    if name == "ray":
        if num_cpus is not None and num_cpus < 1:
            raise UserError(f"--ray-cpus must be at least 1, got {num_cpus}")
        return RayExecutor(address, num_cpus)
    raise UserError(f"unknown executor '{name}': choose one of {', '.join(EXECUTORS)}")
