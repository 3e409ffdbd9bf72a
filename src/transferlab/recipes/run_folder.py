"""A run's folder: what it was asked to do, which of its runs have finished, and whether it is complete.

    config.yaml                              the resolved config, written first
    inputs.json                              the sha256 of every file the runs read: data and weights
    strategies/NAME/foldK-seedS/checkpoints  the Trainer's checkpoints while that run trains
    strategies/NAME/log-foldK-seedS.jsonl    that run's training log
    strategies/NAME/result-foldK-seedS.json  that run's result; written last, it marks the run finished
    results.json                             the whole record; written last, it marks the folder complete

Every file is written under a temporary name and renamed, so a kill at any moment leaves either
the old state or the new one. A folder without `results.json` is unfinished, and running the same
command again resumes it: finished runs are read back, an unfinished one continues from its last
checkpoint. A different config, or the same config over changed files, is refused rather than mixed in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from transferlab.errors import UserError
from transferlab.runio import (
    CONFIG,
    EXPORT_FORMATS,
    LABEL_ISSUES,
    MODEL_DIR,
    RESULTS,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
)

INPUTS = "inputs.json"
COMMAND_KEY = "command"  # in INPUTS: the command that started the run
# What a run writes here; a restart removes these and nothing else (the folder may hold the user's own files).
RUN_ENTRIES = (
    *(CONFIG, INPUTS, RESULTS, "strategies", MODEL_DIR, "report.html", "report.md", "study.png", "tensorboard", LABEL_ISSUES),
    *(fmt for fmt in EXPORT_FORMATS if fmt != "hf"),  # train's and auto's --export-format
    *("search.journal", "search.journal.lock", "leaderboard.csv", "search.png"),  # auto's search
)


def job_name(fold: int, seed: int) -> str:
    return f"fold{fold + 1}-seed{seed}"


def is_complete(folder: Path) -> bool:
    path = Path(folder) / RESULTS
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") == "complete"
    except (OSError, ValueError):
        return False


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def open(
        self,
        config: dict[str, Any],
        resume: bool | None,
        log: Callable[[str], None],
        inputs: dict[str, dict[str, str]] | None = None,
        command: str | None = None,
    ) -> None:
        """Start here, or carry on with the unfinished run of this same config over the same `inputs` (each file's
        sha256, by asset: a data file edited in place keeps its path, so the config alone does not tell), made by the
        same `command` (compare's and auto's runs of one config are different runs).

        `resume`: None carries on when there is something to carry on; True insists on it; False
        (`--restart`) discards whatever run is here first.
        """
        stored = self._stored_config()
        current = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # as it reads back from disk
        if stored is None:
            if resume:
                raise UserError(f"{self.path}: nothing to resume, no run was started here")
        elif resume is False:
            log(f"{self.path}: discarding the run that was here (--restart)")
            self._clear()
        elif stored != current:
            raise UserError(
                f"{self.path} holds a run of a different config ({_differences(stored, current)}); "
                "choose another --out, or pass --restart to replace it"
            )
        elif is_complete(self.path):
            if resume:
                raise UserError(f"{self.path}: the run here is complete, nothing to resume")
            log(f"{self.path}: replacing the finished run of the same config")
            self._clear()
        else:
            started_by = self._stored_inputs().get(COMMAND_KEY)
            if command and started_by and started_by != command:
                raise UserError(
                    f"{self.path} holds an unfinished run of '{started_by}', not '{command}'; choose another --out, or pass "
                    "--restart to replace it"
                )
            changed = self._changed_inputs(inputs)
            if changed:
                raise UserError(
                    f"{self.path} holds an unfinished run that read other contents of {', '.join(changed)}; "
                    "pass --restart to start it over on these, or choose another --out"
                )
            for stale in self.path.rglob(".*.tmp"):  # the temporary half of a write the kill interrupted
                stale.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.path / CONFIG, config)
        if inputs is not None:
            atomic_write_json(self.path / INPUTS, {**inputs, **({COMMAND_KEY: command} if command else {})})

    def _stored_inputs(self) -> dict[str, Any]:
        path = self.path / INPUTS
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _changed_inputs(self, inputs: dict[str, dict[str, str]] | None) -> list[str]:
        """The assets whose files differ from those the run here read (none known: nothing to compare)."""
        stored = self._stored_inputs()
        stored.pop(COMMAND_KEY, None)
        if inputs is None or not stored:
            return []
        return sorted(name for name in stored.keys() | inputs.keys() if stored.get(name) != inputs.get(name))

    def _stored_config(self) -> dict[str, Any] | None:
        path = self.path / CONFIG
        if not path.is_file():
            return None
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            raise UserError(f"{path} is unreadable: pass --restart to replace this run, or choose another --out") from None

    def _clear(self) -> None:
        for name in RUN_ENTRIES:
            entry = self.path / name
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)

    def workdir(self, strategy: str, fold: int, seed: int) -> Path:
        """Where one run keeps its checkpoints while it trains."""
        return self.path / "strategies" / strategy / job_name(fold, seed)

    def finished_result(self, strategy: str, fold: int, seed: int) -> dict[str, Any] | None:
        """The run's saved result, or None where it is to run (again): not saved, or failed. A failure is an exception
        (a full disk, a device fault, a bug mended since), so a resumed run tries it again; a run skipped or stopped
        as diverged is a result of this config and stays."""
        path = self.path / "strategies" / strategy / f"result-{job_name(fold, seed)}.json"
        if not path.is_file():
            return None
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("status") == "failed":
            return None
        shutil.rmtree(self.workdir(strategy, fold, seed), ignore_errors=True)  # checkpoints a kill left behind
        return result

    def save_run(self, strategy: str, fold: int, seed: int, result: dict[str, Any], log_history: list[dict[str, Any]]) -> None:
        """The log first, then the result that marks the run finished; only then its checkpoints go."""
        folder = self.path / "strategies" / strategy
        name = job_name(fold, seed)
        atomic_write_text(folder / f"log-{name}.jsonl", "".join(json.dumps(entry, default=float) + "\n" for entry in log_history))
        atomic_write_json(folder / f"result-{name}.json", result)
        shutil.rmtree(folder / name, ignore_errors=True)

    def complete(self, record: dict[str, Any]) -> None:
        record["status"] = "complete"
        atomic_write_json(self.path / RESULTS, record)


def _differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> str:
    """The first few keys whose values differ, as `key: old -> new`."""
    changes = []
    for key in sorted(set(stored) | set(current), key=str):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            nested = _differences(old, new, f"{prefix}{key}.")
            changes += [nested] if nested else []
        elif old != new:
            changes.append(f"{prefix}{key}: {old} -> {new}")
    return ", ".join(changes[:3])
