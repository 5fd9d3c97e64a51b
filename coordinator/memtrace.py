"""Where the coordinator's memory goes, for the benchmark (bench/memory.py): off unless asked for.

TRIPMESH_COORDINATOR_TRACEMALLOC=<file> starts tracemalloc at start-up (keeping
TRIPMESH_COORDINATOR_TRACEMALLOC_FRAMES frames per allocation, 8 by default) and writes a snapshot to
<file> on every SIGUSR1 (to <file>.tmp, then renamed: a reader never sees half a snapshot). Unset, this
module does nothing and costs nothing: tracemalloc slows every allocation while it traces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc

import structlog

log = structlog.get_logger("tripmesh.memtrace")

FILE_VARIABLE = "TRIPMESH_COORDINATOR_TRACEMALLOC"
FRAMES_VARIABLE = "TRIPMESH_COORDINATOR_TRACEMALLOC_FRAMES"


def install(loop: asyncio.AbstractEventLoop) -> str | None:
    """Start tracing and dump a snapshot on SIGUSR1, if the environment asks for it; the file or None."""
    path = os.environ.get(FILE_VARIABLE, "")
    if not path:
        return None
    tracemalloc.start(int(os.environ.get(FRAMES_VARIABLE, "8")))

    def dump() -> None:
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
        log.info("tracemalloc_snapshot", path=path, traced_bytes=tracemalloc.get_traced_memory()[0])

    loop.add_signal_handler(signal.SIGUSR1, dump)
    log.warning("tracemalloc_on", path=path, detail="every allocation is traced: slower, for measuring only")
    return path
