"""The environment every `openhqm` process in these tests starts with (tests/e2e/sample_app.py)."""

from __future__ import annotations

SAMPLE_ENV = {
    "OPENHQM_WORKER__APP": "tests.e2e.sample_app:app",
    "OPENHQM_WORKER__RETRY__MAX_ATTEMPTS": "2",
    "OPENHQM_WORKER__RETRY__BASE_DELAY_S": "0.05",
    "OPENHQM_WORKER__RETRY__MAX_DELAY_S": "0.1",
    "OPENHQM_RESULTS__CLEANUP_INTERVAL_S": "3600",
    "OPENHQM_SERVER__MAX_BODY_BYTES": "4096",
}
