"""The JSON shapes of a request that leave the bridge (API answers, callbacks, SSE)."""

from __future__ import annotations

from typing import Any

from openhqm.results.base import CallbackAttempt, Progress, RequestRecord
from openhqm.timefmt import rfc3339


def result_json(record: RequestRecord) -> dict[str, Any]:
    """The committed result shape, the same inline, from /response and in callbacks."""
    return {
        "correlation_id": record.correlation_id, "status": record.status, "result": record.result,
        "error": record.error, "submitted_at": rfc3339(record.submitted_at),
        "completed_at": rfc3339(record.completed_at), "processing_time_ms": record.processing_time_ms,
        "attempts": record.attempts,
    }


def status_json(record: RequestRecord) -> dict[str, Any]:
    return {
        "correlation_id": record.correlation_id, "status": record.status,
        "submitted_at": rfc3339(record.submitted_at), "updated_at": rfc3339(record.updated_at),
        "completed_at": rfc3339(record.completed_at), "attempts": record.attempts, "error": record.error,
        "session_id": record.session_id, "callback_error": record.callback_error,
        "waiting_on": record.waiting_on, "next_attempt_at": rfc3339(record.next_attempt_at),
        "callbacks": [callback_attempt_json(attempt) for attempt in record.callbacks],
        "progress": progress_json(record.progress), "replayed_from": record.replayed_from,
        **({"parent_id": record.parent_id, "member": record.member} if record.parent_id is not None else {}),
    }


def item_json(record: RequestRecord) -> dict[str, Any]:
    """A request as the console lists it: its status, and what it is for."""
    kind = record.target_kind
    return {**status_json(record), "endpoint": record.target if kind == "endpoint" else None,
            "handler": record.target if kind == "handler" else None, "priority": record.priority}


def attempt_history_json(record: RequestRecord) -> list[dict[str, Any]]:
    """Finished attempts, and the running one (no finished_at) while the request is PROCESSING."""
    entries = [{"attempt": a.attempt, "started_at": rfc3339(a.started_at), "finished_at": rfc3339(a.finished_at),
                "worker_id": a.worker_id, "status_code": a.status_code, "error": a.error,
                "duration_ms": a.duration_ms} for a in record.attempt_history]
    running = record.status == "PROCESSING" and record.started_at is not None
    if running and not any(a.attempt == record.attempts for a in record.attempt_history):
        entries.append({"attempt": record.attempts, "started_at": rfc3339(record.started_at), "finished_at": None,
                        "worker_id": record.worker_id, "status_code": None, "error": None, "duration_ms": None})
    return entries


def callback_attempt_json(attempt: CallbackAttempt) -> dict[str, Any]:
    return {"attempt": attempt.attempt, "at": rfc3339(attempt.at), "status_code": attempt.status_code,
            "error": attempt.error}


def progress_json(progress: Progress | None) -> dict[str, Any] | None:
    if progress is None:
        return None
    return {"fraction": progress.fraction, "message": progress.message, "updated_at": rfc3339(progress.updated_at)}
