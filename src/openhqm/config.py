"""Settings: one typed object, from defaults < YAML file < OPENHQM_* environment < CLI flags.

Unknown keys are errors everywhere (a typo must not pass silently), except environment variables
without `__`, which Kubernetes injects for a service named openhqm (OPENHQM_PORT, ...).
"""

from __future__ import annotations

import difflib
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from openhqm.constants import DEFAULT_REQUEST_QUEUE, DEFAULT_RESPONSE_QUEUE, ENV_PREFIX
from openhqm.errors import ConfigError
from openhqm.forward.settings import CallbackSettings, EndpointSettings, ProxySettings
from openhqm.settings_base import RetrySection, Section

MiB = 1024 * 1024
_FILE_DATA: ContextVar[dict[str, Any]] = ContextVar("openhqm_config_file_data", default={})  # noqa: B039


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * MiB, gt=0)
    max_wait_s: float = Field(60.0, ge=0)
    retry_after_s: int = Field(1, ge=0)
    instance_id: str | None = None


class SQLiteQueueSettings(Section):
    synchronous: Literal["normal", "full"] = "normal"
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(
        0.005, gt=0, description="fallback check for other processes' commits (they also ring a socket bell)")


class RedisQueueSettings(Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    lease_s: float = Field(30.0, gt=0)
    maxlen: int = Field(1_000_000, gt=0, description="publish refuses once a queue holds this many messages")
    max_connections: int = Field(64, gt=0, description="pool for commands; each consume() adds one blocking")


class RabbitMQSettings(Section):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_interval_s: float = Field(2.0, gt=0, description="pause between reconnect attempts")
    publish_timeout_s: float = Field(10.0, gt=0, description="wait for a reconnect plus the broker's confirm")


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("openhqm-workers", description="consumer group prefix: queue Q uses '<group_id>.Q'")
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    session_timeout_s: float = Field(45.0, gt=0, description="a silent consumer leaves the group after this")
    heartbeat_interval_s: float = Field(3.0, gt=0)
    rebalance_grace_s: float = Field(10.0, ge=0, description="rebalance waits for in-flight settles")
    request_timeout_s: float = Field(40.0, gt=0)
    create_topics: bool = Field(True, description="create <queue>, <queue>.delay, <queue>.dlq when missing")
    topic_partitions: int = Field(4, ge=1, description="partitions of the topics openhqm creates")
    topic_replication_factor: int | None = Field(None, ge=1, description="default: min(3, brokers)")
    max_buffered: int = Field(1000, ge=1, description="held back by key order or delay")


class SQSSettings(Section):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    queue_name: str | None = Field(None, description="SQS name of the request queue (else derived from it)")
    visibility_timeout_s: int = Field(30, gt=0, le=43200)
    wait_time_s: int = Field(20, ge=1, le=20, description="long-poll wait of each ReceiveMessage")
    max_receive_count: int = Field(20, ge=1, le=1000, description="redrive policy: receives before the DLQ")
    fifo: bool = Field(False, description="make every queue FIFO (names ending .fifo are FIFO anyway)")


class NATSSettings(Section):
    url: SecretStr = SecretStr("nats://127.0.0.1:4222")
    ack_wait_s: float = Field(30.0, gt=0)
    max_deliver: int = Field(20, gt=0)
    stream: str = Field("OPENHQM", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field("openhqm", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class MQTTSettings(Section):
    url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    share_group: str = Field("openhqm", description="workers subscribe as $share/<share_group>/<topic>")
    client_id: str | None = Field(
        None, description="stable, one per worker process; sessions '<client_id>-<queue>-<n>'")
    topic_prefix: str = Field("openhqm", description="queue Q is the topic '<topic_prefix>/Q'")
    session_expiry_s: int | None = Field(
        None, ge=1, le=0xFFFFFFFE, description="broker drops an absent session after this; None: never")
    create_session_on_publish: bool = Field(
        False, description="a publish nobody subscribes to creates session '<client_id>-<queue>-0' for it")
    max_held: int = Field(256, ge=1, le=60_000, description="delayed messages a consumer holds until due")
    timeout_s: float = Field(10.0, gt=0, description="connect, subscribe and publish (PUBACK) timeout")
    keepalive_s: int = Field(30, ge=5, le=65535)


class PubSubSettings(Section):
    project_id: str = "openhqm"
    emulator_host: str | None = Field(None, description="host:port; else PUBSUB_EMULATOR_HOST; else Google")
    ack_deadline_s: int = Field(60, ge=10, le=600, description="lease per extension; crash: redelivery after")
    max_delivery_attempts: int = Field(
        100, ge=5, le=100, description="subscription dead-letter policy (also makes Pub/Sub count attempts)")
    timeout_s: float = Field(30.0, gt=0, description="admin and publish calls")


class EventHubsSettings(Section):
    connection_string: SecretStr | None = None
    eventhub_name: str | None = Field(None, description="if set, must equal queue.request_queue")
    checkpoint_store: str | None = Field(None, description="only 'kafka' (consumer-group committed offsets)")
    kafka_bootstrap_servers: str | None = Field(
        None, description="instead of <namespace>.servicebus.windows.net:9093 (tests: a local Kafka)")
    security_protocol: Literal["SASL_SSL", "PLAINTEXT"] = Field(
        "SASL_SSL", description="PLAINTEXT only for a local Kafka standing in for Event Hubs")


class QueueSettings(Section):
    type: str = "sqlite"
    request_queue: str = DEFAULT_REQUEST_QUEUE
    response_queue: str = DEFAULT_RESPONSE_QUEUE
    sqlite: SQLiteQueueSettings = SQLiteQueueSettings()
    redis: RedisQueueSettings = RedisQueueSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    kafka: KafkaSettings = KafkaSettings()
    sqs: SQSSettings = SQSSettings()
    nats: NATSSettings = NATSSettings()
    mqtt: MQTTSettings = MQTTSettings()
    pubsub: PubSubSettings = PubSubSettings()
    eventhubs: EventHubsSettings = EventHubsSettings()
    options: dict[str, Any] = Field(default_factory=dict, description="for third-party backends")


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


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["json", "console", "auto"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


Scope = Literal["submit", "read", "admin"]


def _default_scopes() -> list[Scope]:
    return ["submit", "read"]


class ApiKeySettings(Section):
    name: str
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key")
    scopes: list[Scope] = Field(default_factory=_default_scopes)


class JWTSettings(Section):
    algorithm: Literal["HS256", "RS256"] = "HS256"
    key: SecretStr | None = Field(None, description="HS256 secret, or RS256 public key (PEM)")
    jwks_file: Path | None = None
    audience: str | None = None
    issuer: str | None = None


class AuthSettings(Section):
    """Client access control; off unless api_keys or jwt is configured."""

    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    jwt: JWTSettings | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.jwt is not None


class TracingSettings(Section):
    enabled: bool = False
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP base URL; default from OTEL_EXPORTER_OTLP_*")


class IdempotencySettings(Section):
    window_s: float = Field(86400.0, gt=0)


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
    proxy: ProxySettings = ProxySettings()
    callbacks: CallbackSettings = CallbackSettings()

    @model_validator(mode="after")
    def _forwarding_concurrency(self) -> Settings:
        # A forwarded job mostly waits on its backend: 16 slots would make the bridge, not the
        # backend, the bottleneck of a slow service. The endpoint's max_concurrency protects it.
        if self.proxy.enabled and "concurrency" not in self.worker.model_fields_set:
            self.worker = self.worker.model_copy(update={"concurrency": PROXY_CONCURRENCY})
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


def _describe(error: Any, source: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown setting '{loc}'"
    value: Any = source
    for part in error["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    env_name = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
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
        problems = "; ".join(_describe(e, init) for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
    finally:
        _FILE_DATA.reset(token)


SECRET_MASK = "**********"


def mask_url(url: str) -> str:
    """Hide the password in a URL for display, as kombu's as_uri(mask=...) does."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1" + SECRET_MASK + "@", url)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret masked."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            # A plain URL keeps its shape with the password masked; anything else (connection
            # strings with SharedAccessKey=..., tokens) is masked whole.
            is_url = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^;\s]*$", secret) is not None
            return mask_url(secret) if is_url else SECRET_MASK
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result: dict[str, Any] = walk(settings)
    return result
