"""Real `openhqm` processes for end-to-end tests, each on its own data_dir and a port it binds as 0
and reports in its log (uvicorn's "running on" line), so no port is picked before it is bound."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.services import stop_process

REPO = Path(__file__).resolve().parents[1]
# uvicorn's line, or the granian engine's "serving" event (JSON or console logs)
_RUNNING_ON = re.compile(r"(?:Uvicorn running on |\"url\":\"|url=)https?://[^\s\"]+:(\d+)")
# This checkout's src first: the editable install points at another checkout's.
SUBPROCESS_PYTHONPATH = os.pathsep.join([str(REPO / "src"), str(REPO)])


class OpenHQMProcess:
    """`openhqm <command>` as a child process; stopped by its PID, never by name."""

    def __init__(self, command: str, data_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, log_name: str | None = None) -> None:
        self.command = command
        self.data_dir = data_dir
        self.port = port or 0  # the bound port once started (see wait_ready)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OPENHQM_") or k.startswith("OPENHQM_TEST")},
            "OPENHQM_DATA_DIR": str(data_dir),
            "OPENHQM_SERVER__PORT": str(self.port),
            "OPENHQM_LOGGING__FORMAT": "json",
            "PYTHONPATH": SUBPROCESS_PYTHONPATH,
            **(env or {}),
        }
        self.log_path = data_dir / f"{log_name or command}-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> OpenHQMProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "openhqm", self.command], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        if wait_ready and self.command != "worker":
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # never leave a half-started process behind
                raise
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.proc.returncode}:\n{self.log()}")
            if not self.port:
                reported = _RUNNING_ON.search(self.log())
                self.port = int(reported.group(1)) if reported else 0
            try:
                if self.port and httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling a starting process: there is nothing to wait on instead
        raise TimeoutError(f"{self.command} not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def wait_exit(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
