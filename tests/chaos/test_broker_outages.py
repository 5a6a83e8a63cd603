"""Broker and result-store outages (issue 14, section 1), on brokers of the tests' own: killed with
SIGKILL twice under a steady submit load and started again, a real `openhqm serve` in front.

The bounds asserted are those of failure detection the issue names (a 503 within 1 s, /ready within
2 s of the failure and of the recovery), far above what a working bridge takes, not performance
figures. Duplicates are printed (run with -s to see them): at-least-once allows them, losses it does not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from openhqm.constants import dead_letter_queue
from tests.chaos.outage_drill import Drill, final_statuses, run_drill
from tests.chaos.own_brokers import OwnBroker, OwnMosquitto, OwnNATS, OwnPostgres, OwnRedis, ProxiedRabbitMQ, running
from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import OpenHQMProcess

SUBMIT_BOUND_S = 1.0  # a submit while the broker is down: 503 within this, never a wait for a reconnect
READ_BOUND_S = 1.0  # a GET of a known id while the broker or store is down
READY_BOUND_S = 2.0  # /ready turns 503 within this of the failure, and 200 within this of the recovery


def queue_env(backend: str) -> Callable[[OwnBroker], dict[str, str]]:
    def env(broker: OwnBroker) -> dict[str, str]:
        return {"OPENHQM_QUEUE__TYPE": backend, f"OPENHQM_QUEUE__{backend.upper()}__URL": broker.url}
    return env


def store_env(store: str, key: str) -> Callable[[OwnBroker], dict[str, str]]:
    def env(broker: OwnBroker) -> dict[str, str]:
        return {"OPENHQM_RESULTS__TYPE": store, f"OPENHQM_RESULTS__{store.upper()}__{key}": broker.url}
    return env


SERVE = ("serve",)
APART = ("listener", "worker")  # the worker's replies then travel through the broker too
CASES = {
    "redis queue": (OwnRedis, queue_env("redis"), SERVE),
    # A job whose reply cannot be sent is returned, and, its nack failing too, redelivered after its lease.
    "redis queue, listener and worker apart": (
        OwnRedis, lambda broker: {**queue_env("redis")(broker), "OPENHQM_QUEUE__REDIS__LEASE_S": "5"}, APART),
    "rabbitmq queue": (ProxiedRabbitMQ, queue_env("rabbitmq"), SERVE),
    "nats queue": (OwnNATS, queue_env("nats"), SERVE),
    "mqtt queue": (OwnMosquitto, queue_env("mqtt"), SERVE),
    "redis result store": (OwnRedis, store_env("redis", "URL"), SERVE),
    "redis queue and result store": (OwnRedis, lambda broker: {
        **queue_env("redis")(broker), **store_env("redis", "URL")(broker), "OPENHQM_QUEUE__REDIS__LEASE_S": "5"},
        SERVE),
    "postgres result store": (OwnPostgres, store_env("postgres", "DSN"), SERVE),
}


def assert_outages_met_the_bounds(drill: Drill) -> None:
    refused = [a for a in drill.during_outages(drill.submits) if a.status != 202]
    assert refused, "submits were made while the broker was down"
    assert {a.status for a in refused} == {503}, f"a submit while down answers 503: {refused}"
    assert all(a.retry_after for a in refused), "every 503 carries Retry-After"
    assert max(a.took_s for a in refused) < SUBMIT_BOUND_S, f"503 at once, not after a reconnect: {refused}"
    reads = drill.during_outages(drill.reads)
    assert {a.status for a in reads} <= {200, 202, 503}, f"a read while down: stored answer or 503: {reads}"
    assert max(a.took_s for a in reads) < READ_BOUND_S, f"reads while down answer at once: {reads}"
    for outage in drill.outages:
        assert outage.ready_down_after_s is not None and outage.ready_down_after_s < READY_BOUND_S, outage
        assert outage.ready_up_after_s is not None and outage.ready_up_after_s < READY_BOUND_S, outage


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
async def test_sigkilled_broker_costs_no_accepted_request_and_never_a_hang(case: str, tmp_path: Path) -> None:
    broker_class, broker_env, commands = CASES[case]
    broker = broker_class(tmp_path / "broker") if broker_class is not ProxiedRabbitMQ else ProxiedRabbitMQ()
    run_log = tmp_path / "runs.log"
    async with running(broker):
        queues = f"chaos-{uuid.uuid4().hex[:8]}"
        env = {**SAMPLE_ENV, **broker_env(broker), "OPENHQM_TEST_RUN_LOG": str(run_log),
               "OPENHQM_WORKER__CONCURRENCY": "4", "OPENHQM_QUEUE__REQUEST_QUEUE": queues,
               "OPENHQM_QUEUE__RESPONSE_QUEUE": f"{queues}-replies", "OPENHQM_WORKER__HEALTH_PORT": "0"}
        processes = [OpenHQMProcess(command, tmp_path / "openhqm", env) for command in commands]
        server = processes[0]  # the one that answers HTTP
        try:
            for process in processes:  # off the event loop, where a proxied broker's proxy runs
                await asyncio.to_thread(process.start)
            drill = await run_drill(server, broker, run_log)
            statuses = await final_statuses(server.url, drill.accepted)
            print("\n" + drill.summary(case, statuses))
            assert all(p.proc is not None and p.proc.poll() is None for p in processes), "they lived through it"
            assert_outages_met_the_bounds(drill)
            unfinished = {i: s for i, s in statuses.items() if s != "COMPLETED"}
            assert not unfinished, f"every accepted request ended: {unfinished}"
            assert len(statuses) == len(drill.accepted)
            assert set(drill.accepted) <= set(drill.runs()), "every accepted request ran"
        finally:
            for process in processes:
                process.stop()
            await broker.remove_queues([queues, f"{queues}-replies", dead_letter_queue(queues)])
