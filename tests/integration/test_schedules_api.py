"""/api/v1/schedules in process (tests/harness.py), and the `openhqm schedules` commands against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from openhqm.cli import cli
from openhqm.http.auth import required_scope
from tests.harness import Sample, eventually, in_process, served, settings

NIGHTLY = {"cron": "0 3 * * *", "timezone": "Europe/Berlin", "payload": {"name": "nightly"},
           "metadata": {"handler": "record"}}


async def test_schedules_from_the_api_and_the_configuration_are_listed_side_by_side(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        hourly = {"every_s": 3600, "payload": {"name": "hourly"}, "metadata": {"handler": "record"}}
        created = await hq.client.put("/api/v1/schedules/hourly", json=hourly)
        assert created.status_code == 200, created.text
        assert created.json()["source"] == "api"
        listed = {s["name"]: s for s in (await hq.client.get("/api/v1/schedules")).json()}
        assert set(listed) == {"hourly", "nightly"}
        assert listed["nightly"]["source"] == "config"
        assert listed["nightly"]["next_run_at"].endswith(("T01:00:00.000Z", "T02:00:00.000Z"))  # 03:00 in Berlin
        assert listed["hourly"]["next_run_at"].endswith(":00:00.000Z")
        assert listed["hourly"]["last_run_at"] is None
        assert (await hq.client.delete("/api/v1/schedules/hourly")).status_code == 200
        assert [s["name"] for s in (await hq.client.get("/api/v1/schedules")).json()] == ["nightly"]


async def test_run_fires_an_ordinary_request_marked_with_its_schedule(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        response = await hq.client.post("/api/v1/schedules/nightly/run")
        assert response.status_code == 202, response.text
        correlation_id = response.json()["correlation_id"]
        assert response.json()["schedule"]["last_correlation_id"] == correlation_id
        result = await hq.result(correlation_id)
        assert result["status"] == "COMPLETED"
        assert result["result"] == {"name": "nightly"}
        assert sample.ran(correlation_id) == 1


async def test_pause_stops_the_next_run_and_resume_brings_it_back(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        scheduler = hq.runtime.bridge.scheduler  # type: ignore[union-attr]
        await eventually(lambda: scheduler.started)
        paused = (await hq.client.post("/api/v1/schedules/nightly/pause")).json()
        assert (paused["paused"], paused["next_run_at"]) == (True, None)
        resumed = (await hq.client.post("/api/v1/schedules/nightly/resume")).json()
        assert resumed["paused"] is False
        assert resumed["next_run_at"] is not None


async def test_an_invalid_schedule_is_refused_like_the_configuration(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path)) as hq:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"every_s": 1, "cron": "* * * * *"}, 422, "exactly one of 'cron' and 'every_s'"),
            ({"every_s": 1, "timezone": "Mars/Olympus"}, 422, "unknown timezone"),
            ({"every_s": 1, "evry": 2}, 422, "schedules.bad.evry"),
            ({"every_s": 1, "metadata": {"handler": "missing"}}, 400, "missing"),
        ]
        for body, status, words in cases:
            response = await hq.client.put("/api/v1/schedules/bad", json=body)
            assert response.status_code == status, response.text
            assert words in response.json()["detail"]
        assert (await hq.client.get("/api/v1/schedules")).json() == []


async def test_unknown_and_configured_schedules_answer_404_and_409(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        assert (await hq.client.post("/api/v1/schedules/nope/run")).status_code == 404
        assert (await hq.client.delete("/api/v1/schedules/nope")).status_code == 404
        assert (await hq.client.delete("/api/v1/schedules/nightly")).status_code == 409
        assert (await hq.client.put("/api/v1/schedules/nightly", json={"every_s": 5})).status_code == 409


def test_the_schedules_commands_list_fire_pause_and_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    with served(Sample().app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as url:
        def openhqm(*args: str) -> Any:
            result = runner.invoke(cli, ["schedules", *args, "--url", url, "--json"])
            assert result.exit_code == 0, result.output
            # the served app logs into the same stdout: the answer is what follows the log lines
            lines = result.output.splitlines()
            start = next(i for i, line in enumerate(lines) if line.startswith(("[", "{")))
            return json.loads("\n".join(lines[start:]))

        assert [s["name"] for s in openhqm("list")] == ["nightly"]
        fired = openhqm("run", "nightly")["correlation_id"]
        assert httpx.get(f"{url}/api/v1/response/{fired}", params={"wait": 30}).json()["status"] == "COMPLETED"
        assert openhqm("pause", "nightly")["paused"] is True
        assert openhqm("list")[0]["last_correlation_id"] == fired
        assert openhqm("resume", "nightly")["paused"] is False
        missing = runner.invoke(cli, ["schedules", "run", "nope", "--url", url])
        assert missing.exit_code == 1


async def test_api_schedules_and_pauses_persist_in_the_store_across_a_restart(tmp_path: Path) -> None:
    sample = Sample()
    hourly = {"every_s": 3600, "metadata": {"handler": "record"}}
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        assert (await hq.client.put("/api/v1/schedules/hourly", json=hourly)).status_code == 200
        assert (await hq.client.post("/api/v1/schedules/nightly/pause")).status_code == 200
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        scheduler = hq.runtime.bridge.scheduler  # type: ignore[union-attr]
        await eventually(lambda: scheduler.started)
        listed = {s["name"]: s for s in (await hq.client.get("/api/v1/schedules")).json()}
        assert (listed["hourly"]["source"], listed["hourly"]["every_s"]) == ("api", 3600)
        assert (listed["nightly"]["paused"], listed["nightly"]["next_run_at"]) == (True, None)
        assert (await hq.client.delete("/api/v1/schedules/hourly")).status_code == 200
    async with in_process(sample.app, settings(tmp_path, schedules={"nightly": NIGHTLY})) as hq:
        scheduler = hq.runtime.bridge.scheduler  # type: ignore[union-attr]
        await eventually(lambda: scheduler.started)
        assert [s["name"] for s in (await hq.client.get("/api/v1/schedules")).json()] == ["nightly"]


def test_every_schedules_route_needs_the_admin_scope() -> None:
    for method, path in [("GET", "/api/v1/schedules"), ("PUT", "/api/v1/schedules/a"),
                         ("DELETE", "/api/v1/schedules/a"), ("POST", "/api/v1/schedules/a/run"),
                         ("POST", "/api/v1/schedules/a/pause"), ("POST", "/api/v1/schedules/a/resume")]:
        assert required_scope(method, path) == "admin"
