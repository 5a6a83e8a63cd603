"""Round trips per second and p50/p99 latency through `openhqm serve`, next to calling the echo
backend directly, at a fixed number of concurrent clients for a bounded time.

    python benchmarks/bench.py [--seconds 10] [--clients 32] [--queue-type sqlite] [--scenarios ...]

Everything runs on 127.0.0.1: the echo server, openhqm and the load generator (aiohttp) share the
machine's cores, as they would on one node; the ratio to the direct call is the number to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
PAYLOAD = {"message": "hello", "n": 42}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            time.sleep(0.1)  # a starting process offers nothing to wait on
    raise TimeoutError(url)


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.procs.append(subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in reversed(self.procs):  # by PID, the ones this script started, the profiler first
            proc.send_signal(signal.SIGINT if proc.args[0] == "py-spy" else signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


Request = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def measure(request: Request, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm_until = time.monotonic() + 60
        for _ in range(min(clients, 8)):  # warm up connections and code paths (Kafka joins its group,
            while True:                    # MQTT refuses publishes until a subscriber exists)
                try:
                    await request(session)
                    break
                except Exception:
                    if time.monotonic() > warm_until:
                        raise
                    await asyncio.sleep(0.2)

        deadline = time.monotonic() + seconds  # after the warm-up, which may take a while (Kafka)

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    await request(session)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies.sort()
    n = len(latencies)
    return {"rps": n / elapsed, "p50_ms": latencies[n // 2] * 1000 if n else 0,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0, "requests": n, "errors": errors}


def direct(url: str) -> Request:
    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(url, json=PAYLOAD) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(response.status)

    return call


def prefer_wait(base: str, metadata: dict[str, Any]) -> Request:
    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{base}/api/v1/submit", json={"payload": PAYLOAD, "metadata": metadata},
                                headers={"Prefer": "wait=30"}) as response:
            body = await response.json()
            if response.status != 200 or body["status"] != "COMPLETED":
                raise RuntimeError(body)

    return call


def submit_then_long_poll(base: str, metadata: dict[str, Any]) -> Request:
    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{base}/api/v1/submit", json={"payload": PAYLOAD, "metadata": metadata}) as r:
            location = r.headers["Location"]
            await r.read()
        async with session.get(f"{base}{location}", params={"wait": "30"}) as r:
            body = await r.json()
            if r.status != 200 or body["status"] != "COMPLETED":
                raise RuntimeError(body)

    return call


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def broker_env(queue_type: str) -> dict[str, str]:
    """Fresh queue names, and where the test brokers listen (the OPENHQM_TEST_* variables of scripts/test)."""
    run = uuid.uuid4().hex[:8]
    env = {"OPENHQM_QUEUE__REQUEST_QUEUE": f"bench-req-{run}", "OPENHQM_QUEUE__RESPONSE_QUEUE": f"bench-resp-{run}"}
    test = os.environ.get
    if queue_type == "sqs":
        env |= {"OPENHQM_QUEUE__SQS__ENDPOINT_URL": test("OPENHQM_TEST_SQS_ENDPOINT", "http://127.0.0.1:5055"),
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    elif queue_type == "pubsub":
        env["PUBSUB_EMULATOR_HOST"] = test("OPENHQM_TEST_PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
    elif queue_type == "nats":
        env |= {"OPENHQM_QUEUE__NATS__STREAM": f"BENCH_{run.upper()}",
                "OPENHQM_QUEUE__NATS__SUBJECT_PREFIX": f"bench{run}"}
    elif queue_type == "kafka":
        env["OPENHQM_QUEUE__KAFKA__BOOTSTRAP_SERVERS"] = test("OPENHQM_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario (bounded)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the scenario list N times and report each scenario's median run (shared "
                             "machines vary by 15 %% or more between runs)")
    parser.add_argument("--queue-type", default="sqlite")
    parser.add_argument("--results-type", default="sqlite")
    parser.add_argument("--backend-delay-s", type=float, default=0.0, help="echo server delay per request")
    parser.add_argument("--scenarios", nargs="*",
                        default=["direct", "prefer-wait", "long-poll", "forward-prefer-wait"])
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for openhqm serve")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the serve process with py-spy while the scenarios run (speedscope JSON)")
    args = parser.parse_args()

    procs = Processes()
    echo_port, hqm_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="openhqm-bench-")
    echo_url = f"http://127.0.0.1:{echo_port}/echo"
    env = {
        "OPENHQM_SERVER__PORT": str(hqm_port), "OPENHQM_DATA_DIR": data_dir,
        "OPENHQM_QUEUE__TYPE": args.queue_type, "OPENHQM_RESULTS__TYPE": args.results_type,
        "OPENHQM_LOGGING__LEVEL": "WARNING",
        "OPENHQM_PROXY__ENABLED": "true",
        "OPENHQM_PROXY__ENDPOINTS": json.dumps({"echo": {"url": echo_url}}),
        **dict(item.split("=", 1) for item in args.env),
    }
    env |= broker_env(args.queue_type)
    results: dict[str, dict[str, float]] = {}
    try:
        procs.start([sys.executable, str(HERE / "echo_server.py"), str(echo_port), str(args.backend_delay_s)])
        procs.start([sys.executable, "-m", "openhqm", "serve"], env=env, cwd=data_dir)
        wait_http(f"http://127.0.0.1:{echo_port}/")
        wait_http(f"http://127.0.0.1:{hqm_port}/ready")
        base = f"http://127.0.0.1:{hqm_port}"
        if args.profile:
            serve_pid = procs.procs[-1].pid
            procs.start(["py-spy", "record", "--rate", "200", "--format", "speedscope", "--nonblocking",
                         "--pid", str(serve_pid), "--output", os.path.abspath(args.profile)])
        scenarios: dict[str, Request] = {
            "direct": direct(echo_url),
            "prefer-wait": prefer_wait(base, {"handler": "echo"}),
            "long-poll": submit_then_long_poll(base, {"handler": "echo"}),
            "forward-prefer-wait": prefer_wait(base, {"endpoint": "echo"}),
            "forward-long-poll": submit_then_long_poll(base, {"endpoint": "echo"}),
        }
        echo_pid, serve_pid = procs.procs[0].pid, procs.procs[1].pid
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.scenarios}
        for _ in range(args.repeat):
            for name in args.scenarios:
                before = cpu_seconds(echo_pid), cpu_seconds(serve_pid), own_cpu_seconds()
                result = asyncio.run(measure(scenarios[name], args.clients, args.seconds))
                after = cpu_seconds(echo_pid), cpu_seconds(serve_pid), own_cpu_seconds()
                # CPU per round trip of each process (warm-up included, so a slight overestimate).
                keys = ("echo_cpu_ms", "serve_cpu_ms", "client_cpu_ms")
                for key, start, end in zip(keys, before, after, strict=True):
                    result[key] = (end - start) * 1000 / max(1, result["requests"])
                runs[name].append(result)
        for name, measured in runs.items():
            results[name] = sorted(measured, key=lambda r: r["rps"])[len(measured) // 2]
    finally:
        procs.stop()
    report(results, args)


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    baseline = results.get("direct", {}).get("rps")
    print(f"queue={args.queue_type} results={args.results_type} clients={args.clients} "
          f"seconds={args.seconds:g} repeat={args.repeat} backend_delay_s={args.backend_delay_s:g} "
          f"cores={os.cpu_count()}")
    print("| scenario | round trips/s | p50 ms | p99 ms | vs direct | errors "
          "| CPU ms/round trip: openhqm, echo, client |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        ratio = f"{r['rps'] / baseline:.2f}" if baseline else "-"
        serve_cpu = "-" if name == "direct" else f"{r['serve_cpu_ms']:.2f}"
        cpu = f"{serve_cpu}, {r['echo_cpu_ms']:.2f}, {r['client_cpu_ms']:.2f}"
        print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {ratio} | {r['errors']:.0f} "
              f"| {cpu} |")


if __name__ == "__main__":
    main()
