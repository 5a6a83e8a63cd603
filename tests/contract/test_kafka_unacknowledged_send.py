"""A Kafka publish that no broker acknowledges in time is refused, and a record the producer had not
sent by then never reaches the queue (openhqm.backends.kafka_send): a submit answered 503 for it
cannot run later. One already on the wire may still be stored by the broker; the worker skips it
(its request's record is gone: worker/processor.py `_claim`)."""

from __future__ import annotations

import asyncio

import pytest

from openhqm.errors import BackendUnavailable
from tests.contract.conftest import BackendFactory
from tests.contract.receiver import Receiver
from tests.contract.targets import kafka
from tests.services import host_port, require_service
from tests.tcp_proxy import KafkaProxy
from tests.waiting import wait_until

REFUSED_WITHIN_S = 10.0  # far below aiokafka's own request_timeout_s (40 s): a hang shows as a failure


@pytest.mark.parametrize("target", [kafka], ids=[kafka.NAME], indirect=True)
async def test_an_unacknowledged_publish_is_refused_and_its_unsent_record_never_arrives(
    make_backend: BackendFactory, queue: str
) -> None:
    proxy = KafkaProxy(*host_port(require_service(kafka.SERVICE)))
    await proxy.start()
    try:
        publisher = await make_backend(address=proxy.address)
        await publisher.publish(queue, b"before", key="k")
        proxy.hold()  # the broker stops answering; the connection stays up
        on_the_wire = asyncio.ensure_future(publisher.publish(queue, b"on the wire", key="k"))
        await wait_until(lambda: proxy.held > 0, timeout_s=10, what="the first record's request at the proxy")
        # aiokafka sends one request per broker at a time: this one waits in its buffer.
        buffered = asyncio.ensure_future(publisher.publish(queue, b"never sent", key="k"))
        async with asyncio.timeout(REFUSED_WITHIN_S):
            outcomes = await asyncio.gather(on_the_wire, buffered, return_exceptions=True)
        assert all(isinstance(outcome, BackendUnavailable) for outcome in outcomes), outcomes
        proxy.release()  # the request on the wire reaches the broker after all
        await publisher.publish(queue, b"after", key="k")
    finally:
        await proxy.stop()
    bodies = []
    async with Receiver(await make_backend(), queue) as receiver:  # a group of its own, from the start
        while not bodies or bodies[-1] != b"after":
            delivery = await receiver.next(timeout_s=30)
            bodies.append(delivery.body)
            await delivery.ack()
    assert bodies == [b"before", b"on the wire", b"after"]
