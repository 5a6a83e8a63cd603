from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import OpenHQMProcess

SAMPLE_ENV = {
    "OPENHQM_WORKER__APP": "tests.e2e.sample_app:app",
    "OPENHQM_WORKER__RETRY__MAX_ATTEMPTS": "2",
    "OPENHQM_WORKER__RETRY__BASE_DELAY_S": "0.05",
    "OPENHQM_WORKER__RETRY__MAX_DELAY_S": "0.1",
    "OPENHQM_RESULTS__CLEANUP_INTERVAL_S": "3600",
    "OPENHQM_SERVER__MAX_BODY_BYTES": "4096",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenHQMProcess]:
    data_dir: Path = tmp_path_factory.mktemp("serve")
    env = {**SAMPLE_ENV, "OPENHQM_TEST_RUN_LOG": str(data_dir / "runs.log")}
    process = OpenHQMProcess("serve", data_dir, env).start()
    yield process
    process.stop()
