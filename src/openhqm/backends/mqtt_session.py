"""One MQTT 5 client session over paho-mqtt, as an asyncio object: the transport under mqtt.py.

paho's thread runs the network loop and reconnects; its callbacks hop onto the event loop. A
persistent session (an expiry, clean start off) keeps what it holds unacked across reconnects and
restarts; a subscribing session subscribes again on every connect, in case the broker lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from openhqm.backends.kit import ErrorMap
from openhqm.errors import BackendError, BackendUnavailable, ConfigError
from openhqm.redact import mask_url

log = structlog.get_logger(__name__)

ERRORS = ErrorMap("mqtt", [(OSError, BackendUnavailable), ((ValueError, RuntimeError), BackendError)])
NEVER_EXPIRE = 0xFFFFFFFF
# paho's thread reconnects, in whole seconds: every second (its least), without backing off, so that
# /ready and submits recover within about a second of the broker's return; a refused TCP connect is cheap.
RECONNECT_DELAY_S = 1


@dataclass(frozen=True)
class Broker:
    """Where and how every session of a backend connects; `timeout_s` bounds CONNACK, SUBACK and PUBACK."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    keepalive_s: int
    timeout_s: float

    @classmethod
    def parse(cls, url: str, *, keepalive_s: int, timeout_s: float) -> Broker:
        parsed = urlparse(url)
        if parsed.scheme not in {"mqtt", "mqtts", "tcp", "ssl"} or not parsed.hostname:
            raise ConfigError(
                f"queue.mqtt.url {mask_url(url)!r}: expected mqtt://host:1883 or mqtts://host:8883")
        tls = parsed.scheme in {"mqtts", "ssl"}
        return cls(parsed.hostname, parsed.port or (8883 if tls else 1883), tls,
                   unquote(parsed.username) if parsed.username else None,
                   unquote(parsed.password) if parsed.password else None, keepalive_s, timeout_s)


