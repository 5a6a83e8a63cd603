"""Garbage-collector settings applied once a long-running command has started."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from openhqm.gc_tuning import GC_THRESHOLDS, settle_after_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_startup_objects_leave_the_collectors_view_and_young_passes_become_rare(restored_gc: None) -> None:
    survivor = [object() for _ in range(1000)]
    settle_after_startup()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == GC_THRESHOLDS


def test_cyclic_garbage_is_still_collected_automatically_after_settling(restored_gc: None) -> None:
    settle_after_startup()

    class Node:
        def __init__(self) -> None:
            self.me = self

    first = Node()
    alive = weakref.ref(first)
    del first
    for _ in range(GC_THRESHOLDS[0] * 3):  # unreachable cycles, each survives reference counting
        Node()
    assert alive() is None  # a young-generation pass ran on its own and freed it
