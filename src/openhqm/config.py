"""Settings: one typed object, from defaults < YAML file < OPENHQM_* environment < CLI flags.

Unknown keys are errors everywhere (a typo must not pass silently), except environment variables
without `__`, which Kubernetes injects for a service named openhqm (OPENHQM_PORT, ...).
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from openhqm.backends import registry
from openhqm.constants import DEFAULT_REQUEST_QUEUE, DEFAULT_RESPONSE_QUEUE, ENV_PREFIX
from openhqm.errors import ConfigError, MissingDependency
from openhqm.fanout import check_groups
from openhqm.flow.limits import FlowSettings
from openhqm.forward.settings import CallbackSettings, EndpointSettings, ProxySettings
from openhqm.http.auth_settings import ApiKeySettings as ApiKeySettings  # re-exported: public names
from openhqm.http.auth_settings import AuthSettings
from openhqm.http.auth_settings import JWTSettings as JWTSettings
from openhqm.http.server_settings import ServerSettings as ServerSettings  # re-exported: public name
from openhqm.redact import redacted as redacted  # re-exported: config_sources and the CLI read it here
from openhqm.schedules import ScheduleSettings
from openhqm.settings_base import RetrySection, Section

_FILE_DATA: ContextVar[dict[str, Any]] = ContextVar("openhqm_config_file_data", default={})  # noqa: B039


M = TypeVar("M", bound=BaseModel)
def _backend_section(name: str, value: Any, selected: str) -> Any:
    """Validate `queue.<name>` with the options model of backend `name` (importing that backend);
    `selected` (queue.type) may be a `module:Class` whose `name` is `name`.

    A section for a backend whose client library is missing is kept as given: it is validated
    when that backend is created, which then names the extra to install."""
    try:
        if registry.is_backend_name(name):
            model = registry.options_model(name)
        elif ":" in selected and getattr(registry.get_backend_class(selected), "name", None) == name:
            model = registry.options_model(selected)
        else:
            raise PydanticCustomError(
                "unknown_backend", "unknown setting 'queue.{name}' (no backend of that name{hint})",
                {"name": name, "hint": registry.did_you_mean(name)})
    except MissingDependency:
        return value
    if model is None or isinstance(value, model):
        return value
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as exc:
        problems = _problems(exc, value, ("queue", name))
        raise PydanticCustomError("backend_options", "{problems}", {"problems": problems}) from None


class QueueSettings(Section):
    """`type` picks the backend; `queue.<backend name>.*` holds each backend's own options, validated
    by the options model the backend declares (backends/base.py `BackendOptions`)."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    type: str = "sqlite"
    request_queue: str = DEFAULT_REQUEST_QUEUE
    response_queue: str = DEFAULT_RESPONSE_QUEUE
    max_pending: int | None = Field(None, gt=0, description="503 (queue full) while this many requests wait")
    options: dict[str, Any] = Field(
        default_factory=dict, description="free-form options of a third-party backend that declares no model")

    @model_validator(mode="after")
    def _backend_sections(self) -> QueueSettings:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for name in list(extra):
            extra[name] = _backend_section(name, extra[name], self.type)
        if self.type not in extra and self.type in registry.BACKEND_ALIASES:
            # The selected backend's defaults, so `config check` shows every option in force.
            with contextlib.suppress(MissingDependency):
                extra[self.type] = _backend_section(self.type, {}, self.type)
        self.__pydantic_extra__ = extra
        return self

    def options_for(self, name: str, model: builtins.type[M]) -> M:
        """Backend `name`'s options: as configured under `queue.<name>`, else the defaults."""
        value = (self.__pydantic_extra__ or {}).get(name)
        if isinstance(value, model):
            return value
        try:
            return model.model_validate(value if isinstance(value, dict) else {})
        except ValidationError as exc:
            raise ConfigError(f"invalid configuration: {_problems(exc, value, ('queue', name))}") from None


