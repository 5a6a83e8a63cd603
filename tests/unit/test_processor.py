"""The processor in the test process, over the memory backend and the memory result store."""

from __future__ import annotations

from typing import Any

from openhqm.app import OpenHQM
from openhqm.backends.memory import MemoryBackend
from openhqm.config import Settings
from openhqm.envelope import Envelope, decode_envelope, encode
from openhqm.errors import TargetDeferred
from openhqm.policies import RetryPolicy
from openhqm.results.memory import MemoryResultStore
from openhqm.routing import Routing
from openhqm.worker.handlers import HandlerRegistry, Job
from openhqm.worker.processor import Failure, Processor, give_up_reason
from openhqm.worker.targets import Outcome

QUEUE = "requests-deferred"


class DeferOnce:
    """Defers its first job (as an open circuit does), then completes."""

    accepts_raw = False

    def __init__(self) -> None:
        self.seen: list[Envelope] = []
        self.routing = Routing(HandlerRegistry(), "echo")

    async def run(self, job: Job) -> Outcome:
        self.seen.append(job.envelope)
        if len(self.seen) == 1:
            raise TargetDeferred("come back later", delay_s=0.0, waiting_on="limit:test")
        return Outcome({"ok": True})

    def retry_policy(self, job: Job) -> Any:
        return None

    def timeout_s(self, job: Job) -> float | None:
        return None


async def test_a_deferred_request_goes_back_to_the_queue_without_its_attempts_timing() -> None:
    target = DeferOnce()
    async with MemoryBackend(Settings()) as backend:
        processor = Processor(OpenHQM(Settings()), backend, MemoryResultStore(), target, QUEUE)
        await backend.publish(QUEUE, encode(Envelope(body=b"{}", metadata={"team": "a"})))
        deliveries = aiter(backend.consume(QUEUE))
        await processor.process(await anext(deliveries))
        again = await anext(deliveries)
        assert decode_envelope(again.body).metadata == {"team": "a"}
        await processor.process(again)
    assert [seen.metadata for seen in target.seen] == [{"team": "a"}, {"team": "a"}]


async def test_a_message_without_a_route_is_routed_once_to_the_default_handler() -> None:
    target = DeferOnce()
    async with MemoryBackend(Settings()) as backend:
        processor = Processor(OpenHQM(Settings()), backend, MemoryResultStore(), target, QUEUE + "-unrouted")
        await backend.publish(QUEUE + "-unrouted", encode(Envelope(body=b"{}")))
        deliveries = aiter(backend.consume(QUEUE + "-unrouted"))
        await processor.process(await anext(deliveries))
        again = decode_envelope((await anext(deliveries)).body)
    assert target.seen[0].handler == "echo" and again.handler == "echo"


def test_a_dead_letter_names_why_the_worker_gave_up() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_s=10)
    assert give_up_reason(Failure("DeadLetter: no", retryable=False), 1, policy) == ("handler", "handler gave up")
    assert give_up_reason(Failure("boom"), 3, policy) == ("max_attempts", "failed after 3 attempt(s)")
    reason, detail = give_up_reason(Failure("boom"), 2, policy)  # attempts left, but too old for another
    assert reason == "expired" and "max_age_s" in detail


async def test_a_message_of_this_bridge_whose_record_is_gone_is_skipped_and_another_systems_runs() -> None:
    """A submit answered 503 has its record removed; should its message reach the queue after all (a
    send the broker stored but never acknowledged), it must not run. Another system's message runs."""
    settings = Settings()
    target = DeferOnce()
    queue = QUEUE + "-gone"
    async with MemoryBackend(settings) as backend:
        processor = Processor(OpenHQM(settings), backend, MemoryResultStore(), target, queue)
        refused = Envelope(body=b"{}", reply_to=settings.queue.response_queue, metadata={"from": "refused"})
        foreign = Envelope(body=b"{}", reply_to="another-systems-replies", metadata={"from": "foreign"})
        for envelope in (refused, foreign):
            await backend.publish(queue, encode(envelope))
        deliveries = aiter(backend.consume(queue))
        for _ in range(2):
            await processor.process(await anext(deliveries))
        assert await backend.depth(queue) == 1  # the refused one acked; the foreign one deferred back
    assert [seen.metadata for seen in target.seen] == [{"from": "foreign"}]
