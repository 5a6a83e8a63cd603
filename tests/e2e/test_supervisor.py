"""The supervisor of `serve --processes N` (openhqm/supervisor.py) with stand-in children: small
Python processes that say ready, exit or signal their parent as the test asks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from openhqm import supervisor
from openhqm.supervisor import Supervisor

# argv: what to do, the ready pipe's descriptor. "serve": ready, then wait for a signal; "fail": exit 3
# without being ready; "stop-parent": ready, then SIGTERM to the supervisor, then wait.
CHILD = """
import os, signal, sys, time
what, fd = sys.argv[1], int(sys.argv[2])
if what == "fail":
    sys.exit(3)
os.write(fd, b"r")
if what == "stop-parent":
    os.kill(os.getppid(), signal.SIGTERM)
while True:
    time.sleep(1)
"""


class StandIns:
    """spawn() for the supervisor: slot i's n-th start does plans[i][n] (the last one repeats)."""

    def __init__(self, *plans: list[str]) -> None:
        self.plans = plans
        self.started: list[tuple[int, str, subprocess.Popen[bytes]]] = []

    def spawn(self, index: int) -> tuple[subprocess.Popen[bytes], int]:
        plan = self.plans[index]
        what = plan[min(len(plan) - 1, sum(1 for slot, _, _ in self.started if slot == index))]
        read_end, write_end = os.pipe()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, what, str(write_end)], pass_fds=(write_end,))
        os.close(write_end)
        self.started.append((index, what, proc))
        return proc, read_end

    def all_ended(self) -> bool:
        return all(proc.poll() is not None for _, _, proc in self.started)


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FIRST_RESTART_S", 0.05)


def test_a_signal_stops_every_child_and_the_supervisor_exits_0() -> None:
    children = StandIns(["serve"], ["stop-parent"])
    announced: list[bool] = []
    assert Supervisor(2, children.spawn, stop_timeout_s=30).run(lambda: announced.append(True)) == 0
    assert children.all_ended()
    assert [proc.returncode for _, _, proc in children.started] == [-signal.SIGTERM, -signal.SIGTERM]


def test_a_child_that_cannot_start_stops_the_others_with_its_exit_code() -> None:
    children = StandIns(["serve"], ["fail"])
    announced: list[bool] = []
    assert Supervisor(2, children.spawn, stop_timeout_s=30).run(lambda: announced.append(True)) == 3
    assert children.all_ended() and not announced


def test_a_crashed_child_is_started_again_after_serving() -> None:
    # Slot 1 serves, then is killed; its second start tells the supervisor to stop.
    children = StandIns(["serve"], ["serve", "stop-parent"])

    def announce() -> None:
        [proc] = [proc for slot, _, proc in children.started if slot == 1]
        proc.kill()

    assert Supervisor(2, children.spawn, stop_timeout_s=30).run(announce) == 0
    assert [(slot, what) for slot, what, _ in children.started] == [(0, "serve"), (1, "serve"), (1, "stop-parent")]


def test_a_child_that_keeps_failing_to_start_again_makes_it_give_up() -> None:
    children = StandIns(["serve"], ["serve", "fail"])

    def announce() -> None:
        [proc] = [proc for slot, _, proc in children.started if slot == 1]
        proc.kill()

    assert Supervisor(2, children.spawn, stop_timeout_s=30).run(announce) == 1
    slot_1 = [what for slot, what, _ in children.started if slot == 1]
    assert slot_1 == ["serve"] + ["fail"] * supervisor.MAX_START_FAILURES
    assert children.all_ended()