class ResultsRedisSettings(Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    prefix: str = Field("openhqm", min_length=1, description="namespace of every key and the pub/sub channel")


class ResultsPostgresSettings(Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    table: str = Field("openhqm_requests", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,49}$",
                       description="request table; also names <table>_dead_letters and the NOTIFY channel")


FinishedStatus = Literal["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]


class ResultsSettings(Section):
    type: str = "sqlite"
    ttl_s: float = Field(86400.0, gt=0)
    ttl_by_status: dict[FinishedStatus, float] = Field(
        default_factory=dict, description="per finished state, overrides ttl_s (e.g. keep FAILED longer)")
    cleanup_interval_s: float = Field(60.0, gt=0)

    def retention(self) -> list[tuple[float, list[str]]]:
        """(ttl_s, statuses) pairs that together cover every finished state once."""
        rest = [s for s in ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED") if s not in self.ttl_by_status]
        pairs: list[tuple[float, list[str]]] = [(ttl, [str(status)]) for status, ttl in self.ttl_by_status.items()]
        return [*pairs, (self.ttl_s, rest)] if rest else pairs

    @property
    def longest_ttl_s(self) -> float:
        return max([self.ttl_s, *self.ttl_by_status.values()])
    redis: ResultsRedisSettings = ResultsRedisSettings()
    postgres: ResultsPostgresSettings = ResultsPostgresSettings()


class RetrySettings(RetrySection):
    """`worker.retry` and a handler's `retry=`: `policy()` is the RetryPolicy the worker applies."""


PROXY_CONCURRENCY: int = EndpointSettings.model_fields["max_concurrency"].default


class WorkerSettings(Section):
    concurrency: int = Field(16, ge=1, description=f"jobs at once; {PROXY_CONCURRENCY} in proxy mode unless set")
    prefetch: int = Field(32, ge=1)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    default_handler: str = "echo"
    default_timeout_s: float = Field(300.0, gt=0)
    max_timeout_s: float = Field(3600.0, gt=0)
    retry: RetrySettings = RetrySettings()
    health_port: int | None = Field(None, ge=0, le=65535, description="worker /health, /ready, /metrics")
    min_concurrency: int | None = Field(None, ge=1, description="autoscaling floor (with max_concurrency)")
    max_concurrency: int | None = Field(None, ge=1, description="autoscaling ceiling (with min_concurrency)")
    idle_exit_s: float | None = Field(None, gt=0, description="`openhqm worker` exits after this long idle")
    app: str | None = Field(None, description="module:attribute of an OpenHQM app whose handlers to load")
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="how often each worker process writes its heartbeat to the result store "
                               "(GET /api/v1/workers; gone after three silent intervals)")
    eager_dispatch: bool = Field(
        True, description="`openhqm serve`: a submit that finds a free worker slot writes its message already "
                          "leased and hands it over in memory, not through the queue (where the queue supports "
                          "it: SQLite)")


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["json", "console", "auto"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class TracingSettings(Section):
    enabled: bool = False
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP base URL; default from OTEL_EXPORTER_OTLP_*")


class IdempotencySettings(Section):
    window_s: float = Field(86400.0, gt=0)


class ConsoleSettings(Section):
    """The operator console at /console (docs/console.md); it uses only the public API."""

    enabled: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("./openhqm-data")
    server: ServerSettings = ServerSettings()
    queue: QueueSettings = QueueSettings()
    results: ResultsSettings = ResultsSettings()
    worker: WorkerSettings = WorkerSettings()
    logging: LoggingSettings = LoggingSettings()
    ordering: Literal["none", "session"] = "none"
    tracing: TracingSettings = TracingSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    auth: AuthSettings = AuthSettings()
    console: ConsoleSettings = ConsoleSettings()
    proxy: ProxySettings = ProxySettings()
    callbacks: CallbackSettings = CallbackSettings()
    schedules: dict[str, ScheduleSettings] = {}
    flow: FlowSettings = FlowSettings()
    fanout: dict[str, list[str]] = Field({}, description="group -> members: 'endpoint:<name>' or 'handler:<name>'")

    @field_validator("fanout")
    @classmethod
    def _fanout_members(cls, value: dict[str, list[str]], info: Any) -> dict[str, list[str]]:
        return check_groups(value, info.data.get("proxy"))

    @model_validator(mode="after")
    def _forwarding_concurrency(self) -> Settings:
        # A forwarded job mostly waits on its backend: 16 slots would make the bridge, not the
        # backend, the bottleneck of a slow service. The endpoint's max_concurrency protects it.
        if self.proxy.enabled and "concurrency" not in self.worker.model_fields_set:
            self.worker = self.worker.model_copy(update={"concurrency": PROXY_CONCURRENCY})
        return self

    @model_validator(mode="after")
    def _flow_endpoints(self) -> Settings:
        endpoints = self.proxy.all_endpoints() if self.proxy.enabled else {}
        for name, limit in self.flow.limits.items():
            if limit.endpoint is not None and limit.endpoint not in endpoints:
                known = ", ".join(sorted(endpoints)) or "none (proxy is off or has no endpoints)"
                raise ValueError(f"flow.limits.{name}.endpoint names no endpoint: {limit.endpoint!r}; valid: {known}")
        return self

    @model_validator(mode="after")
    def _processes_share_state(self) -> Settings:
        # N processes are N listeners and N worker pools: they must see one queue and one store.
        if self.server.processes > 1:
            alone = [f"{part}.type memory" for part, kind in (("queue", self.queue.type),
                                                               ("results", self.results.type)) if kind == "memory"]
            if alone:
                raise PydanticCustomError(
                    "not_shared", "setting 'server.processes' (got {processes}): with {alone} each process would "
                    "keep its own requests, unseen by the others; use sqlite (the default), redis or postgres",
                    {"processes": self.server.processes, "alone": " and ".join(alone)})
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLI flags (init) beat the environment, which beats the YAML file.
        yaml_source = InitSettingsSource(settings_cls, init_kwargs=_FILE_DATA.get())
        return (init_settings, env_settings, yaml_source)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(value: Any, where: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in YAML strings, so secrets can stay in the environment."""
    if isinstance(value, dict):
        return {k: _substitute(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable ${{{name}}} is not set")

    return _VAR.sub(replace, value)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    substituted: dict[str, Any] = _substitute(data, "")
    return substituted


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _known_paths(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel] | None]:
    paths: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths[path] = annotation
            paths.update(_known_paths(annotation, path + "__"))
        else:
            paths[path] = None
    return paths


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Reject OPENHQM_A__B variables that name no setting: they are typos, not Kubernetes noise."""
    environ = dict(os.environ) if environ is None else environ
    known = _known_paths(Settings)
    # Backend sections are validated by their backend's options model, with its own "did you mean".
    known.update({f"queue__{name}": None for name in registry.backend_names()})
    for name in environ:
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower()
        parts = path.split("__")
        # A value inside a free-form mapping (queue.options, proxy endpoints) cannot be checked here.
        if any(known.get("__".join(parts[:i])) is None and "__".join(parts[:i]) in known
               for i in range(1, len(parts))):
            continue
        if path not in known:
            hint = difflib.get_close_matches(path, known, n=1)
            suggestion = f"; did you mean {ENV_PREFIX}{hint[0].upper()}?" if hint else ""
            raise ConfigError(f"environment variable {name} names no setting{suggestion}")


def _problems(exc: ValidationError, source: Any, prefix: tuple[str, ...] = ()) -> str:
    """Every problem of `exc` naming its key; `source` holds the values given under `prefix`."""
    return "; ".join(_describe(error, source, prefix) for error in exc.errors())


def _describe(error: Any, source: Any, prefix: tuple[str, ...]) -> str:
    parts = [*prefix, *(str(part) for part in error["loc"])]
    loc = ".".join(parts)
    if error["type"] == "extra_forbidden":
        return f"unknown setting '{loc}'"
    if error["type"] in ("unknown_backend", "backend_options", "not_shared"):  # they name their keys themselves
        return str(error["msg"])
    value: Any = source
    for part in error["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    env_name = ENV_PREFIX + "__".join(parts).upper()
    where = ""
    if value is None and env_name in os.environ:
        value, where = os.environ[env_name], f" from {env_name}"
    secret = any(word in loc for word in ("secret", "password", "token", "key", "url", "dsn", "auth"))
    # Mappings and lists may hold credentials under any name: name the key, never echo them.
    plain = value is not None and not isinstance(value, dict | list) and not secret
    shown = f" (got {value!r}{where})" if plain else where
    return f"setting '{loc}'{shown}: {error['msg']}"


def load_settings(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build Settings from every source, raising ConfigError that names the key, value and problem."""
    check_environment()
    path = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    file_data = read_yaml(Path(path)) if path else {}
    init = _deep_merge(file_data, overrides or {})
    token = _FILE_DATA.set(file_data)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_problems(exc, init)}") from exc
    finally:
        _FILE_DATA.reset(token)
