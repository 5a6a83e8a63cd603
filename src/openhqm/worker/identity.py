"""Who this worker process is: the id its heartbeats and its requests' attempt history carry.

One id per process, fixed at first use: host and pid say where to look, the random part keeps a
restarted process (same pid in a new container) apart from its predecessor.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    host: str
    pid: int
    started_at: float


@functools.cache
def this_process() -> WorkerIdentity:
    host, pid = socket.gethostname(), os.getpid()
    return WorkerIdentity(f"{host}-{pid}-{uuid.uuid4().hex[:6]}", host, pid, time.time())
