"""Soak: forwarded requests through `openhqm serve` for a long, bounded time, sampled every interval.

    python benchmarks/soak.py [--seconds 600] [--clients 8] [--interval 10] [--output soak]
                              [--env OPENHQM_RESULTS__TTL_S=60 OPENHQM_RESULTS__CLEANUP_INTERVAL_S=10]
                              [--prefill 200000]

Reuses bench.py's pieces: the echo server, `openhqm serve` on a fresh data dir, and wrk with
wrk_scenario.lua. The load is closed-loop with a bounded connection count (wrk2 is not at hand):
wrk runs back to back one interval at a time, so each interval has its own round trips/s and p99,
and the achieved rate is reported rather than a target. After each interval the script records the
RSS and open descriptors of every openhqm process (serve and its children) and the size of
openhqm.db plus its -wal. It writes <output>.csv and <output>.json, a PNG if matplotlib happens to be
installed, and prints a summary checking the aims of issue 14 section 4.

--prefill N writes N finished requests straight into the store (SQLiteResultStore.create) before
serve starts, to see whether the hot path slows with the number of retained requests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (
    HERE,
    PREFER_WAIT,
    Processes,
    Scenario,
    broker_env,
    free_port,
    submit_body,
    wait_http,
    warm_up,
    wrk_load,
)

DB_NAME = "openhqm.db"


def descendants(pid: int) -> list[int]:
    """pid and every process below it (serve's workers, if it starts any)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def db_bytes(data_dir: Path) -> tuple[int, int]:
    """(openhqm.db, openhqm.db-wal) sizes; 0 for a file not there (yet)."""
    sizes = []
    for name in (DB_NAME, DB_NAME + "-wal"):
        try:
            sizes.append((data_dir / name).stat().st_size)
        except OSError:
            sizes.append(0)
    return sizes[0], sizes[1]


def retained_requests(data_dir: Path) -> int:
    """Rows in the requests table, read on a connection of its own (WAL readers do not block serve)."""
    try:
        with sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True, timeout=5) as conn:
            count: int = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            return count
    except sqlite3.Error:
        return -1


def sample(serve_pid: int, data_dir: Path) -> dict[str, Any]:
    processes = {}
    for pid in descendants(serve_pid):
        try:
            processes[pid] = {"rss_kb": rss_kb(pid), "fds": open_fds(pid)}
        except OSError:
            continue  # it ended between the listing and the read
    db, wal = db_bytes(data_dir)
    return {"rss_kb": sum(p["rss_kb"] for p in processes.values()), "fds": sum(p["fds"] for p in processes.values()),
            "processes": len(processes), "db_bytes": db, "wal_bytes": wal, "per_process": processes}


async def prefill(data_dir: Path, count: int, chunk: int = 2000) -> float:
    """Write `count` finished requests shaped like a forwarded echo's; returns seconds taken."""
    from openhqm.results.base import RequestRecord
    from openhqm.results.sqlite import SQLiteResultStore

    store = SQLiteResultStore(data_dir / DB_NAME)
    await store.connect()
    started = time.monotonic()
    now = time.time()
    try:
        for first in range(0, count, chunk):
            records = [RequestRecord(correlation_id=str(uuid.uuid4()), status="COMPLETED", submitted_at=now,
                                     updated_at=now, completed_at=now, attempts=1, processing_time_ms=1.5,
                                     result={"message": "hello", "n": 42}, target="echo")
                       for _ in range(first, min(count, first + chunk))]
            await asyncio.gather(*(store.create(record) for record in records))  # one group commit per chunk
    finally:
        await store.close()
    return time.monotonic() - started


