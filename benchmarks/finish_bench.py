"""The finish alone (listener/settle.py): a reply's transition and its message's ack as one operation
(`OneTransactionSettle`) or as two writes (`SeparateSettle`), on one SQLite file, 32 at once; CPU per
finish, the two alternated.    python benchmarks/finish_bench.py [rounds]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from openhqm.backends.base import Delivery
from openhqm.backends.sqlite import SQLiteBackend
from openhqm.config import load_settings
from openhqm.constants import Status
from openhqm.envelope import Reply
from openhqm.listener.settle import OneTransactionSettle, SeparateSettle, Settle
from openhqm.results.base import RequestRecord
from openhqm.results.sqlite import SQLiteResultStore

FINISHES, AT_ONCE = 4000, 32
RESULT = {"message": "hello", "n": 42}


async def finish_all(settle: Settle, pairs: list[tuple[str, Delivery]]) -> None:
    async def worker(part: list[tuple[str, Delivery]]) -> None:
        for correlation_id, delivery in part:
            await settle(Reply(correlation_id=correlation_id, status=Status.COMPLETED, result=RESULT), delivery, None)

    await asyncio.gather(*(worker(pairs[k::AT_ONCE]) for k in range(AT_ONCE)))


async def main(rounds: int) -> None:
    data = Path(tempfile.mkdtemp())
    backend = SQLiteBackend(load_settings(None, {"data_dir": data}))
    store = SQLiteResultStore(data / "openhqm.db")
    await backend.connect()
    await store.connect()
    modes: dict[str, Settle] = {"one": OneTransactionSettle(store), "separate": SeparateSettle(store)}
    cpu_us: dict[str, list[float]] = {name: [] for name in modes}
    for n in range(rounds):
        for name in (["one", "separate"] if n % 2 == 0 else ["separate", "one"]):
            ids = [f"{name}-{n}-{i}" for i in range(FINISHES)]
            await asyncio.gather(*(store.create(RequestRecord(correlation_id=c, status=Status.PROCESSING))
                                   for c in ids))
            leased = await asyncio.gather(*(backend.publish_leased("q", b"x" * 200, message_id=c) for c in ids))
            pairs = [(c, d) for c, d in zip(ids, leased, strict=True) if d is not None]
            assert len(pairs) == FINISHES
            wall, cpu = time.perf_counter(), time.process_time()
            await finish_all(modes[name], pairs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert store.db.connection.execute("SELECT COUNT(*) FROM queue_messages").fetchone()[0] == 0
            cpu_us[name].append(cpu / FINISHES * 1e6)
            print(f"round {n} {name:9s} {FINISHES / wall:8.0f} finishes/s  {cpu_us[name][-1]:6.1f} us CPU each")
    for name, values in cpu_us.items():
        print(name, "median us CPU per finish:", round(sorted(values)[len(values) // 2], 1))
    await store.close()
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6))
