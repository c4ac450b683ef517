"""Work that can wait gives way: a background thread lowers its own CPU priority, so that on a
small machine what the user waits for (Ray's start, a worker's warm-up, the first trial) is
scheduled first, and the background work (the checks and the MLflow parent run while Ray
starts, a worker opening its MLflow store) takes the cycles left over; and the first of the
processes that warm up together on a small machine goes alone (``first_alone``). Standard
library only.

>>> import threading
>>> t = threading.Thread(target=give_way); t.start(); t.join()  # the thread's own nice value
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator

NICENESS = 10  # how far below the rest a background thread runs (0: as the rest; 19: last)
FIRST_ALONE_CPUS = 4  # machines this small let the first warm-up go alone
POLL_S = 0.05  # how often a process waiting at the gate looks again
GATE_ENV = "AUTOOPT_WARMUP_GATE"  # the gate of the processes that warm up together (a file's path)


def give_way(niceness: int = NICENESS) -> None:
    """Lower the calling thread's CPU priority to ``niceness`` (Linux: each thread has its own
    nice value; threads it starts inherit it). Elsewhere, or where refused, nothing."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def new_gate() -> str:
    """A fresh gate's path (the file is made by the first process at it)."""
    fd, path = tempfile.mkstemp(prefix="autoopt-warmup-", suffix=".lock")
    os.close(fd)
    return path


@contextlib.contextmanager
def first_alone(path: str | None = None, cpus: int | None = None, wait_s: float = 60.0) -> Iterator[bool]:
    """Run the body alone when no other process of this machine is inside it now (yields True),
    else once that one has left, beside any others (yields False): on a small machine, the first
    of several processes warming up at once is ready as soon as it would be alone, instead of
    all of them together, late. A file lock (``flock`` on ``path``, by default the one named by
    ``GATE_ENV``; let go with the process, however it ends); no gate without a path, without its
    file (``new_gate`` makes it; a process that starts after its Ray stopped and removed it
    makes none again), on more than ``FIRST_ALONE_CPUS`` cores (``cpus``, this machine's by
    default), or where there is no such lock. One inside for longer than ``wait_s`` (stuck)
    keeps no one waiting past it.

    >>> gate = new_gate()
    >>> with first_alone(gate, cpus=2) as alone:
    ...     alone
    True
    >>> os.remove(gate)
    >>> with first_alone(gate, cpus=2) as alone:
    ...     alone
    False
    """
    path = path or os.environ.get(GATE_ENV)
    if not path or (cpus or os.cpu_count() or 1) > FIRST_ALONE_CPUS:
        yield False
        return
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:  # one is inside: wait until it leaves, then go in beside the others
            waited = 0.0
            while waited < wait_s:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    break
                except OSError:
                    time.sleep(POLL_S)
                    waited += POLL_S
            alone = False
        yield alone
    finally:
        os.close(fd)  # lets go of the lock
