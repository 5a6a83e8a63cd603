"""Overload: a full queue (`queue.max_pending`) and a full disk answer 503 with Retry-After and a
detail naming the cause, write nothing, and recover by themselves; slow or idle HTTP clients are
disconnected by the server's limits instead of holding connections for ever."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from openhqm import metrics
from openhqm.errors import ConfigError
from openhqm.http.app import create_app
from openhqm.http.server_limits import http_protocol, uvicorn_options
from tests.harness import InProcess, Sample, in_process, settings
from tests.integration.http_servers import serve


def refusals(queue: str, reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("openhqm_submits_refused_total",
                                             {"queue": queue, "reason": reason}) or 0.0


def refused(answer: httpx.Response, reason: str, detail: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "5"
    body = answer.json()
    assert body["reason"] == reason and body["detail"].startswith(detail + ": "), body


async def accepted_once_admitted(hq: InProcess, payload: object) -> str:
    """Submit as a client honouring Retry-After does (shortened), until the bridge admits it: the
    queue's depth is sampled, so a request taken by a worker shows at the next sample (until then
    it still counts as waiting)."""
    async with asyncio.timeout(30):
        while (answer := await hq.submit(payload, handler="record")).status_code == 503:
            await asyncio.sleep(0.05)
    assert answer.status_code == 202, answer.text
    correlation_id: str = answer.json()["correlation_id"]
    return correlation_id


async def test_a_submit_beyond_max_pending_answers_503_queue_full_and_writes_nothing(tmp_path: Path) -> None:
    sample = Sample()
    queue = f"full-{tmp_path.name}"
    config = settings(tmp_path, queue={"max_pending": 2, "request_queue": queue},
                      worker={"concurrency": 1, "prefetch": 1})
    async with in_process(sample.app, config) as hq:
        held = await hq.accepted({"name": "held", "hold": True}, handler="record")
        await sample.event("started", "held").wait()  # running: no longer waiting in the queue
        waiting = [await accepted_once_admitted(hq, {"name": f"waiting-{i}"}) for i in range(2)]
        before = refusals(queue, "queue_full")

        refused(await hq.submit({"name": "refused"}, handler="record"), "queue_full", "queue full")

        assert refusals(queue, "queue_full") == before + 1
        assert sum((await hq.runtime.store.counts()).values()) == 3  # the refused request left no record
        sample.event("release", "held").set()
        for correlation_id in (held["correlation_id"], *waiting):
            assert (await hq.result(correlation_id))["status"] == "COMPLETED"
        later = await accepted_once_admitted(hq, {"name": "later"})
        assert (await hq.result(later))["status"] == "COMPLETED"
    assert not any(run.name == "refused" for run in sample.runs)


def test_max_pending_on_a_queue_that_cannot_count_is_a_config_error(tmp_path: Path) -> None:
    sample = Sample()
    sample.app.settings = settings(tmp_path, queue={"type": "mqtt", "max_pending": 10})
    with pytest.raises(ConfigError, match=r"queue\.max_pending .* 'mqtt' cannot"):
        create_app(sample.app)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (root only), so "disk full" is real, not simulated."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the disk-full test needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses even one more byte; remove it to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_full_disk_answers_503_store_cannot_write_and_recovers_when_space_returns(
        small_disk: Path) -> None:
    sample = Sample()
    queue = f"disk-{small_disk.parent.name}"
    # A short lease: a job whose reply could not be stored while the disk was full runs again soon.
    config = settings(small_disk, queue={"request_queue": queue, "sqlite": {"lease_s": 1.0}})
    async with in_process(sample.app, config) as hq:
        held = await hq.accepted({"name": "held", "hold": True}, handler="record")
        await sample.event("started", "held").wait()
        queued = await hq.accepted({"name": "queued"}, handler="record")
        filler = fill(small_disk)
        before = refusals(queue, "store_full")

        refused(await hq.submit({"name": "refused"}, handler="record"), "store_full", "store cannot write")

        assert refusals(queue, "store_full") == before + 1
        sample.event("release", "held").set()  # its reply meets the full disk, or the freed one
        filler.unlink()
        later = await hq.accepted({"name": "later"}, handler="record")
        for correlation_id in (held["correlation_id"], queued["correlation_id"], later["correlation_id"]):
            assert (await hq.result(correlation_id))["status"] == "COMPLETED"
        assert sum((await hq.runtime.store.counts()).values()) == 3
    assert not any(run.name == "refused" for run in sample.runs)


@pytest.mark.parametrize("parser", [None, H11Protocol], ids=["uvicorn's choice", "h11"])
def test_a_client_that_never_completes_its_request_head_is_disconnected(
        tmp_path: Path, parser: type[asyncio.Protocol] | None) -> None:
    config = settings(tmp_path, server={"header_timeout_s": 0.5})
    sample = Sample()
    sample.app.settings = config
    api = create_app(sample.app, settle_gc=False)
    options = uvicorn_options(config.server)
    if parser is not None:
        options["http"] = http_protocol(config.server.header_timeout_s, parser)
    with serve(api, lifespan="on", **options) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as idle, \
                socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x")  # and nothing more: a slowloris
            assert idle.recv(1) == b"" and slow.recv(1) == b""  # closed by the server
            assert httpx.get(url + "/health").status_code == 200  # others are still served
