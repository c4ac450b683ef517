"""Work that can wait gives way: a background thread lowers its own CPU priority, so that on a
small machine what the user waits for (Ray's start, a worker's warm-up, the first trial) is
scheduled first, and the background work (the checks and the MLflow parent run while Ray
starts, a worker opening its MLflow store) takes the cycles left over. Standard library only.

>>> import threading
>>> t = threading.Thread(target=give_way); t.start(); t.join()  # the thread's own nice value
"""

from __future__ import annotations

import contextlib
import os
import threading

NICENESS = 10  # how far below the rest a background thread runs (0: as the rest; 19: last)


def give_way(niceness: int = NICENESS) -> None:
    """Lower the calling thread's CPU priority to ``niceness`` (Linux: each thread has its own
    nice value; threads it starts inherit it). Elsewhere, or where refused, nothing."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
