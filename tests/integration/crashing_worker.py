"""``churnwatch worker`` with a crash planted, for the recovery tests (never the product).

Run: ``python tests/integration/crashing_worker.py N``. The worker exits at once,
as ``kill -9`` would (exit code 137), right after the local writes of its Nth
store that carried warnings or dead letters, before any of that batch's sends
are flushed: the narrowest window of a crash (tests/integration/test_recovery.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from churnwatch.cli import main
from churnwatch.pipeline.storing import Store


def plant_crash(after_stores: int) -> None:
    original = Store.write
    left = [after_stores]

    async def write(self: Store, partitions: Any, last_of: Any) -> None:
        carries = any(partitions[n].outgoing for n in last_of)
        await original(self, partitions, last_of)
        if carries:
            left[0] -= 1
            if left[0] == 0:
                os._exit(137)  # the local store written, the batch's sends not flushed

    Store.write = write  # type: ignore[method-assign]


if __name__ == "__main__":
    plant_crash(int(sys.argv[1]))
    sys.argv = ["churnwatch", "worker", *sys.argv[2:]]
    main()
