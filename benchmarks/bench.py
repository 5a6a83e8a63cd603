"""Round trips per second and p50/p99 latency through `openhqm serve`, next to calling the echo
backend directly, at a fixed number of concurrent clients for a bounded time.

    python benchmarks/bench.py [--seconds 10] [--clients 32] [--load wrk|aiohttp] [--queue-type sqlite] [--consoles N]
                               [--processes N] [--scenarios ...] [--stages N] [--profile FILE]

Everything runs on 127.0.0.1: the echo server, openhqm and the load generator share the machine's
cores, as they would on one node; the ratio to the direct call is the number to watch. The default load
generator is wrk (benchmarks/wrk_scenario.lua), whose CPU per round trip is small next to openhqm's; the
aiohttp clients spend about a third of what they measure, which then runs short of CPU.
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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

HERE = Path(__file__).resolve().parent
PAYLOAD = {"message": "hello", "n": 42}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 30) -> None:
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
            proc.send_signal(signal.SIGINT if Path(proc.args[0]).name == "py-spy" else signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


PREFER_WAIT = "wait=30"  # the long poll's ?wait=30 matches, here and in wrk_scenario.lua


@dataclass(frozen=True)
class Scenario:
    """One kind of round trip, described once for both load generators."""

    url: str
    body: str | None  # None: a GET
    prefer: str | None = None
    long_poll: bool = False  # POST, then GET the answer's Location with ?wait=30
    expect_completed: bool = False  # a good answer says "status": "COMPLETED"


def submit_body(metadata: dict[str, Any]) -> str:
    return json.dumps({"payload": PAYLOAD, "metadata": metadata})


async def round_trip(session: aiohttp.ClientSession, scenario: Scenario) -> None:
    """One round trip as the aiohttp load sends it; raises on anything but a good answer."""
    headers = {"Content-Type": "application/json"} | ({"Prefer": scenario.prefer} if scenario.prefer else {})
    if scenario.body is None:
        async with session.get(scenario.url) as response:
            status, body = response.status, await response.read()
        if status != 200 or (scenario.expect_completed and json.loads(body)["status"] != "COMPLETED"):
            raise RuntimeError(status, body[:200])
        return
    async with session.post(scenario.url, data=scenario.body, headers=headers) as response:
        status, body, location = response.status, await response.read(), response.headers.get("Location")
    if scenario.long_poll:
        if status != 202 or location is None:
            raise RuntimeError(status, body[:200])
        async with session.get(urljoin(scenario.url, location), params={"wait": "30"}) as response:
            status, body = response.status, await response.read()
    if status != 200 or (scenario.expect_completed and json.loads(body)["status"] != "COMPLETED"):
        raise RuntimeError(status, body[:200])


async def warm_up(scenario: Scenario, clients: int) -> None:
    """Warm up code paths before a measured run (Kafka joins its group, MQTT refuses publishes until a
    subscriber exists), with either load generator, outside the CPU that is measured."""
    async with aiohttp.ClientSession() as session:
        give_up = time.monotonic() + 60
        for _ in range(min(clients, 8)):
            while True:
                try:
                    await round_trip(session, scenario)
                    break
                except Exception:
                    if time.monotonic() > give_up:
                        raise
                    await asyncio.sleep(0.2)


async def aiohttp_run(scenario: Scenario, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    await round_trip(session, scenario)
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


def aiohttp_load(scenario: Scenario, clients: int, seconds: float) -> dict[str, float]:
    """Python clients in this process, which spend a large share of the CPU they measure (the earlier
    method, kept for comparison)."""
    before = own_cpu_seconds()
    result = asyncio.run(aiohttp_run(scenario, clients, seconds))
    return result | {"load_cpu_s": own_cpu_seconds() - before}


def wrk_load(scenario: Scenario, clients: int, seconds: float) -> dict[str, float]:
    """wrk, a C load generator, driven by wrk_scenario.lua; its CPU is read from the child's rusage."""
    duration = max(1, round(seconds))
    threads = clients if scenario.long_poll else 1  # long-poll keeps one connection's state per thread
    # No answer takes longer than the run or the 30 s wait; wrk's histogram is sized by its timeout.
    command = ["wrk", "--threads", str(threads), "--connections", str(clients), "--duration", f"{duration}s",
               "--timeout", f"{min(duration, 30) + 5}s", "--script", str(HERE / "wrk_scenario.lua"), scenario.url, "--",
               "long-poll" if scenario.long_poll else "single", scenario.body or "-", scenario.prefer or "-",
               "COMPLETED" if scenario.expect_completed else "-"]
    before = children_cpu_seconds()
    # run() kills wrk (by PID) if it outlives its duration by a minute.
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    load_cpu_s = children_cpu_seconds() - before
    lines = [line for line in done.stdout.splitlines() if line.startswith("wrk-json ")]
    if done.returncode or not lines:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    summary = json.loads(lines[0].removeprefix("wrk-json "))
    return {"rps": summary["round_trips"] / summary["duration_s"], "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"], "requests": summary["round_trips"],
            "errors": summary["failed"] + summary["socket_errors"], "failed": summary["failed"],
            "socket_errors": summary["socket_errors"], "load_cpu_s": load_cpu_s}


