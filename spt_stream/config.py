"""Engine configuration: frozen pydantic-settings models.

Precedence, highest first: keyword arguments (CLI options) > ``SPT_*`` environment variables
(nested with ``__``, e.g. ``SPT_KAFKA__BOOTSTRAP_SERVERS``) > a user YAML file (``--config``) >
the packaged defaults in ``spt_stream/configs/engine.yaml`` > the field defaults below. Each
layer is a pydantic-settings source (:meth:`EngineSettings.settings_customise_sources`), and the
library deep-merges them in that order: a layer overrides only the keys it sets.
:class:`EnvironmentSource` is the one place the environment is read, the Tiled API key's
``SPT_TILED_API_KEY`` included; :func:`load_settings` names the YAML files.

Secrets (Kafka SASL password, Tiled API key) are :class:`pydantic.SecretStr`: they never appear
in ``repr``, logs or the config snapshot written into trace stores
(:meth:`EngineSettings.public_dump`).
Settings are validated once, at construction; nothing downstream re-validates per frame.

One module: every settings model, its YAML/env/CLI sources and their precedence, so the whole
configuration schema reads in one place (docs/CONTRACTS.md points here).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from spt_stream.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_ENGINE_YAML = CONFIG_DIR / "engine.yaml"
PROFILE_DIR = CONFIG_DIR / "profiles"

__all__ = [
    "CONFIG_DIR",
    "TILED_API_KEY_ENV",
    "AssemblySettings",
    "BatchSettings",
    "DeadLetterSettings",
    "EngineSettings",
    "FeedbackSettings",
    "KafkaSettings",
    "NormalizationSettings",
    "TiledSettings",
    "TrackingSettings",
    "ZarrSettings",
    "load_settings",
    "read_yaml",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """Kafka consumer settings. Defaults are the low-latency ones measured against the development
    broker (docs/BENCHMARKS.md)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    #: Topic names; an entry starting with ``^`` is a regular expression (subscribe by pattern).
    topics: tuple[str, ...] = ("local.bluesky.runengine.documents",)
    #: Consumer group; ``None`` means explicit partition assignment with no group.
    group_id: str | None = "spt-stream"
    #: Explicit assignment ``topic:partition`` entries (used when ``group_id`` is None;
    #: empty = every partition of the topics).
    partitions: tuple[str, ...] = ()
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_max_wait_ms: int = Field(10, ge=0)
    max_poll_records: int = Field(5000, ge=1)
    max_partition_fetch_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    #: Longest wait of one ``poll``. Keep it short: kafka-python 3.0 sometimes misses the
    #: wake-up when a fetch response arrives and returns only at the poll's timeout, so a
    #: frame waits up to this long (measured on the development broker at 10 messages/s: ~1 %
    #: of messages ~105 ms late with 100, none above 26 ms with 20; docs/BENCHMARKS.md). While
    #: a group member holds no partition (joining, rebalancing) the source polls at least
    #: 500 ms: shorter polls cut kafka-python's group join short and it re-joins forever.
    poll_timeout_ms: int = Field(20, ge=0)
    #: The first connection: give up (``BrokerError``, ``spt-stream run`` exits 1) when no broker
    #: has answered within this many seconds. Later outages are retried without limit.
    connect_timeout_s: float = Field(120.0, gt=0.0)
    reconnect_backoff_ms: int = Field(200, ge=1)
    reconnect_backoff_max_ms: int = Field(10_000, ge=1)
    request_timeout_ms: int = Field(30_000, ge=1000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_id: str = "spt-stream"

    def security_kwargs(self) -> dict[str, Any]:
        """kafka-python client arguments for the security settings (the secret unwrapped here,
        at the one place it is handed to the client)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                out["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return out

    def producer_kwargs(self, bootstrap_servers: str, role: str) -> dict[str, Any]:
        """kafka-python ``KafkaProducer`` arguments every spt-stream producer shares: brokers,
        ``client_id`` ``<client_id>-<role>``, ordered delivery (one request in flight), no
        client-side metrics (nothing reads them; their sensors cost ~17 % of the sender
        thread's interpreter time per message), and the security settings."""
        return {
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": f"{self.client_id}-{role}",
            "max_in_flight_requests_per_connection": 1,
            "metrics_enabled": False,
            **self.security_kwargs(),
        }


class AssemblySettings(_Frozen):
    """How runs are turned into frames when their start document does not say (``md["spt"]``)."""

    #: Beamline profile name (``spt_stream/configs/profiles/<name>.yaml``) or path; None =
    #: heuristics only.
    profile: str | None = None
    #: Largest spectrum accepted, in points (a guard against hostile documents).
    max_points: int = Field(100_000, ge=8)
    #: Fewest points a frame must have.
    min_points: int = Field(8, ge=2)
    #: Runs kept open at once; the oldest is dropped (and logged) beyond this.
    max_open_runs: int = Field(64, ge=1)


class NormalizationSettings(_Frozen):
    """Athena/Larch-style normalization. Energies are relative to e0 (eV); None = Larch default."""

    e0_mode: Literal["larch", "robust"] = "robust"
    e0: float | None = None
    pre1: float | None = None
    pre2: float | None = None
    norm1: float | None = None
    norm2: float | None = None
    nnorm: int | None = Field(None, ge=0, le=2)
    nvict: int = Field(0, ge=0, le=4)
    #: Fixed energy shift added to every frame's energy (eV), applied before everything else.
    energy_shift: float = 0.0
    #: Calibrate each frame from its reference channel (e.g. a foil) to the tabulated edge.
    calibrate_from_reference: bool = False
    min_edge_step: float = Field(1e-4, ge=0.0)


class BatchSettings(_Frozen):
    """Micro-batching contract: flush when full, when the oldest frame is this old, or at stop."""

    max_size: int = Field(64, ge=1)
    max_latency_ms: float = Field(20.0, ge=0.0)
    #: Run the model and the sink hand-off on a second thread, overlapping the next batch's
    #: decoding, assembly and normalization (see spt_stream.engine). ``auto``: on when the
    #: model's forward pass runs without the interpreter lock (the ``aot`` backend), where it
    #: raises the backlog rate; off for eager/compiled models, where it measured slower.
    overlap: Literal["auto"] | bool = "auto"


class ZarrSettings(_Frozen):
    root: Path = Path("spt-traces")
    block_rows: int = Field(256, ge=1)
    #: Gather a run's rows for up to this long before writing them to the store (each write
    #: rewrites a chunk per variable, atomically, and holds the interpreter for tens of ms:
    #: fewer writes, fewer stalls of the frames behind them; docs/BENCHMARKS.md). The trace is
    #: readable live at this delay; the feedback topic does not wait for it.
    write_interval_s: float = Field(1.0, ge=0.0, le=60.0)
    #: Write the trace from a child process (its own interpreter lock and core): Zarr's Python
    #: write path then no longer stalls the frames in the engine (docs/BENCHMARKS.md). Off:
    #: the writer runs on a thread of the engine's process.
    process: bool = True


class TiledSettings(_Frozen):
    url: str | None = None
    api_key: SecretStr | None = None
    queue_size: int = Field(1024, ge=1)


class FeedbackSettings(_Frozen):
    topic: str | None = None
    documents_topic: str | None = None


class DeadLetterSettings(_Frozen):
    #: JSON-lines file receiving every rejected message/document with the reason, created at the
    #: first record (nothing rejected: no file). None: ``dead-letter.jsonl`` in the trace root
    #: (``zarr.root``), next to the traces.
    path: Path | None = None
    #: False: no file; rejected inputs are still logged and counted.
    file: bool = True


class TrackingSettings(_Frozen):
    #: The classical stage beside the network (edge features, os_edge, os_delta): on by default;
    #: off only to measure what it costs (docs/BENCHMARKS.md).
    classical: bool = True
    #: Run-relative tracking (``os_delta``): the first this many frames of a run (with an edge
    #: found) are its reference; see spt_stream.classical.tracking.
    reference_frames: int = Field(5, ge=1, le=10_000)
    #: A stored run (its uid, under the Zarr root) whose first ``reference_frames`` edges are the
    #: reference of every later run of its element (e.g. the pristine material before cycling);
    #: None: each run is its own reference.
    reference_run: str | None = None


class EngineSettings(BaseSettings):
    """Everything the engine needs, validated once."""

    model_config = SettingsConfigDict(
        env_prefix="SPT_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    assembly: AssemblySettings = AssemblySettings()
    normalization: NormalizationSettings = NormalizationSettings()
    batch: BatchSettings = BatchSettings()
    zarr: ZarrSettings = ZarrSettings()
    tiled: TiledSettings = TiledSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    tracking: TrackingSettings = TrackingSettings()
    #: Checkpoint path; None = the model shipped with the package.
    model: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CPU threads for the model and the numeric kernels (torch, BLAS); None = one per core
    #: minus one (at least one), leaving a core to the engine's I/O threads.
    compute_threads: int | None = Field(None, ge=1)
    #: How the model runs. ``auto`` (default): ``aot`` on the CPU when a C++ compiler is
    #: present, else ``eager``; ``eager`` on CUDA. ``aot``: compiled ahead of time by
    #: AOTInductor (CPU; one compile of ~40 s the first time per model, torch and CPU, cached in
    #: ``model_cache_dir``; its forward pass runs without the interpreter lock, so the engine's
    #: other threads cannot stall it). ``compile``: ``torch.compile`` with batches padded to
    #: bucket shapes. ``eager``: plain PyTorch. Numbers in docs/BENCHMARKS.md.
    model_backend: Literal["auto", "eager", "compile", "aot"] = "auto"
    #: Arithmetic of the forward pass: ``auto`` = bf16 autocast on CUDA, fp32 on the CPU;
    #: ``fp32`` / ``bf16`` force one (the ``aot`` backend is fp32).
    model_precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Where ``aot`` packages are kept; None = ``$XDG_CACHE_HOME/spt-stream/aot`` or
    #: ``~/.cache/spt-stream/aot``.
    model_cache_dir: Path | None = None
    #: ``aot`` package not in the cache yet: ``false`` (default) serves with the eager model at
    #: once and compiles in the background, switching when it is ready (no frame waits);
    #: ``true`` compiles first, as before (frames wait ~40 s the first time).
    model_compile_wait: bool = False

    @model_validator(mode="before")
    @classmethod
    def _compile_model_alias(cls, data: Any) -> Any:
        # ``compile_model: true`` (configs written before ``model_backend``) = backend compile.
        if isinstance(data, dict) and "compile_model" in data:
            data = dict(data)
            if data.pop("compile_model") in (True, "true", "True", "1", 1) and data.get(
                "model_backend", "auto"
            ) in ("auto", None):
                data["model_backend"] = "compile"
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: keyword arguments (the CLI options), the environment, then the YAML
        # files load_settings names (the user's --config above the packaged defaults). No .env
        # file and no secrets directory are read.
        yaml_layers = tuple(_YamlLayer(settings_cls, path) for path in reversed(_YAML_LAYERS.get()))
        return (init_settings, EnvironmentSource(settings_cls), *yaml_layers)

    @property
    def dead_letter_path(self) -> Path | None:
        """Where rejected inputs are written (see :class:`DeadLetterSettings`); None: nowhere."""
        if not self.dead_letter.file:
            return None
        return self.dead_letter.path or Path(self.zarr.root) / "dead-letter.jsonl"

    def public_dump(self) -> dict[str, Any]:
        """The settings as JSON-able data, secrets masked (for logs and trace-store metadata)."""
        masked: dict[str, Any] = _mask(self.model_dump(mode="json"))
        return masked


_SECRET_NAMES = ("password", "api_key", "secret", "token")


def _mask(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: ("**********" if v is not None and any(s in k for s in _SECRET_NAMES) else _mask(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`ConfigError` naming the file on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc}", source=str(path), line=line) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file must hold a mapping at top level", source=str(path))
    return data


#: The Tiled API key's own environment variable (the nested ``SPT_TILED__API_KEY`` works too and
#: wins when both are set).
TILED_API_KEY_ENV = "SPT_TILED_API_KEY"

#: The YAML layers of the settings being built, lowest first (set by :func:`load_settings`; empty
#: when :class:`EngineSettings` is built directly: field defaults, environment and keywords only).
_YAML_LAYERS: ContextVar[tuple[Path, ...]] = ContextVar("spt_yaml_layers", default=())


class _YamlLayer(YamlConfigSettingsSource):
    """One YAML file as a settings source, read with :func:`read_yaml`: a missing or unreadable
    file, invalid YAML or a file not holding a mapping is a :class:`ConfigError` naming the file
    (the library's own reader skips a missing file)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, yaml_file=path)

    def _read_files(self, files: object) -> dict[str, Any]:
        return read_yaml(Path(str(files))) if files is not None else {}


class EnvironmentSource(EnvSettingsSource):
    """The ``SPT_*`` environment variables (``__`` nesting), plus ``SPT_TILED_API_KEY`` as
    ``tiled.api_key`` when the nested variable does not set it.

    The one place settings are read from the environment. A variable whose value cannot be
    decoded (e.g. invalid JSON for a list setting) is a :class:`ConfigError`.
    """

    def __call__(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = super().__call__()
        except SettingsError as exc:
            raise ConfigError(f"invalid environment setting: {exc}", source="environment") from exc
        key = os.environ.get(TILED_API_KEY_ENV)
        tiled = data.get("tiled")
        if key and not (isinstance(tiled, Mapping) and tiled.get("api_key")):
            data["tiled"] = {**(dict(tiled) if isinstance(tiled, Mapping) else {}), "api_key": key}
        return data


@contextmanager
def _yaml_layers(paths: tuple[Path, ...]) -> Iterator[None]:
    token = _YAML_LAYERS.set(paths)
    try:
        yield
    finally:
        _YAML_LAYERS.reset(token)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    packaged_defaults: bool = True,
) -> EngineSettings:
    """Build :class:`EngineSettings` from, lowest first, the packaged YAML, a user YAML
    (``--config``), the ``SPT_*`` environment and ``overrides`` (the command-line options).

    ``overrides`` uses the nested shape of the settings (``{"kafka": {"topics": [...]}}``);
    ``None`` values are ignored so CLI options left unset do not mask lower layers.

    Raises
    ------
    ConfigError
        A YAML file that cannot be read or parsed, an environment variable that cannot be
        decoded, or merged settings that do not validate.
    """
    layers: list[Path] = []
    if packaged_defaults and DEFAULT_ENGINE_YAML.is_file():
        layers.append(DEFAULT_ENGINE_YAML)
    if config_file is not None:
        layers.append(Path(config_file))
    try:
        with _yaml_layers(tuple(layers)):
            return EngineSettings(**_drop_none(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"invalid settings: {problems}",
            source=str(config_file) if config_file else "defaults/environment",
        ) from exc


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        out[k] = _drop_none(v) if isinstance(v, Mapping) else v
    return out
