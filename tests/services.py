"""Finding the real services tests talk to: skip locally with a reason, fail under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from urllib.parse import urlparse

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

DEFAULTS = {
    "redis": ("OPENHQM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "rabbitmq": ("OPENHQM_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "kafka": ("OPENHQM_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
    "sqs": ("OPENHQM_TEST_SQS_ENDPOINT", "http://127.0.0.1:5055"),
    "nats": ("OPENHQM_TEST_NATS_URL", "nats://127.0.0.1:4222"),
    "mqtt": ("OPENHQM_TEST_MQTT_URL", "mqtt://127.0.0.1:1883"),
    "pubsub": ("OPENHQM_TEST_PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
    "postgres": ("OPENHQM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
}


def service_address(name: str) -> str:
    variable, default = DEFAULTS[name]
    return os.environ.get(variable, default)


def host_port(address: str) -> tuple[str, int]:
    if "://" not in address:
        address = "tcp://" + address
    parsed = urlparse(address)
    return parsed.hostname or "127.0.0.1", parsed.port or 0


def port_answers(address: str, timeout_s: float = 1.0) -> bool:
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_service(name: str) -> str:
    """The service's address; skips the test when absent, or fails it when CI=true."""
    address = service_address(name)
    if not port_answers(address):
        message = f"{name} is not reachable at {address} (start it with scripts/brokers up)"
        if IN_CI:
            pytest.fail(message + "; CI=true requires every broker", pytrace=False)
        pytest.skip(message)
    return address


def require_chromium() -> str:
    """Debian's Chromium for the browser tests (never a downloaded one); skips when absent, fails
    under CI=true (scripts/test installs it there)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "chromium or playwright is missing (apt-get install -y chromium; pip install 'openhqm[test]')"
        if IN_CI:
            pytest.fail(message + "; CI=true requires the browser tests", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port free a moment ago: racy (another process may bind it first). Only for what cannot bind
    0 and report back: a worker's health port (0 turns it off), a broker address meant to refuse."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