class Session:
    """One paho client. `expiry_s` 0: a clean session; else the broker keeps it that long when away.

    A client id is in IN_USE while its session is open in this process (two connections with one id
    take the session from each other). A subscribing subclass overrides the `on_*` hooks.
    """

    IN_USE: ClassVar[set[str]] = set()

    def __init__(self, broker: Broker, client_id: str, *, expiry_s: int = 0,
                 receive_maximum: int | None = None, subscription: str | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.broker = broker
        self.client_id = client_id
        self._subscription = subscription
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[int]] = {}  # PUBACK reason codes by packet id
        self.closed = False
        self.online = False  # connected, as the event loop has seen it (paho's thread runs ahead)
        # Written by paho's thread only: off from the start of on_disconnect until on_connect has dropped
        # what paho still holds, so no publish is handed over between the two (paho's state lags both).
        self._sendable = False
        self._clean_start = not expiry_s
        self._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if expiry_s:
            self._connect_properties.SessionExpiryInterval = expiry_s
        if receive_maximum is not None:
            self._connect_properties.ReceiveMaximum = receive_maximum
        self._client = client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                            protocol=mqtt.MQTTv5, manual_ack=True)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set()
        client.reconnect_delay_set(RECONNECT_DELAY_S, RECONNECT_DELAY_S)
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_publish = self._published
        client.on_disconnect = self._disconnected
        client.on_message = lambda client, userdata, message: self._call(self.on_message, message)

    def on_connect(self) -> None:
        """Connected (again): called before any message of the new connection."""

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        """A message of the subscription, unacked until `puback(message.mid)`."""

    def on_lost(self, error: BackendError) -> None:
        """The broker refused a reconnect or a re-subscription."""

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        """From paho's thread into the event loop (which may be gone once the backend was dropped)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(func, *args)

    async def open(self) -> None:
        """Connected (and subscribed) within the broker's timeout_s, or closed again and raising."""
        Session.IN_USE.add(self.client_id)
        try:
            with ERRORS(f"connect {self.client_id or 'the publisher'!r} to {self.broker.host}:{self.broker.port}"):
                self._client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s,
                                           clean_start=self._clean_start, properties=self._connect_properties)
                self._client.loop_start()
                async with asyncio.timeout(self.broker.timeout_s):
                    await asyncio.shield(self._ready)
        except BaseException:
            await self.close()
            raise

    def _connected(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        # paho sends again whatever it still holds right after this callback: all of it was refused already.
        self._drop_unacked()
        if reason.is_failure:
            self._call(self._fail, BackendUnavailable(f"mqtt: broker refused {self.client_id!r}: {reason}"))
            return
        self._sendable = True
        # Queued before any message of this connection (paho calls on_connect first), so the
        # consumer sees the new connection before what the broker re-sends on it.
        self._call(self._set_online, True)
        if self._subscription is not None:
            # On every (re)connect: a session the broker lost (expired, no persistence) needs it again.
            client.subscribe(self._subscription, options=SubscribeOptions(qos=1))
        else:
            self._call(self._succeed)

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                    properties: Properties | None) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._call(self._fail, BackendError(f"mqtt: subscribing {self._subscription} failed: {failed}"))
        else:
            self._call(self._succeed)

    def _succeed(self) -> None:
        if not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, error: BackendError) -> None:
        if self.closed:
            return
        if not self._ready.done():
            self._ready.set_exception(error)
        else:
            self.on_lost(error)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        # paho calls this before it marks itself disconnected, and would send what it holds again after
        # the reconnect: the publishes waiting for a PUBACK fail here, and paho forgets them here.
        self._sendable = False
        self._drop_unacked()
        self._call(self._set_online, False)
        if not self.closed:
            # Mosquitto 2.0.11 closes the older of two connections with one client id without a DISCONNECT
            # 0x8E, so a duplicate id looks like a network failure: both reconnect in turn. Say so.
            log.warning("mqtt.connection_lost", session=self.client_id or "publisher", reason=str(reason),
                        hint="paho reconnects; if this repeats every few seconds, another process uses this id")

    def _set_online(self, online: bool) -> None:
        self.online = online
        if online:
            self.on_connect()

    def _drop_unacked(self) -> None:
        """In paho's thread, under paho's lock on its queue: every publish handed to paho is either PUBACKed
        (on_publish) or dropped here and fails, never both, and never sent again once it failed: paho
        forgets the QoS 1 publishes it held unacked, which it would send again on the next connection."""
        mids = [message.mid for message in self._client.drop_out_messages()]
        if mids:
            self._call(self._lose, mids)

    def _lose(self, mids: list[int]) -> None:
        for mid in mids:
            future = self._pending.get(mid)
            if future is not None and not future.done():
                future.set_exception(BackendUnavailable(
                    f"mqtt: connection to {self.broker.host}:{self.broker.port} lost before the broker's PUBACK"))

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                   properties: Properties | None) -> None:
        self._call(self._resolve, mid, reason.value)

    def _resolve(self, mid: int, code: int) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(code)

    async def publish(self, topic: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The PUBACK's reason code. Refused at once without a connection, and as soon as the one it went
        out on drops: waiting for paho's reconnect would turn a prompt 503 into a slow one (a nack's
        copy that fails so leaves its message unacked: the broker sends it again after the reconnect)."""
        if self.closed:
            raise BackendUnavailable("mqtt backend is closed")
        if not (self.online and self._sendable and self._client.is_connected()):
            raise self._no_connection()
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if headers:  # openhqm's Wire headers travel as MQTT 5 user properties
            properties.UserProperty = list(headers.items())
        with ERRORS(f"publish to {topic}"):
            info = self._client.publish(topic, body, qos=1, properties=properties)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise self._no_connection()  # not sent: paho keeps it until the next connect drops it
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BackendError(f"mqtt: publish to {topic} failed: {mqtt.error_string(info.rc)}")
            # Registered before the next await, so the PUBACK callback (queued onto this loop) finds it.
            future: asyncio.Future[int] = self._loop.create_future()
            self._pending[info.mid] = future
            try:
                # Past the timeout on a live connection it may still reach the broker, as with any timeout;
                # once that connection drops, paho forgets it (_drop_unacked).
                async with asyncio.timeout(self.broker.timeout_s):
                    return await future
            finally:
                self._pending.pop(info.mid, None)

    def _no_connection(self) -> BackendUnavailable:
        return BackendUnavailable(f"mqtt: no connection to {self.broker.host}:{self.broker.port}; "
                                  f"reconnecting every {RECONNECT_DELAY_S} s")

    def puback(self, mid: int) -> bool:
        """False without a connection (paho would drop the PUBACK), and until the loop has seen on_connect
        of a new one: a PUBACK sent there would count as sent on the old one, and its re-send as new work."""
        if self.closed:
            raise BackendUnavailable(f"mqtt: session {self.client_id!r} is closed; its message comes back")
        if not (self.online and self._client.is_connected()):
            return False
        with ERRORS("send PUBACK"):
            return self._client.ack(mid, 1) == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def close(self) -> None:
        """DISCONNECT; a persistent session stays on the broker with what it holds unacked."""
        if self.closed:
            return
        self.closed = True
        Session.IN_USE.discard(self.client_id)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("mqtt backend is closed"))


def headers_of(message: mqtt.MQTTMessage) -> dict[str, str]:
    """The MQTT 5 user properties of a message; none when it came from an MQTT 3 client."""
    return dict(getattr(message.properties, "UserProperty", None) or [])