def summarize(rows: list[dict[str, Any]], interval: float) -> dict[str, Any]:
    """The aims of issue 14 section 4, each with its numbers."""
    per_minute = max(1, round(60 / interval))
    first, last = rows[:per_minute], rows[-per_minute:]
    settled = rows[min(per_minute, len(rows)) - 1:]  # from the end of the first minute on
    rss_growth = max(r["rss_kb"] for r in settled) / settled[0]["rss_kb"] - 1 if settled[0]["rss_kb"] else 0.0
    fds = [r["fds"] for r in settled]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    first_rps, last_rps = mean([r["rps"] for r in first]), mean([r["rps"] for r in last])
    first_p99, last_p99 = max(r["p99_ms"] for r in first), max(r["p99_ms"] for r in last)
    sizes = [r["db_bytes"] + r["wal_bytes"] for r in rows]
    half = len(sizes) // 2
    return {
        "intervals": len(rows), "round_trips": sum(r["requests"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "achieved_rps": mean([r["rps"] for r in rows]),
        "rss_growth_after_first_minute": rss_growth, "rss_ok": rss_growth <= 0.05,
        "fds_min": min(fds), "fds_max": max(fds),
        # Descriptors move with the pooled connections to the backend; growing means the last
        # minute's peak is above the peak of everything before it.
        "fds_ok": max(r["fds"] for r in last) <= max(fds[:-per_minute] or fds) + 4,
        "file_bytes_first_half_max": max(sizes[:half] or sizes), "file_bytes_last": sizes[-1],
        # Bounded: the second half's peak is no more than 10 % above the first half's (only meaningful
        # when the run outlasts the retention, e.g. ttl_s=60 over a few minutes).
        "file_bounded": max(sizes[half:]) <= 1.1 * max(sizes[:half] or sizes),
        "first_minute_rps": first_rps, "last_minute_rps": last_rps, "throughput_ok": last_rps >= 0.9 * first_rps,
        "first_minute_p99_ms": first_p99, "last_minute_p99_ms": last_p99, "p99_ok": last_p99 <= 1.2 * first_p99,
    }


def write_outputs(output: Path, rows: list[dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]) -> None:
    fields = ["t_s", "rps", "p50_ms", "p99_ms", "requests", "errors", "rss_kb", "fds", "processes",
              "db_bytes", "wal_bytes", "retained"]
    with open(output.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    output.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "samples": rows}, indent=1))
    try:
        import matplotlib  # only if already installed: not a dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    t = [r["t_s"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    for ax, (label, values) in zip(axes, [
            ("round trips/s", [r["rps"] for r in rows]), ("p99 ms", [r["p99_ms"] for r in rows]),
            ("RSS MB (all openhqm)", [r["rss_kb"] / 1024 for r in rows]),
            ("SQLite MB (db + wal)", [(r["db_bytes"] + r["wal_bytes"]) / 1e6 for r in rows])], strict=True):
        ax.plot(t, values)
        ax.set_ylabel(label)
        ax.grid(True)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(output.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=10.0, help="one wrk run and one sample per interval")
    parser.add_argument("--clients", type=int, default=8, help="wrk connections (bounds the rate)")
    parser.add_argument("--scenario", choices=["forward-prefer-wait", "prefer-wait"], default="forward-prefer-wait")
    parser.add_argument("--queue-type", default="sqlite")
    parser.add_argument("--prefill", type=int, default=0, help="finished requests written before serve starts")
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for openhqm serve")
    parser.add_argument("--output", default="soak", help="path prefix for .csv, .json (and .png)")
    parser.add_argument("--keep-data", action="store_true", help="leave the data dir (its path is printed)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        parser.error("wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")

    procs = Processes()
    echo_port, hqm_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="openhqm-soak-"))
    echo_url = f"http://127.0.0.1:{echo_port}/echo"
    env = {"OPENHQM_SERVER__PORT": str(hqm_port), "OPENHQM_DATA_DIR": str(data_dir),
           "OPENHQM_QUEUE__TYPE": args.queue_type, "OPENHQM_RESULTS__TYPE": "sqlite",
           "OPENHQM_LOGGING__LEVEL": "WARNING", "OPENHQM_PROXY__ENABLED": "true",
           "OPENHQM_PROXY__ENDPOINTS": json.dumps({"echo": {"url": echo_url}}),
           **broker_env(args.queue_type), **dict(item.split("=", 1) for item in args.env)}
    meta: dict[str, Any] = {"seconds": args.seconds, "interval": args.interval, "clients": args.clients,
                            "scenario": args.scenario, "queue_type": args.queue_type, "prefill": args.prefill,
                            "env": args.env, "cores": os.cpu_count(), "loadavg_start": os.getloadavg()}
    rows: list[dict[str, Any]] = []
    try:
        if args.prefill:
            meta["prefill_s"] = asyncio.run(prefill(data_dir, args.prefill))
            meta["prefill_db_bytes"] = sum(db_bytes(data_dir))
            print(f"prefilled {args.prefill} requests in {meta['prefill_s']:.1f} s: "
                  f"{meta['prefill_db_bytes'] / args.prefill:.0f} bytes each (db + wal)", flush=True)
        procs.start([sys.executable, str(HERE / "echo_server.py"), str(echo_port)])
        procs.start([sys.executable, "-m", "openhqm", "serve"], env=env, cwd=str(data_dir))
        wait_http(f"http://127.0.0.1:{echo_port}/")
        wait_http(f"http://127.0.0.1:{hqm_port}/ready")
        serve_pid = procs.procs[1].pid
        submit = f"http://127.0.0.1:{hqm_port}/api/v1/submit"
        target = {"endpoint": "echo"} if args.scenario.startswith("forward") else {"handler": "echo"}
        scenario = Scenario(submit, submit_body(target), PREFER_WAIT, expect_completed=True)
        asyncio.run(warm_up(scenario, args.clients))
        started = time.monotonic()
        deadline = started + args.seconds
        print("t_s,rps,p99_ms,errors,rss_mb,fds,db_mb,wal_mb", flush=True)
        while time.monotonic() + args.interval / 2 < deadline:
            result = wrk_load(scenario, args.clients, args.interval)
            row = {"t_s": round(time.monotonic() - started, 1),
                   **{k: result[k] for k in ("rps", "p50_ms", "p99_ms", "requests", "errors")},
                   **sample(serve_pid, data_dir)}
            row["per_process"] = {str(k): v for k, v in row["per_process"].items()}
            rows.append(row)
            print(f"{row['t_s']},{row['rps']:.0f},{row['p99_ms']:.1f},{row['errors']:.0f},{row['rss_kb'] / 1024:.1f},"
                  f"{row['fds']},{row['db_bytes'] / 1e6:.1f},{row['wal_bytes'] / 1e6:.1f}", flush=True)
        if rows:
            rows[-1]["retained"] = retained_requests(data_dir)
    finally:
        procs.stop()
        if args.keep_data:
            print(f"data dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    if not rows:
        raise SystemExit("no interval completed")
    meta["loadavg_end"] = os.getloadavg()
    summary = summarize(rows, args.interval)
    retained = rows[-1].get("retained", -1)
    if retained > 0:
        summary["retained_requests"] = retained
        summary["bytes_per_retained_request"] = (rows[-1]["db_bytes"] + rows[-1]["wal_bytes"]) / retained
    write_outputs(Path(args.output), rows, summary, meta)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
