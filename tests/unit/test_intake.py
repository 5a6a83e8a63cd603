"""Intake refuses what the queue cannot carry before anything is written (422, never a 503)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openhqm.backends.memory import MemoryBackend
from openhqm.config import Settings
from openhqm.envelope import Envelope
from openhqm.errors import RequestRejected
from openhqm.listener.intake import Intake
from openhqm.results.memory import MemoryResultStore


@pytest.mark.parametrize("metadata", [{"n": 2**70}, {"s": "\ud800"}], ids=["huge-int", "lone-surrogate"])
async def test_an_envelope_the_queue_cannot_encode_is_refused_with_422_before_anything_is_written(
    metadata: dict[str, object], tmp_path: Path
) -> None:
    settings = Settings(queue={"type": "memory"}, data_dir=tmp_path)
    backend, store = MemoryBackend(settings), MemoryResultStore()
    async with backend:
        intake = Intake(settings, backend, store)
        with pytest.raises(RequestRejected) as refused:
            await intake.submit(Envelope(handler="echo", metadata=metadata))
        assert refused.value.status == 422
        assert await store.counts() == {} and await backend.depth(settings.queue.request_queue) == 0
