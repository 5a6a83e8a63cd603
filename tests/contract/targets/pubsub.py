from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.services import require_service

NAME = "pubsub"
BULK_COUNT = 10_000
# Pub/Sub delivers at least once: a message whose ack reaches the emulator after its ack deadline
# (10 s, the minimum, kept low for the abandonment tests) is sent again. Usually 0 here, but one CI
# run in six on 2 busy cores saw a burst of 444 of 10,000. Loss is still checked exactly, and the
# bridge itself never runs a finished request twice (the store's claim refuses it).
ALLOWED_DUPLICATES = 1_000


SERVICE = "pubsub"
MIN_LEASE_S = 10.0  # Pub/Sub's smallest ack deadline
UNTESTABLE = {
    "late_settle": "google-cloud-pubsub's lease management extends every unsettled delivery's lease while "
                   "its subscriber runs (up to an hour), so a lease passes only when its holder is gone "
                   "and no late settle can follow",
}


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    broker = require_service("pubsub")
    host = address or broker
    # ack_deadline_s 10 is Pub/Sub's minimum: a consumer that died without settling gives its
    # message back within about 20 s (the lease it last extended runs out).
    return Settings(queue={"type": "pubsub", "pubsub": {
        "project_id": "openhqm-contract", "emulator_host": host, "ack_deadline_s": round(lease_s or 10),
    }}, data_dir=tmp_path)

# Failed in every run here when close() ends the stream, in one run of two when the iterator does.
RACY_BUGS = {
    "test_a_consumer_resumes_after_its_connection_is_cut[[]*[]]": (
        "seen once in a full CI-style run (2026-12-07): after the cut no delivery within 60 s. Traced to the "
        "emulator (0.8.20), not gcp_pubsub*.py: the library reopens the stream within ~60 ms of the cut, yet the "
        "emulator keeps handing messages to the ended stream (for minutes; also after a clean close), and each such "
        "delivery comes back only after ack_deadline_s (10 s): 16 runs here passed with the test's call taking "
        "10-50 s, always a multiple of 10 s; a probe saw single messages take 60-70 s. A test with no earlier "
        "consumer of the subscription gets every message at once; plain google-cloud-pubsub (no openhqm, no cut: "
        "one subscriber cancelled and closed, then another) sees the same, each message after the closed stream's "
        "deadline (60 s)"),
    "test_prefetched_but_unconsumed_messages_are_released_on_close[[]*[]]": (
        "gcp_pubsub.py _Stream.stop (line 188), reached from close() or the end of consume(): it gives "
        "back (modack 0) only what sits in the inbox at that moment; messages the library already "
        "leased but whose _received callback (line 185) reaches the loop after the drain, or that the "
        "library still holds, are never released and come back only after ack_deadline_s (60 s here). Suspected cause, "
        "not yet traced inside the library"),
    # Seen in one full run of three here.
    "test_publish_while_the_broker_is_unreachable_raises_backend_unavailable_and_works_after[[]*[]]": (
        "gcp_pubsub.py _publish_once (lines 345-359): when asyncio.timeout(timeout_s + 5) gives up (raised "
        "as BackendUnavailable), the library's publish future is neither cancelled nor awaited, and its "
        "batch keeps retrying; once the emulator answers again it is sent, so a publish reported as "
        "refused (HTTP 503) arrives after all. Likely cause, not traced inside the library; publish futures "
        "cannot be cancelled. In the bridge such a message does not run: the refused submit's record is "
        "removed, and the worker skips a message of this bridge whose record is gone (processor._claim)"),
}
