"""``churnwatch worker`` with a crash planted, for the recovery tests (never the product).

Run: ``python tests/integration/crashing_worker.py N STEP``. The worker exits at
once, as ``kill -9`` would (exit code 137), inside its Nth checkpoint that
carries warnings or dead letters (pipeline/checkpoint.py), where STEP says:

- ``states``: its warnings handed to the producer, before any state is sent
  (the broker may hold the warnings, never the states that say they were told);
- ``commit``: its warnings, states and progress delivered, before its offsets
  are committed and before the local store is written (what it applied is read
  again, and the local store is behind the changelog);
- ``transaction`` (exactly-once mode): a partition's transaction carrying
  warnings, everything in it delivered to the broker, before it is committed
  (the broker holds its records uncommitted; the restart must abort them).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from churnwatch.cli import main
from churnwatch.core.topics import Topic
from churnwatch.pipeline.checkpoint import Checkpoint, Plan
from churnwatch.pipeline.storing import FaustTransaction

STEPS = {"states": "send_change", "commit": "commit"}
#: What a checkpoint or transaction must carry to count: warnings or dead letters
#: (not the account feed's band changes alone, which carry no warning to repeat).
TOLD = (Topic.WARNINGS, Topic.DEAD_LETTERS)


def plant_crash(after_checkpoints: int, step: str) -> None:
    original = Checkpoint.run
    left = [after_checkpoints]

    async def crash(*_args: Any) -> None:
        os._exit(137)

    async def run(self: Checkpoint, plan: Plan) -> None:
        if any(topic in TOLD for topic, _, _ in plan.outgoing):
            left[0] -= 1
            if left[0] == 0:  # from now on, this step of a checkpoint ends the worker
                setattr(self.outputs, STEPS[step], crash)
        await original(self, plan)

    Checkpoint.run = run  # type: ignore[method-assign]


def plant_crash_in_transaction(after_transactions: int) -> None:
    send, commit = FaustTransaction.send, FaustTransaction.commit
    told: set[int] = set()  # the transactions that carry warnings or dead letters
    left = [after_transactions]

    async def sending(self: FaustTransaction, record: Any) -> None:
        if record[0] in TOLD:
            told.add(id(self))
        await send(self, record)

    async def committing(self: FaustTransaction, messages: Any) -> None:
        if id(self) in told:
            left[0] -= 1
            if left[0] == 0:
                await self.producer.flush()  # on the broker, not committed
                os._exit(137)
        await commit(self, messages)

    FaustTransaction.send = sending  # type: ignore[method-assign]
    FaustTransaction.commit = committing  # type: ignore[method-assign]


if __name__ == "__main__":
    if sys.argv[2] == "transaction":
        plant_crash_in_transaction(int(sys.argv[1]))
    else:
        plant_crash(int(sys.argv[1]), sys.argv[2])
    sys.argv = ["churnwatch", "worker", *sys.argv[3:]]
    main()
