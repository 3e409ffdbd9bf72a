"""Named points where the resume tests kill the process, as a power cut would (fault injection).

`TRANSFERLAB_KILL_AT=POINT` or `POINT@N` sends SIGKILL to this process the Nth time it passes POINT.
Unset (always, outside the tests), `reached` only counts. The points: `encoded` (the data is
tokenised, nothing written yet), `train-step` (after every optimizer step) and `write:NAME`
(a result file's content is on disk under its temporary name, not yet renamed).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "TRANSFERLAB_KILL_AT"
_passes: Counter[str] = Counter()


def reached(point: str) -> None:
    target = os.environ.get(KILL_AT)
    if not target:
        return
    name, _, count = target.partition("@")
    if name != point:
        return
    _passes[point] += 1
    if _passes[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
