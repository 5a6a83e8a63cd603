"""Brokers and stores of the chaos tests' own, on ports of their own, which a test may kill with SIGKILL
and start again (never the machine's shared ones, which other tests use meanwhile).

A broker that cannot report a port it bound as 0 gets one reserved by binding 127.0.0.1:0 and
releasing it right before the broker starts (`tests.services.free_port`): the one accepted race here
(another process could take the port in between; the start then fails loudly, it does not hang).
A restart reuses the port the killed process held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.services import free_port, port_answers, require_service
from tests.tcp_proxy import CuttableProxy

START_TIMEOUT_S = 30.0


class OwnBroker(ABC):
    """One broker the test owns: `start()`, `kill()` (SIGKILL, as a crash), `start()` again."""

    name: str

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def kill(self) -> None: ...

    async def stop(self) -> None:
        await self.kill()

    async def remove_queues(self, names: list[str]) -> None:  # noqa: B027 - a no-op by design
        """Delete what a test made on a shared broker; a broker of the test's own goes away whole."""


class BrokerProcess(OwnBroker):
    """A broker binary run as a child process, with its data in `data_dir` (kept across restarts)."""

    binary: str

    def __init__(self, data_dir: Path) -> None:
        if shutil.which(self.binary) is None:
            pytest.skip(f"{self.binary} is not installed (scripts/brokers-up BROKERS_INSTALL=1 installs it)")
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = data_dir / f"{self.name}.log"

    @abstractmethod
    def command(self) -> list[str]: ...

    def prepare(self) -> None:
        """One-time set-up before the first start (a config file, a database cluster)."""

    def user(self) -> str | None:
        return None  # the test's own user

    async def start(self) -> None:
        """Start, and start again while it exits at once: after a SIGKILL a broker may find the last
        process's leftovers for a moment (PostgreSQL's orphaned backends still attached to its memory)."""
        if self.proc is None:
            self.prepare()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with self.log_path.open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, user=self.user(),
                    start_new_session=True)
            while not port_answers(f"127.0.0.1:{self.port}", timeout_s=0.5) and self.proc.returncode is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer on {self.port}:\n{self.log_path.read_text()}")
                await asyncio.sleep(0.05)  # a starting broker offers nothing to wait on but its port
            if self.proc.returncode is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} exited on start:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.2)  # the killed process's leftovers are going away; nothing to wait on

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()


class OwnRedis(BrokerProcess):
    """Redis with an append-only file: a write is in the file before its reply, so a killed process
    (not a lost machine) loses nothing it acknowledged."""

    name = "redis"
    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]


class OwnNATS(BrokerProcess):
    name = "nats"
    binary = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir / "js")]


class OwnMosquitto(BrokerProcess):
    """Mosquitto persisting its sessions after every change: its store is written only at autosave,
    so without this a SIGKILL loses every queued message (the broker's durability, not openhqm's)."""

    name = "mosquitto"
    binary = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        (self.data_dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.data_dir}/\nautosave_interval 1\nautosave_on_changes true\n"
            "max_queued_messages 0\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.data_dir / "mosquitto.conf")]


class OwnPostgres(BrokerProcess):
    """A database cluster of its own (initdb into the tmp dir), run as user postgres when the test runs
    as root (PostgreSQL refuses root)."""

    name = "postgres"
    binary = "pg_ctl"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __init__(self, data_dir: Path) -> None:
        # Its own directory outside pytest's (which only the test's user may enter), owned by the server's user.
        super().__init__(Path(tempfile.mkdtemp(prefix="openhqm-chaos-postgres-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "postgres.log"
        if (owner := self.user()) is not None:
            entry = pwd.getpwnam(owner)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def prepare(self) -> None:
        owner = self.user()
        subprocess.run(["initdb", "-D", str(self.data_dir / "db"), "-U", "postgres", "--auth=trust", "-N"],
                       check=True, capture_output=True, user=owner, cwd=self.data_dir)

    def command(self) -> list[str]:
        # `postgres` itself rather than pg_ctl, so the child PID is the server's and SIGKILL reaches it.
        return [str(Path(shutil.which("initdb") or "initdb").resolve().parent / "postgres"),
                "-D", str(self.data_dir / "db"), "-p", str(self.port), "-k", str(self.data_dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]

    async def stop(self) -> None:
        await super().stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ProxiedRabbitMQ(OwnBroker):
    """RabbitMQ through a TCP proxy the test controls: a second RabbitMQ node does not start here in
    time (a node boots in 25 s or more on this machine), so the outage is the proxy going away: every
    connection aborted and the port refusing, as a killed broker looks from openhqm's side. What the
    broker itself keeps across a crash is not what this tests."""

    name = "rabbitmq"

    def __init__(self) -> None:
        self.target = require_service("rabbitmq")
        host, port = self.target.split("@")[-1].rstrip("/").split(":")
        self.proxy = CuttableProxy(host, int(port))

    @property
    def url(self) -> str:
        return self.target.replace(self.target.split("@")[-1].rstrip("/"), self.proxy.address)

    async def start(self) -> None:
        await self.proxy.start()

    async def kill(self) -> None:
        await self.proxy.stop()

    async def remove_queues(self, names: list[str]) -> None:
        connection = await aio_pika.connect(self.target)
        async with connection:
            channel = await connection.channel()
            for name in names:  # deleting a missing queue is not an error
                await channel.queue_delete(name, if_unused=False, if_empty=False)


@contextlib.asynccontextmanager
async def running(broker: OwnBroker) -> AsyncIterator[OwnBroker]:
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()


