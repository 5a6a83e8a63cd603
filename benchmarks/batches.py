"""Round trips per second of a batch handler (batch_size 100) against the same work one request at a time.

    python benchmarks/batches.py [--seconds 10] [--clients 200] [--batch-size 100] [--call-ms 5]

In one process, as tests/harness.py runs it: the real HTTP app through httpx's ASGI transport, the
worker pool, the default SQLite queue and result store in a temporary directory. Each client submits
with `Prefer: wait` and submits again once it has its result, for a bounded time.

The work is what batching is for: a call with a fixed cost (`--call-ms` of CPU: a model's forward
pass, a bulk insert's round trip) plus a small cost per item (1 % of it). One request at a time pays
the fixed cost per request; a batch pays it once per up to batch-size requests. Both runs use the same
worker.concurrency (= clients), so a batch can fill.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from openhqm import OpenHQM
from openhqm.config import load_settings
from openhqm.http.app import create_app
from openhqm.logging import configure_logging
from openhqm.runtime import Runtime
from openhqm.worker.handlers import Job


def spin(seconds: float) -> None:
    """CPU-bound work for `seconds` (sleeping would let calls overlap for free)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def build_app(call_s: float, batch_size: int) -> OpenHQM:
    app = OpenHQM()
    item_s = call_s / 100

    @app.handler("single")
    def single(job: Job) -> Any:
        spin(call_s + item_s)
        return job.payload

    @app.handler("batch", batch_size=batch_size, batch_wait_s=0.05)
    def batch(jobs: list[Job]) -> list[Any]:
        spin(call_s + item_s * len(jobs))
        return [job.payload for job in jobs]

    return app


async def run(handler: str, seconds: float, clients: int, call_s: float, batch_size: int) -> float:
    """Round trips per second through `handler`."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = build_app(call_s, batch_size)
        app.settings = load_settings(None, {
            "data_dir": Path(data_dir), "worker": {"concurrency": clients},
            "results": {"cleanup_interval_s": 3600}, "logging": {"level": "WARNING"}})
        configure_logging(app.settings.logging)
        api = create_app(app, run_workers=True, settle_gc=False)
        runtime: Runtime = api.state.runtime
        transport = httpx.ASGITransport(app=api)
        done = 0
        async with runtime, httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
            deadline = time.monotonic() + seconds

            async def loop(n: int) -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    response = await client.post(
                        "/api/v1/submit", json={"payload": {"n": n}, "metadata": {"handler": handler}},
                        headers={"Prefer": "wait=30"})
                    if response.status_code != 200 or response.json().get("status") != "COMPLETED":
                        raise RuntimeError(f"{handler}: {response.status_code} {response.text[:200]}")
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(loop(n) for n in range(clients)))
            elapsed = time.monotonic() - started
        return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--call-ms", type=float, default=5)
    args = parser.parse_args()
    call_s = args.call_ms / 1000
    single = asyncio.run(run("single", args.seconds, args.clients, call_s, args.batch_size))
    batch = asyncio.run(run("batch", args.seconds, args.clients, call_s, args.batch_size))
    print(f"work per call: {args.call_ms:g} ms CPU + 1 % of it per item; {args.clients} clients, "
          f"{args.seconds:g} s each")
    print(f"one request at a time: {single:8.1f} round trips/s")
    print(f"batch_size {args.batch_size}:        {batch:8.1f} round trips/s  ({batch / single:.1f}x)")


if __name__ == "__main__":
    main()
