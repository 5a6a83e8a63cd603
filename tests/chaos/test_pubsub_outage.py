"""Pub/Sub (the emulator) killed with SIGKILL twice under a steady submit load. The emulator keeps
everything in memory, so a restart is a broker that lost its state: topics, subscriptions and
messages vanish. What can hold is tested: refusals are prompt, /ready follows the broker, the bridge
makes its topics again and keeps serving, and every request accepted after the last restart ends
terminal; those lost with the emulator's state are counted (left to issue #14 section 2's
reconciliation)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.broker_kill_drill import (
    BrokerInstance,
    assert_no_refused_request_ran,
    assert_outage_bounds,
    assert_refusals_were_prompt,
    bridge_under_load,
    final_statuses,
    kill_and_restart,
    run_counts,
    summary,
)
from tests.services import IN_CI, free_port

TERMINAL = ("COMPLETED", "FAILED")


def emulator_binary() -> str | None:
    """As scripts/brokers-up finds it: PUBSUB_EMULATOR_BIN, else the component beside gcloud."""
    explicit = os.environ.get("PUBSUB_EMULATOR_BIN")
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    component = Path(gcloud).resolve().parent.parent / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    return str(component) if os.access(component, os.X_OK) else None


@pytest.fixture
def pubsub_emulator(tmp_path: Path) -> Iterator[BrokerInstance]:
    emulator = emulator_binary()
    if emulator is None or shutil.which("java") is None:
        if IN_CI:
            pytest.fail("needs cloud-pubsub-emulator and java; CI=true requires them", pytrace=False)
        pytest.skip("needs cloud-pubsub-emulator (Google Cloud CLI component) and java")
    port = free_port()
    broker = BrokerInstance("pubsub-emulator", [emulator, "--host=127.0.0.1", f"--port={port}"],
                            f"127.0.0.1:{port}", tmp_path / "pubsub-emulator.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_pubsub_killed_twice_refuses_promptly_and_serves_again_on_new_topics(
    tmp_path: Path, pubsub_emulator: BrokerInstance
) -> None:
    env = {"OPENHQM_QUEUE__TYPE": "pubsub", "OPENHQM_QUEUE__PUBSUB__EMULATOR_HOST": pubsub_emulator.address,
           "OPENHQM_QUEUE__PUBSUB__PROJECT_ID": "openhqm-chaos", "OPENHQM_QUEUE__PUBSUB__ACK_DEADLINE_S": "10"}
    async with bridge_under_load(tmp_path, env) as (server, seen, stop_load):
        outages = [await kill_and_restart(pubsub_emulator, server, seen) for _ in range(2)]
        await stop_load()
        after_last_restart = [cid for at, cid in seen.accepted if at >= outages[-1].restarted_at]
        statuses = await final_statuses(server.url, after_last_restart, timeout_s=30)
        # the rest once, without waiting: those whose messages the restart erased stay PENDING
        statuses |= await final_statuses(server.url, [cid for _, cid in seen.accepted if cid not in statuses], 0)
        assert server.proc is not None and server.proc.poll() is None, "the bridge's process ended"
    runs = run_counts(tmp_path)
    print(summary("pubsub", seen, outages, statuses, runs))
    assert_refusals_were_prompt(seen)
    assert_no_refused_request_ran(seen, runs)
    # The 2 s: the gRPC channels retry a lost connection at least once a second
    # (gcp_pubsub_topics.RECONNECT_OPTIONS), so /ready follows within about 1.2 s of the emulator's return.
    assert_outage_bounds(outages)
    assert after_last_restart, "nothing accepted after the last restart"
    unfinished = {cid: statuses[cid] for cid in after_last_restart if statuses[cid] not in TERMINAL}
    assert not unfinished, f"{len(unfinished)} accepted after the last restart not terminal: {unfinished}"
