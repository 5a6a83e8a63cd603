"""The backend contract every broker implements.

A backend moves opaque bytes; decoding envelopes is the worker's job, so messages written by
other systems (queue -> HTTP) travel through the same contract.
- `publish` returns only once the broker has durably accepted the message (the HTTP 202 waits on it).
- `consume` yields `Delivery` objects, driven by the broker, until `close()` ends it.
- Every delivery is settled exactly once: `ack`, `nack(delay_s)` or `dead_letter(reason)`.
  One never settled comes back after its lease (at-least-once).
- Dead letters go to the ordinary queue `dead_letter_queue(queue)`, readable with `consume`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import structlog
from pydantic import BaseModel, ConfigDict, SecretStr

from openhqm.constants import DEFAULT_PRIORITY
from openhqm.errors import AlreadySettled
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)


class Support(enum.StrEnum):
    NATIVE = "native"
    EMULATED = "emulated"
    NONE = "none"


@dataclass(frozen=True)
class Capabilities:
    """Facts about a backend that the core and the contract suite read (never marketing). A backend
    states only where it differs from these defaults: no priority, delay or ordering key, emulated
    dead letters, durable and shared between processes, no lease extension."""

    priority: Support = Support.NONE
    delay: Support = Support.NONE
    ordering_key: Support = Support.NONE
    dead_letter: Support = Support.EMULATED
    lease_extension: bool = False
    durable: bool = True
    shared_between_processes: bool = True
    max_message_bytes: int | None = None
    max_delay_s: float | None = None
    # False where the broker cannot count what it holds (MQTT, the Pub/Sub emulator): depth() raises
    # NotImplementedError instead of answering 0.
    depth: bool = True
    # publish_leased(): the message is written already leased to the publishing process, which runs it
    # without consuming it (eager dispatch, chosen by the runtime for `openhqm serve`; see runtime.py).
    eager_dispatch: bool = False


HEALTH_TIMEOUT_S = 1.5  # /ready must answer quickly even while a broker hangs: 503 within 2 s of a failure


class BackendOptions(BaseModel):
    """Base of a backend's typed options, read from `queue.<backend name>.*` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = "ok"


class Delivery(ABC):
    """One received message. Settle it exactly once; a second settle raises AlreadySettled."""

    # Where the backend tracks it: the monotonic time this delivery's lease ends (see `_late`).
    lease_until: float | None = None

    def __init__(self, queue: str, body: bytes, *, attempt: int, message_id: str, key: str | None = None):
        self.queue = queue
        self.body = body
        self.attempt = attempt
        self.message_id = message_id
        self.key = key
        self.settled: str | None = None

    def _settle(self, how: str) -> bool:
        """Mark the delivery settled; False when the settle must change nothing, being late."""
        if self.settled is not None:
            raise AlreadySettled(f"delivery {self.message_id} was already settled by {self.settled}")
        self.settled = how
        return not self._late()

    def _late(self) -> bool:
        """Past `lease_until`: the broker may have handed the message to another consumer, and a settle
        could change that live copy (an ack delete it, a nack add another), so it changes nothing."""
        if self.lease_until is None or time.monotonic() < self.lease_until:
            return False
        log.warning("late_settle", queue=self.queue, message_id=self.message_id, delivery=type(self).__name__)
        return True

    async def ack(self) -> None:
        if self._settle("ack"):
            await self._ack()

    async def nack(self, delay_s: float | None = None) -> None:
        """Return the message for redelivery, after `delay_s` seconds when given."""
        if self._settle("nack"):
            await self._nack(delay_s)

    async def dead_letter(self, reason: str) -> None:
        if self._settle("dead_letter"):
            await self._dead_letter(reason)

    async def extend_lease(self, seconds: float) -> None:  # noqa: B027 - optional: a no-op by design
        """Keep the message invisible to others for `seconds` more (no-op where unsupported)."""

    @abstractmethod
    async def _ack(self) -> None: ...

    @abstractmethod
    async def _nack(self, delay_s: float | None) -> None: ...

    @abstractmethod
    async def _dead_letter(self, reason: str) -> None: ...


class Backend(ABC):
    """A broker connection. Construct with Settings; `async with backend:` connects and closes.

    `options_model` declares the backend's settings, configured as `queue.<name>.*` (validated,
    with "did you mean" for typos) exactly like built-in backends; `self.options` holds them.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    options_model: ClassVar[type[BackendOptions]] = BackendOptions
    options: Any

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.options = settings.queue.options_for(self.name, self.options_model)

    @property
    def lease_s(self) -> float | None:
        """How long a delivery stays hidden from other consumers; the worker pool extends it while a
        job runs (where `capabilities.lease_extension`). None: no lease to keep (held while the
        connection lives, or the client library extends it itself)."""
        return None

    @property
    def display_url(self) -> str:
        """Where this backend points (its `url` option, where it has one), with any password masked."""
        url = getattr(self.options, "url", None)
        return mask_url(url.get_secret_value()) if isinstance(url, SecretStr) else self.name

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Idempotent; ends every open consume() iterator."""

    @abstractmethod
    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int = DEFAULT_PRIORITY,
        delay_s: float | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Return once the broker has durably accepted the message."""

    async def publish_leased(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                             key: str | None = None, message_id: str | None = None) -> Delivery | None:
        """Publish like `publish`, but already leased to the caller, which settles the returned
        delivery as if it had consumed it; unsettled, it comes back after the lease like any other.
        None when it was published for consumers instead: leasing it would overtake a waiting message
        of equal or higher priority, or of the same ordering `key`. Where `capabilities.eager_dispatch`."""
        raise NotImplementedError(f"backend {self.name!r} cannot publish a leased message")

    @abstractmethod
    def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]: ...

    @abstractmethod
    async def depth(self, queue: str) -> int:
        """Messages ready or waiting in `queue` (for metrics and autoscaling)."""

    async def health(self) -> Health:
        """Never raises; answers within HEALTH_TIMEOUT_S. A template over `ping()`."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self.ping()
        except TimeoutError:
            return Health(False, f"{self.display_url}: no answer within {HEALTH_TIMEOUT_S:g} s")
        except Exception as exc:
            return Health(False, f"{self.display_url}: {mask_url(str(exc)) or type(exc).__name__}")
        return Health(True)

    async def ping(self) -> None:
        """One round trip to the broker; raise when not connected or not answering."""
        raise NotImplementedError(f"backend {self.name!r} implements neither ping() nor health()")

    async def purge(self, queue: str) -> int:
        """Remove every message from `queue`; returns how many where the broker tells."""
        raise NotImplementedError(f"backend {self.name!r} cannot purge queues")

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
