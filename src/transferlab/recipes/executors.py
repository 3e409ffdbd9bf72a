"""Where the independent runs of `compare` (strategy x fold x seed) and the trials of `auto` execute: in turn, or on
Ray workers.

Every run starts from the pretrained backbone with its own seed and shares nothing with the others
but the prepared experiment (data, splits, one tokenisation), so they can run anywhere and in any
order; results come back in job order, so `results.json` is the same whichever executor ran them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from transferlab.errors import UserError
from transferlab.recipes.experiment import Experiment, Job, Log, Outcome, run_job
from transferlab.recipes.run_folder import RunFolder

EXECUTORS = ("sequential", "ray")
T = TypeVar("T")


class Sequential:
    """One run after another in this process, checkpointing under the run folder."""

    def __init__(self, progress: Callable[[str], None] | None = None):
        self.progress = progress

    def search(self, experiment: Experiment, open_search: Callable[[Log], Any], work: Callable[..., T], log: Log) -> T:
        """auto's search: one worker, here, that keeps its best model for the final test."""
        return work(experiment, open_search(log))

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
        with self._session() as ray:
            task = ray.remote(num_cpus=self.cpus_per_run)(run_job)
            shared = ray.put(experiment)
            refs = [task.remote(shared, job, None) for job in jobs]
            for ref in refs:
                yield _unwrapped(ray, ref)

    def search(self, experiment: Experiment, open_search: Callable[[Log], Any], work: Callable[..., Any], log: Log) -> None:
        """auto's search on Ray: the search itself (the Optuna study and its journal in the run folder) in an actor on
        this machine, and one worker per `cpus_per_run` CPUs of the cluster, each asking it for trials and training
        them. The workers' models are not sent back: the winner is fitted again for its test."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._session() as ray:
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            host = ray.remote(num_cpus=0, scheduling_strategy=here)(_SearchHost).remote(open_search)
            worker = ray.remote(num_cpus=self.cpus_per_run)(_remote_worker)
            shared = ray.put(experiment)
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_run))
            pending = [worker.remote(work, shared, host) for _ in range(workers)]
            while pending:
                done, pending = ray.wait(pending, timeout=2.0)
                for line in ray.get(host.drain.remote()):
                    log(line)
                for ref in done:
                    _unwrapped(ray, ref)
        return None

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        """Ray, started here for the duration unless it is running already (or joined at `address`)."""
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            local = {"num_cpus": self.num_cpus, "include_dashboard": False} if self.address is None else {}
            ray.init(address=self.address, log_to_driver=False, **local)
        try:
            yield ray
        finally:
            if started_here:
                ray.shutdown()


class _SearchHost:
    """A search object served to Ray workers: each call runs here, one at a time, on the one study."""

    def __init__(self, open_search: Callable[[Log], Any]):
        self.lines: list[str] = []
        self.search = open_search(self.lines.append)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.search, method)(*args)

    def drain(self) -> list[str]:
        """The log lines written since the last call, for the driver to show."""
        lines = list(self.lines)
        self.lines.clear()  # the search appends to this very list
        return lines


class _RemoteSearch:
    """The worker's view of the search: each method call a round trip to the _SearchHost actor."""

    def __init__(self, host: Any):
        self.host = host

    def __getattr__(self, method: str) -> Callable[..., Any]:
        import ray

        return lambda *args: ray.get(self.host.call.remote(method, *args))


def _remote_worker(work: Callable[..., Any], experiment: Experiment, host: Any) -> None:
    work(experiment, _RemoteSearch(host), keep=False)


def _unwrapped(ray: Any, ref: Any) -> Any:
    """A task's result; a bad-input error raised on a worker comes back as that one-line error, not Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UserError):
            raise err.cause from None
        raise


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
