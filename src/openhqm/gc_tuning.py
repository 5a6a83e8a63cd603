"""Process-wide tuning for the long-running commands (serve, listener, worker).

CPython's cyclic garbage collector runs a young-generation pass every 700 net allocations and, now
and then, a full pass over every object: FastAPI, pydantic and the broker clients leave hundreds of
thousands of long-lived objects after start-up. Profiled under load (benchmarks/), the collector took
about 10 % of the CPU and full passes stalled the event loop for up to 80 ms. Freezing what exists
once start-up is over moves it out of the collector's view, and a larger young-generation threshold
makes passes rare; reference counting still frees almost everything a request allocates at once.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (10_000, 20, 20)


def settle_after_startup() -> None:
    """Call once everything is imported and connected, before taking traffic."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
