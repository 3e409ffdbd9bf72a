"""`transferlab check`: the data checks a run starts with, on their own, without training.

The same `prepare` as compare, train and study (so the same splits and the same checks), then the findings
printed, written to `checks.json`, and the ranked likely label errors to `label_issues.csv`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferlab.config import RunConfig
from transferlab.environment import describe_environment
from transferlab.recipes.experiment import Log, prepare, write_label_issues
from transferlab.runio import atomic_write_json

CHECKS = "checks.json"


def check(config: RunConfig, out_dir: Path, log: Log = print) -> dict[str, Any]:
    experiment = prepare(config, log)
    record = {
        "command": "check",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": config.dataset,
        "backbone": config.backbone,
        "data_checks": experiment.findings.summary,
        "splits": [{"removed": s.removed, **s.summary()} for s in experiment.splits],
        "config": config.resolved(),
        "assets": experiment.assets(),
        "environment": describe_environment(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_label_issues(out_dir, experiment)
    atomic_write_json(out_dir / CHECKS, record)
    return record
