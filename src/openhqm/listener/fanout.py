"""Fan-out: one submit (`metadata.fanout: "<group>"`) becomes a parent request and one child per
member of `fanout.<group>`; the parent ends when its last child does.

The parent is never queued. Each child is an ordinary request for its member (own correlation id,
attempts, retries, dead letter) naming its parent (`parent_id`, `member`). Whichever process stores
a child's terminal state (listener/replies.py `apply`, the one place replies and dead letters end
requests, and a cancel) settles the parent: it reads every child after its own write, and when all
are terminal moves the parent with the store's transition (allowed from any unfinished state), so
among children finishing together in several listeners exactly one completes it. The parent's
result is computed from the children's records at that point; its waiters and callback fire as
for any request, since the move is an ordinary transition.

Replaying a failed child (its dead letter, or the finished request) re-opens the parent
(PROCESSING again, its result cleared, the member now answered by the new request) before the new
child is queued; replaying a finished parent replays the members that did not complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from openhqm.constants import Status
from openhqm.envelope import Envelope, decode_envelope, encode, new_id
from openhqm.errors import Conflict, RequestRejected
from openhqm.fanout import split_member
from openhqm.listener.intake import Intake, new_record
from openhqm.logging import get_logger
from openhqm.results.base import RequestRecord, ResultStore
from openhqm.results.records import FanoutChild

log = get_logger("openhqm.listener")

GROUP_KEY = "fanout"  # the metadata key naming the group, kept on the parent's envelope only
_CANCELLABLE = (Status.PENDING, Status.SCHEDULED, Status.RETRY, Status.PROCESSING)
_REOPENABLE = (Status.COMPLETED, Status.FAILED)  # a cancelled or expired parent stays so

Callback = Callable[[RequestRecord], None]


class FanOut:
    def __init__(self, groups: Mapping[str, list[str]], intake: Intake, store: ResultStore,
                 on_finished: Callback) -> None:
        self.groups = groups
        self.intake = intake
        self.store = store
        self.on_finished = on_finished  # the parent's callback (listener/replies.py)

    def members(self, group: str) -> list[str]:
        """The members of `group`; 422 naming it when no such group is configured."""
        members = self.groups.get(group)
        if members is None:
            valid = ", ".join(sorted(self.groups)) or "none configured"
            raise RequestRejected(f"metadata.fanout names no fan-out group: {group!r} (groups: {valid})",
                                  status=422)
        return members

    async def submit(self, envelope: Envelope, request_hash: str | None,
                     idempotency_key: str | None = None) -> RequestRecord:
        """Create the parent, then queue one child per member; nothing is left behind when the
        broker refuses one (the parent is removed, the children already queued are cancelled)."""
        group = envelope.metadata.get(GROUP_KEY)
        if not isinstance(group, str):
            raise RequestRejected("the request names no endpoint, handler or fan-out group", status=422)
        members = self.members(group)
        now = time.time()
        children = [FanoutChild(member=member, correlation_id=new_id()) for member in members]
        parent = msgspec.structs.replace(
            new_record(envelope, now, request_hash), status=Status.PROCESSING, target=f"fanout:{group}",
            children=children, waiting_on=None, next_attempt_at=None, idempotency_key=idempotency_key)
        try:  # kept with the parent for the console's detail and a replay of its failed members
            message = encode(envelope)
        except (TypeError, OverflowError, UnicodeEncodeError, ValueError) as exc:
            raise RequestRejected(f"the request cannot be queued: {exc}", status=422) from None
        await self.store.create(parent, message)  # AlreadyExists settles concurrent idempotent repeats
        queued: list[str] = []
        try:
            for child in children:
                await self.intake.submit_child(self._child_envelope(envelope, child.member, child.correlation_id),
                                               parent.correlation_id, child.member)
                queued.append(child.correlation_id)
        except BaseException:
            await self._undo(parent.correlation_id, queued)
            raise
        self.store.emit(parent)
        log.info("fan-out queued", correlation_id=parent.correlation_id, group=group, children=len(children))
        return parent

    @staticmethod
    def _child_envelope(parent: Envelope, member: str, correlation_id: str) -> Envelope:
        """The parent's envelope routed to `member`: no callback of its own, no group."""
        endpoint, handler = split_member(member)
        metadata = {k: v for k, v in parent.metadata.items() if k != GROUP_KEY}
        return msgspec.structs.replace(parent, id=correlation_id, correlation_id=correlation_id, endpoint=endpoint,
                                       handler=handler, callback_url=None, metadata=metadata)

    async def _undo(self, parent_id: str, queued: list[str]) -> None:
        try:
            await self.store.delete(parent_id)  # first: a cancelled child then finds no parent to settle
            for correlation_id in queued:
                await self.store.transition(correlation_id, Status.CANCELLED, allowed_from=_CANCELLABLE,
                                            error="its fan-out could not be queued whole")
        except Exception as exc:
            log.warning("a refused fan-out could not be undone whole", correlation_id=parent_id, error=str(exc))

    async def child_finished(self, correlation_id: str, record: RequestRecord | None) -> None:
        """After a child's terminal state is stored (`record`), or a repeated reply was refused
        (None: the first may have stopped before settling, so settle from the stored record)."""
        if record is None:
            record = await self.store.get(correlation_id)
            if record is None:
                return
        if record.parent_id is not None and record.terminal:
            await self.settle(record.parent_id)

    async def settle(self, parent_id: str) -> RequestRecord | None:
        """End the parent once every child is terminal: exactly one caller's transition wins."""
        parent = await self.store.get(parent_id)
        if parent is None or parent.terminal or not parent.children:
            return None
        records = [(child, await self.store.get(child.correlation_id)) for child in parent.children]
        if any(record is not None and not record.terminal for _, record in records):
            return None
        members = {child.member: member_result(child, record) for child, record in records}
        failed = [child.member for child, record in records if record is None or record.status != Status.COMPLETED]
        done = await self.store.transition(
            parent_id, Status.FAILED if failed else Status.COMPLETED, result={"members": members},
            error=f"fan-out members did not complete: {', '.join(failed)}" if failed else None,
            attempts=1, processing_time_ms=(time.time() - parent.submitted_at) * 1000)
        if done is not None:
            log.info("fan-out finished", correlation_id=parent_id, status=done.status)
            self.on_finished(done)
        return done

    async def children(self, parent: RequestRecord) -> list[dict[str, Any]]:
        """The parent's status JSON `children`: each member's current request and its state."""
        shown = []
        for child in parent.children:
            record = await self.store.get(child.correlation_id)
            shown.append({"member": child.member, "correlation_id": child.correlation_id,
                          "status": record.status if record is not None else None})
        return shown

    async def cancelled(self, record: RequestRecord) -> None:
        """After a cancel: a parent's unfinished children go with it; a child's parent may now be done."""
        if record.children:
            await self.cancel_children(record)
        elif record.parent_id is not None:
            await self.settle(record.parent_id)

    async def cancel_children(self, parent: RequestRecord) -> None:
        """A cancelled parent's unfinished children are cancelled too (a running one by its worker)."""
        for child in parent.children:
            await self.store.transition(child.correlation_id, Status.CANCELLED, allowed_from=_CANCELLABLE,
                                        error="its fan-out request was cancelled")

    async def replay_child(self, original_id: str, envelope: Envelope) -> RequestRecord | None:
        """Queue `envelope` (a replay of request `original_id`: its dead letter, or the finished
        request) as its parent's new child for the same member, re-opening the parent; None when
        `original_id` is no fan-out child its parent still counts on (then it is an ordinary replay)."""
        original = await self.store.get(original_id)
        if original is None or original.parent_id is None:
            return None
        parent = await self.store.get(original.parent_id)
        if parent is None or all(c.correlation_id != original_id for c in parent.children) or (
                parent.terminal and parent.status not in _REOPENABLE):
            return None
        return (await self._replace(parent, {original_id: envelope}))[0]

    async def replay_failed(self, parent: RequestRecord) -> RequestRecord:
        """Replay a finished parent: a new child for each member that did not complete (built from
        the parent's submitted envelope), the parent re-opened; 409 when every member completed."""
        if parent.status not in _REOPENABLE:
            raise Conflict(f"fan-out request {parent.correlation_id} is {parent.status}: it is not replayed")
        message = await self.store.get_envelope(parent.correlation_id)
        if message is None:
            raise Conflict(f"fan-out request {parent.correlation_id} has no stored body to replay")
        envelope = decode_envelope(message)
        failed = [c for c in parent.children
                  if (record := await self.store.get(c.correlation_id)) is None or record.status != Status.COMPLETED]
        if not failed:
            raise Conflict(f"every member of fan-out request {parent.correlation_id} completed: nothing to replay")
        await self._replace(parent, {c.correlation_id: self._child_envelope(envelope, c.member, new_id())
                                     for c in failed})
        return await self.store.get(parent.correlation_id) or parent

    async def _replace(self, parent: RequestRecord, envelopes: dict[str, Envelope]) -> list[RequestRecord]:
        """Re-open `parent` with the children `envelopes` replace (by the old child's id), then queue
        them; a member whose new child could not be queued keeps its old one, and the parent ends
        again at once if nothing else runs."""
        children = [FanoutChild(member=c.member, correlation_id=envelopes[c.correlation_id].correlation_id)
                    if c.correlation_id in envelopes else c for c in parent.children]
        await self._reopen(parent, children)
        queued: list[RequestRecord] = []
        try:
            for old in parent.children:
                if old.correlation_id in envelopes:
                    queued.append(await self.intake.submit_child(
                        envelopes[old.correlation_id], parent.correlation_id, old.member,
                        replayed_from=old.correlation_id))
        except BaseException:
            done = {record.correlation_id for record in queued}
            kept = [new if new.correlation_id in done or old.correlation_id not in envelopes else old
                    for old, new in zip(parent.children, children, strict=True)]
            await self.store.amend(parent.correlation_id, Status.PROCESSING, children=kept)
            await self.settle(parent.correlation_id)
            raise
        log.info("fan-out re-opened", correlation_id=parent.correlation_id,
                 children=[record.correlation_id for record in queued])
        return queued

    async def _reopen(self, parent: RequestRecord, children: list[FanoutChild]) -> None:
        if parent.terminal:
            reopened = await self.store.transition(
                parent.correlation_id, Status.PROCESSING, allowed_from=_REOPENABLE, children=children,
                result=None, error=None, completed_at=None, processing_time_ms=None)
        else:
            reopened = await self.store.amend(parent.correlation_id, parent.status, children=children)
        if reopened is None:
            raise Conflict(f"fan-out request {parent.correlation_id} changed while its child was replayed; retry")


def member_result(child: FanoutChild, record: RequestRecord | None) -> Any:
    """A member's entry in the parent's result: the child's result when it completed, else what
    ended it (`{"status", "error", "correlation_id"}`)."""
    if record is not None and record.status == Status.COMPLETED:
        return record.result
    return {"status": record.status if record is not None else Status.FAILED,
            "error": (record.error if record is not None else "the child request is gone"),
            "correlation_id": child.correlation_id}