LOADS: dict[str, Callable[[Scenario, int, float], dict[str, float]]] = {"wrk": wrk_load, "aiohttp": aiohttp_load}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and the processes below it that are running (`serve
    --processes` serves from processes it starts; Linux /proc, every thread; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            children += [int(c) for c in Path(task.path, "children").read_text().split()]
    return children


def wait_serving(base: str, processes: int, timeout_s: float = 30) -> None:
    """Until every serving process runs its worker pool (its heartbeat is in /api/v1/workers)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/v1/workers", timeout=5) as answer:
            if len(json.loads(answer.read())) >= processes:
                return
        time.sleep(0.1)  # starting processes offer nothing to wait on
    raise TimeoutError(f"{processes} serving processes at {base}")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU time of the children this process has waited for (the echo and serve processes are waited
    for only at the end, so across one wrk run this grows by wrk's CPU alone)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario (bounded; wrk runs whole seconds)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the scenario list N times and report each scenario's median run (shared "
                             "machines vary by 15 %% or more between runs)")
    parser.add_argument("--load", choices=sorted(LOADS), default="wrk",
                        help="load generator: wrk (C, little CPU of its own; the default) or aiohttp (Python "
                             "clients in this process)")
    parser.add_argument("--queue-type", default="sqlite")
    parser.add_argument("--results-type", default="sqlite")
    parser.add_argument("--backend-delay-s", type=float, default=0.0, help="echo server delay per request")
    parser.add_argument("--scenarios", nargs="*",
                        default=["direct", "prefer-wait", "long-poll", "forward-prefer-wait"])
    parser.add_argument("--processes", type=int, default=1, help="openhqm serve --processes (server.processes)")
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for openhqm serve")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--consoles", type=int, default=0,
                        help="keep N operator consoles open meanwhile: N readers of /api/v1/console/events "
                             "(curl), each served the overview tick every 2 s")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the serve process with py-spy while the scenarios run (speedscope JSON)")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                        help="server.engine of `openhqm serve`: uvicorn + httptools (the default), or granian "
                             "(Rust; the `granian` extra)")
    parser.add_argument("--split", action="store_true",
                        help="run `openhqm listener` and `openhqm worker` (one each, sharing the SQLite file) instead "
                             "of `serve`; the openhqm CPU column is both processes'")
    parser.add_argument("--stages", type=int, default=0, metavar="N",
                        help="trace 1 in N submits in serve (OPENHQM_STAGE_SAMPLE) and print where they waited: "
                             "p50/p90/p99 of the gap between consecutive hops, per scenario")
    args = parser.parse_args()
    if args.profile and not py_spy():
        parser.error("--profile needs py-spy (pip install -e '.[bench]')")
    if args.load == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH (Debian/Ubuntu: apt-get install wrk); or use --load aiohttp")

    procs = Processes()
    echo_port, hqm_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="openhqm-bench-")
    echo_url = f"http://127.0.0.1:{echo_port}/echo"
    env = {
        "OPENHQM_SERVER__PORT": str(hqm_port), "OPENHQM_DATA_DIR": data_dir,
        "OPENHQM_QUEUE__TYPE": args.queue_type, "OPENHQM_RESULTS__TYPE": args.results_type,
        "OPENHQM_LOGGING__LEVEL": "WARNING", "OPENHQM_SERVER__PROCESSES": str(args.processes),
        "OPENHQM_SERVER__ENGINE": args.server,
        "OPENHQM_PROXY__ENABLED": "true",
        "OPENHQM_PROXY__ENDPOINTS": json.dumps({"echo": {"url": echo_url}}),
        **dict(item.split("=", 1) for item in args.env),
    }
    if args.stages:
        env["OPENHQM_STAGE_SAMPLE"] = str(args.stages)
    env |= broker_env(args.queue_type)
    results: dict[str, dict[str, Any]] = {}
    try:
        procs.start([sys.executable, str(HERE / "echo_server.py"), str(echo_port), str(args.backend_delay_s)])
        if args.split:  # the listener and a worker process sharing the data dir, woken by the SQLite bell
            for command in ("listener", "worker"):
                procs.start([sys.executable, "-m", "openhqm", command], env=env, cwd=data_dir)
        else:
            procs.start([sys.executable, "-m", "openhqm", "serve"], env=env, cwd=data_dir)
        openhqm_pids = [proc.pid for proc in procs.procs[1:]]
        wait_http(f"http://127.0.0.1:{echo_port}/")
        wait_http(f"http://127.0.0.1:{hqm_port}/ready")
        base = f"http://127.0.0.1:{hqm_port}"
        wait_serving(base, args.processes)
        if args.profile:
            procs.start([py_spy(), "record", "--rate", "200", "--format", "speedscope", "--nonblocking",
                         *(["--subprocesses"] if args.processes > 1 else []),
                         "--pid", str(openhqm_pids[0]), "--output", os.path.abspath(args.profile)])
        if args.consoles and not shutil.which("curl"):
            parser.error("--consoles needs curl on PATH")
        for _ in range(args.consoles):
            procs.start(["curl", "-sN", "-o", os.devnull, f"{base}/api/v1/console/events"])
        submit = f"{base}/api/v1/submit"
        finished = f"{base}/api/v1/response/{finished_request(submit) if 'response' in args.scenarios else '-'}"
        scenarios = {
            "direct": Scenario(echo_url, json.dumps(PAYLOAD)),
            "prefer-wait": Scenario(submit, submit_body({"handler": "echo"}), PREFER_WAIT, expect_completed=True),
            "long-poll": Scenario(submit, submit_body({"handler": "echo"}), long_poll=True, expect_completed=True),
            "forward-prefer-wait": Scenario(submit, submit_body({"endpoint": "echo"}), PREFER_WAIT,
                                            expect_completed=True),
            "forward-long-poll": Scenario(submit, submit_body({"endpoint": "echo"}), long_poll=True,
                                          expect_completed=True),
            "response": Scenario(finished, None, expect_completed=True),  # GET a finished request's answer
        }
        echo_pid = procs.procs[0].pid
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.scenarios}
        for _ in range(args.repeat):
            for name in args.scenarios:
                asyncio.run(warm_up(scenarios[name], args.clients))
                if args.stages:
                    stage_times(base)  # a new sample: the warm-up's traces are dropped
                before = cpu_seconds(echo_pid), sum(map(cpu_seconds, openhqm_pids))
                result: dict[str, Any] = LOADS[args.load](scenarios[name], args.clients, args.seconds)
                after = cpu_seconds(echo_pid), sum(map(cpu_seconds, openhqm_pids))
                if args.stages and name != "direct":
                    result["stages"] = stage_times(base)
                # CPU per round trip of each process over the measured run (the warm-up before it excluded).
                round_trips = max(1, result["requests"])
                for key, start, end in zip(("echo_cpu_ms", "serve_cpu_ms"), before, after, strict=True):
                    result[key] = (end - start) * 1000 / round_trips
                result["client_cpu_ms"] = result.pop("load_cpu_s") * 1000 / round_trips
                runs[name].append(result)
        for name, measured in runs.items():
            results[name] = sorted(measured, key=lambda r: r["rps"])[len(measured) // 2]
    finally:
        procs.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    report(results, args)


def py_spy() -> str:
    """py-spy on PATH, or beside this Python (a venv's bin run without activating it); "" if neither."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else "")


def finished_request(submit: str) -> str:
    """The correlation id of a request answered by the echo handler, for the `response` scenario."""
    request = urllib.request.Request(submit, data=submit_body({"handler": "echo"}).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Prefer": PREFER_WAIT})
    with urllib.request.urlopen(request, timeout=30) as answer:
        correlation_id: str = json.loads(answer.read())["correlation_id"]
        return correlation_id


def stage_times(base: str) -> dict[str, Any]:
    """The serve process's stage summary since the last call (openhqm/stages.py), starting a new one."""
    with urllib.request.urlopen(f"{base}/api/v1/stats/stages?reset=true", timeout=10) as answer:
        summary: dict[str, Any] = json.loads(answer.read())
        return summary


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    baseline = results.get("direct", {}).get("rps")
    print(f"server={args.server}{' split' if args.split else ''} load={args.load} queue={args.queue_type} "
          f"results={args.results_type} "
          f"clients={args.clients} "
          f"seconds={args.seconds:g} repeat={args.repeat} backend_delay_s={args.backend_delay_s:g} "
          f"processes={args.processes} "
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
    for name, r in results.items():
        if "stages" in r:
            report_stages(name, r["stages"])


def report_stages(scenario: str, summary: dict[str, Any]) -> None:
    print(f"\n{scenario}: where sampled submits waited (1 in {summary['sample_every']}, "
          f"{summary['traces']} traces), ms between hops")
    print("| hop | count | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [(f"{gap['from']} -> {gap['to']}", gap) for gap in summary["gaps"]]
    rows += [("whole round trip in openhqm", summary["total"]), ("one event-loop turn (probe)", summary["loop_turn"])]
    for label, gap in rows:
        if gap.get("count"):
            print(f"| {label} | {gap['count']} | {gap['p50_ms']:.2f} | {gap['p90_ms']:.2f} | {gap['p99_ms']:.2f} "
                  f"| {gap['max_ms']:.2f} |")


if __name__ == "__main__":
    main()
