"""The bell between processes sharing a SQLite file: real abstract-namespace sockets, one process
standing in for two (two Bell objects registered in the same directory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openhqm.sqlite_bell import Bell

pytestmark = pytest.mark.skipif(not Bell(Path("x")).available, reason="abstract sockets are Linux-only")


async def test_a_ring_reaches_every_other_registered_process_but_not_the_ringer(tmp_path: Path) -> None:
    database = tmp_path / "openhqm.db"
    ringer, first, second = Bell(database), Bell(database), Bell(database)
    heard: list[str] = []
    rung = asyncio.Event()
    for name, bell in (("ringer", ringer), ("first", first), ("second", second)):
        bell.open()
        bell.on_ring(lambda name=name: (heard.append(name), rung.set()))  # type: ignore[misc]
    try:
        ringer.ring()
        await asyncio.wait_for(rung.wait(), 5)
        while len(heard) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert sorted(heard) == ["first", "second"]
    finally:
        for bell in (ringer, first, second):
            bell.close()
    assert list(database.with_name("openhqm.db.bell").iterdir()) == []


async def test_a_registration_whose_process_is_gone_is_removed_on_the_next_ring(tmp_path: Path) -> None:
    database = tmp_path / "openhqm.db"
    ringer = Bell(database)
    ringer.open()
    stale = ringer.directory / "4242-deadbeefcafe"  # a killed process's file: no socket behind it
    stale.touch()
    try:
        ringer.ring()
        assert not stale.exists()
    finally:
        ringer.close()


async def test_rings_are_drained_at_once_so_a_busy_peer_wakes_once_per_turn(tmp_path: Path) -> None:
    database = tmp_path / "openhqm.db"
    ringer, listener = Bell(database), Bell(database)
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    ringer.open()
    listener.open()
    listener.on_ring(count)
    try:
        for _ in range(50):  # all sent before the loop next polls its sockets
            ringer.ring()
        await asyncio.sleep(0.1)
        assert calls == 1
    finally:
        ringer.close()
        listener.close()


def test_without_a_running_loop_the_bell_stays_silent(tmp_path: Path) -> None:
    bell = Bell(tmp_path / "openhqm.db")
    bell.open()
    bell.ring()  # nothing bound, nothing sent, no error
    assert not bell.directory.exists()
