"""Fault injection for tests and failure drills: a process SIGKILLs itself at a named point,
once per marker file (the restarted actor or worker finds the marker and carries on).

Set on the driver, before the stage starts; the stage passes the marker path to its actors:

    TTPA_FAULT_KILL_ENGINE_ACTOR=/tmp/drill/engine  ttpa construct jobs/tiny-cpu.yaml

The training worker fault (kill a rank after step N) lives in :mod:`ttpa_ray.train.stage`.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

KILL_ENGINE_ACTOR = "TTPA_FAULT_KILL_ENGINE_ACTOR"


def marker(env: str) -> str | None:
    """The marker path configured for this fault on the driver, or None (no fault)."""
    return os.environ.get(env) or None


def kill_once(marker_path: str | None, where: str) -> None:
    """SIGKILL this process if the fault is armed and has not fired yet (the marker records it)."""
    if not marker_path:
        return
    path = Path(marker_path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one process fires
    except FileExistsError:
        return
    os.write(fd, f"{where} pid={os.getpid()}\n".encode())
    os.close(fd)
    log.warning("fault injection: SIGKILL of pid %d at %s", os.getpid(), where)
    os.kill(os.getpid(), signal.SIGKILL)
