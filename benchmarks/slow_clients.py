"""Many idle or slow clients must not starve the others (issue 14, section 3): the p99 of normal
clients submitting through `openhqm serve`, quiet and then while 1,000 idle keep-alive connections
and 50 slowloris senders (one request-head byte a second) hold connections, and the serve process's
open file descriptors meanwhile.

    python benchmarks/slow_clients.py [--seconds 10] [--clients 32] [--idle 1000] [--slowloris 50]
                                      [--env OPENHQM_SERVER__HEADER_TIMEOUT_S=10 ...]

The idle and slow clients reconnect whenever the server closes them (as an attacker would), so the
descriptor count shows what the server holds under a steady attack; `closed_by_server` counts the
connections the server's limits (`server.timeout_keep_alive_s`, `server.header_timeout_s`) ended.
A benchmark, not a test: it reports figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench import PREFER_WAIT, Processes, Scenario, aiohttp_run, cpu_seconds, free_port, submit_body, wait_http, warm_up

HEALTH = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


class Attack:
    def __init__(self, port: int) -> None:
        self.port = port
        self.closed_by_server = 0
        self.connected = 0

    async def idle(self) -> None:
        """One request, then silence on the kept-alive connection; when the server closes it, a new
        connection that stays silent from the start (holding a descriptor costs the attacker nothing)."""
        request = HEALTH
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.connected += 1
                try:
                    writer.write(request)
                    request = b""
                    while await reader.read(4096):
                        pass
                    self.closed_by_server += 1
                finally:
                    self.connected -= 1
                    writer.close()
            await asyncio.sleep(0.1)  # a refused connect: do not spin

    async def slowloris(self) -> None:
        """A request head sent one byte a second, never finished."""
        head = b"POST /api/v1/submit HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 100_000
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.connected += 1
                try:
                    for byte in head:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):  # one byte a second, unless closed meanwhile
                                if not await reader.read(4096):
                                    break
                    self.closed_by_server += 1
                finally:
                    self.connected -= 1
                    writer.close()
            await asyncio.sleep(0.1)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def measured(scenario: Scenario, clients: int, seconds: float, pid: int,
                   attacker_pid: int | None = None) -> dict[str, float]:
    """The normal clients' figures, the serve process's descriptors, and the CPU each process spent
    (the machine's other load shows as latency too: compare serve_cpu_ms per request)."""
    fds: list[int] = []
    cpu_before = cpu_seconds(pid), cpu_seconds(attacker_pid) if attacker_pid else 0.0

    async def sample() -> None:
        while True:
            fds.append(open_fds(pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        result = await aiohttp_run(scenario, clients, seconds)
    finally:
        sampler.cancel()
    serve_cpu_s = cpu_seconds(pid) - cpu_before[0]
    attacker_cpu_s = (cpu_seconds(attacker_pid) if attacker_pid else 0.0) - cpu_before[1]
    return result | {"fds_max": max(fds), "fds_last": fds[-1], "serve_cpu_ms": serve_cpu_s * 1000 / result["requests"],
                     "attacker_cpu_s": attacker_cpu_s}


async def attack(port: int, idle: int, slowloris: int) -> None:
    """The idle and slow clients, in a process of their own so their work does not slow the
    normal clients' event loop (which would be measured as the bridge's latency)."""
    attacker = Attack(port)
    tasks = [asyncio.create_task(attacker.idle()) for _ in range(idle)]
    tasks += [asyncio.create_task(attacker.slowloris()) for _ in range(slowloris)]
    try:
        await asyncio.gather(*tasks)
    finally:
        print(json.dumps({"closed_by_server": attacker.closed_by_server}), file=sys.stderr, flush=True)


def wait_for_fds(pid: int, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while open_fds(pid) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the attackers did not connect: {open_fds(pid)} descriptors")
        time.sleep(0.2)  # connections being opened elsewhere offer no event to wait on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for openhqm serve")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the attacker process
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # ours and our children's
    if args.attack:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(attack(args.attack, args.idle, args.slowloris))
        return
    port, data_dir, procs = free_port(), tempfile.mkdtemp(prefix="openhqm-slow-"), Processes()
    env = {"OPENHQM_SERVER__PORT": str(port), "OPENHQM_DATA_DIR": data_dir, "OPENHQM_LOGGING__LEVEL": "ERROR",
           **dict(item.split("=", 1) for item in args.env)}
    try:
        procs.start([sys.executable, "-m", "openhqm", "serve"], env=env, cwd=data_dir)
        wait_http(f"http://127.0.0.1:{port}/ready")
        pid = procs.procs[0].pid
        submit = f"http://127.0.0.1:{port}/api/v1/submit"
        scenario = Scenario(submit, submit_body({"handler": "echo"}), PREFER_WAIT, expect_completed=True)
        asyncio.run(warm_up(scenario, args.clients))
        results = {"quiet": asyncio.run(measured(scenario, args.clients, args.seconds, pid))}
        attacker = subprocess.Popen([sys.executable, __file__, "--attack", str(port), "--idle", str(args.idle),
                                     "--slowloris", str(args.slowloris)], stderr=subprocess.PIPE, text=True)
        try:
            wait_for_fds(pid, open_fds(pid) + int((args.idle + args.slowloris) * 0.95))
            results["loaded"] = asyncio.run(measured(scenario, args.clients, args.seconds, pid, attacker.pid))
        finally:
            attacker.send_signal(signal.SIGINT)
            _, err = attacker.communicate(timeout=30)
        results["loaded"] |= json.loads(err.strip().splitlines()[-1]) if err.strip() else {}
    finally:
        procs.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
