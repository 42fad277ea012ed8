"""``churnwatch worker`` with a crash planted, for the recovery tests (never the product).

Run: ``python tests/integration/crashing_worker.py N STEP``. The worker exits at
once, as ``kill -9`` would (exit code 137), inside its Nth checkpoint that
carries warnings or dead letters (pipeline/checkpoint.py), where STEP says:

- ``states``: its warnings handed to the producer, before any state is sent
  (the broker may hold the warnings, never the states that say they were told);
- ``commit``: its warnings, states and progress delivered, before its offsets
  are committed and before the local store is written (what it applied is read
  again, and the local store is behind the changelog).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from churnwatch.cli import main
from churnwatch.pipeline.checkpoint import Checkpoint, Plan

STEPS = {"states": "send_change", "commit": "commit"}


def plant_crash(after_checkpoints: int, step: str) -> None:
    original = Checkpoint.run
    left = [after_checkpoints]

    async def crash(*_args: Any) -> None:
        os._exit(137)

    async def run(self: Checkpoint, plan: Plan) -> None:
        if plan.outgoing:
            left[0] -= 1
            if left[0] == 0:  # from now on, this step of a checkpoint ends the worker
                setattr(self.outputs, STEPS[step], crash)
        await original(self, plan)

    Checkpoint.run = run  # type: ignore[method-assign]


if __name__ == "__main__":
    plant_crash(int(sys.argv[1]), sys.argv[2])
    sys.argv = ["churnwatch", "worker", *sys.argv[3:]]
    main()
