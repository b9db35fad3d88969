"""Gateway settings: defaults that match AOG, each overridable from the environment.

Every number a test needs to shrink (timeouts, limits, restart backoff) lives here, so
tests prove the policy with small values instead of waiting a minute.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import attrs

from aogstream.manifest import DEFAULT_STREAM_TIMEOUT_S, DEFAULT_UNARY_TIMEOUT_S


def default_data_dir() -> Path:
    """`AOG_DATA_DIR`, else a per-user folder (no root needed, unlike AOG's /var/lib/aog)."""
    env = os.environ.get("AOG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "aogstream"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.environ.get("APPDATA") or str(Path.home())
        return Path(base) / "aogstream"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "aogstream"


# Secrets read from the environment by every serving process; never handed to plugins.
MANAGEMENT_KEY_ENV = "AOGSTREAM_MANAGEMENT_KEY"
API_KEYS_ENV = "AOGSTREAM_API_KEYS"
SECRET_ENV = (MANAGEMENT_KEY_ENV, API_KEYS_ENV, "AOGSTREAM_SECRET_KEY", "AOGSTREAM_DATABASE_URL")
MANAGEMENT_KEY_FILE = "management.key"
LOOPBACK_NAMES = ("localhost", "localhost.")


def _env_list(name: str) -> list[str]:
    """A comma-separated environment variable as a list (blanks dropped)."""
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_loopback_host(host: str) -> bool:
    """Whether a bind address (or host name) reaches this machine only."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def tighten_mode(path: Path, mode: int) -> None:
    """Make an existing file or folder `mode` if others may read it (a missing one is
    fine)."""
    if sys.platform == "win32":
        return
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(mode)
    except FileNotFoundError:
        pass


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: the data directory holds the
    database with provider keys and the management key file."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten_mode(path, 0o700)


def read_management_key(data_dir: Path) -> str:
    """The key in `<data dir>/management.key`, or "" when there is none (or it cannot
    be read)."""
    try:
        return (data_dir / MANAGEMENT_KEY_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def ensure_management_key(data_dir: Path) -> str:
    """The key file's key, generated (32 random bytes, urlsafe) into a new file of mode
    0600 when there is none; an existing file's mode is tightened to 0600."""
    ensure_private_dir(data_dir)
    path = data_dir / MANAGEMENT_KEY_FILE
    key = read_management_key(data_dir)
    if key:
        tighten_mode(path, 0o600)
        return key
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{MANAGEMENT_KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a reader sees the whole key or none
    return key


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw)
    return None if value < 0 else value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if not raw else int(raw)


@attrs.define
class Config:
    """Everything the gateway process needs to know at start-up."""

    host: str = "127.0.0.1"
    port: int = 16688
    data_dir: Path = attrs.Factory(default_data_dir)
    # Searched in order; a plugin name found twice is a conflict (the first one wins).
    plugin_dirs: list[Path] = attrs.Factory(list)
    # AOG's policy: 60 s unary, 300 s server stream, none for bidi (None = no deadline).
    unary_timeout: float | None = float(DEFAULT_UNARY_TIMEOUT_S)
    stream_timeout: float | None = float(DEFAULT_STREAM_TIMEOUT_S)
    max_body_bytes: int = 16 * 1024 * 1024
    ws_max_message_bytes: int = 10 * 1024 * 1024
    # Open WebSocket sessions per service in each serving process (0 = no cap); see
    # `bidi.limits`.
    max_realtime_sessions: int = 16
    # How long an OpenAI realtime session (`/v1/realtime`) may last, in seconds: at the
    # limit it gets OpenAI's `session_expired` error event and a close. OpenAI's is 60
    # minutes; None: no limit.
    realtime_session_seconds: float | None = 3600.0
    # A request body must arrive within `body_timeout` seconds, plus one second per
    # `body_min_rate` bytes received (a big upload on a slow link keeps going; a client
    # trickling bytes to hold a connection open is cut). None: no deadline.
    body_timeout: float | None = 30.0
    body_min_rate: int = 64 * 1024
    # Connections one serving process holds at once; more wait in the listen backlog.
    # 0: as many as the open-file limit allows, less a reserve (see `serving_limits`).
    max_connections: int = 0
    plugin_start_timeout: float = 60.0
    plugin_connect_timeout: float = 10.0
    plugin_stop_grace: float = 2.0
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0
    health_interval: float = 5.0
    # Local plugins keep engines and models in <engine_dir>/<plugin name>.
    engine_dir: Path = attrs.field(default=attrs.Factory(
        lambda self: self.data_dir / "engines", takes_self=True))
    # Call StartEngine on local plugins once they are up (AOG does at start-up).
    start_engines: bool = True
    # Serving processes on the one port (0 = one per two cores, at least one:
    # `serving.worker_pool.worker_count` says why); they share one set of
    # plugin processes (see `aogstream.serving`).
    workers: int = 0
    # Host names (besides loopback and the bound address) that may appear in `Host`,
    # origins that get CORS on the service routes, and whether the management key is
    # required on loopback too (it always is beyond loopback). See `http.guard`.
    allowed_hosts: list[str] = attrs.Factory(list)
    cors_origins: list[str] = attrs.Factory(list)
    require_management_key: bool = False
    # AOG's clients name local files: speech-to-text `audio` as a path, text-to-speech
    # answered with the saved WAV's path. Loopback clients only (see `http.local_audio`).
    local_audio_paths: bool = True
    local_audio_max_bytes: int = 16 * 1024 * 1024
    # A PostgreSQL URL puts the store there (several gateway hosts share it, see
    # `store.postgres`); empty: the embedded SQLite file in the data directory.
    database_url: str = ""
    # Offer aogstream.sdk plugins the lane (`rpc.lane`): their Invoke rpcs on a plain
    # framed unix socket instead of gRPC, whose cost per request and per realtime frame
    # is far above the work it carries. Off (`AOGSTREAM_PLUGIN_LANE=off`): no offer,
    # every plugin speaks gRPC only, for A/B measurement or should the lane fail.
    plugin_lane: bool = True

    @property
    def db_path(self) -> Path:
        """The embedded store (services, providers, models, plugin switches)."""
        return self.data_dir / "aogstream.db"

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """Defaults, then `AOGSTREAM_*`/AOG environment variables, then overrides."""
        cfg = cls(
            host=os.environ.get("AOGSTREAM_HOST", "127.0.0.1"),
            port=_env_int("AOGSTREAM_PORT", 16688),
            unary_timeout=_env_float("AOGSTREAM_UNARY_TIMEOUT", DEFAULT_UNARY_TIMEOUT_S),
            stream_timeout=_env_float("AOGSTREAM_STREAM_TIMEOUT", DEFAULT_STREAM_TIMEOUT_S),
            max_body_bytes=_env_int("AOGSTREAM_MAX_BODY_BYTES", 16 * 1024 * 1024),
            body_timeout=_env_float("AOGSTREAM_BODY_TIMEOUT", 30.0),
            max_connections=_env_int("AOGSTREAM_MAX_CONNECTIONS", 0),
            restart_backoff_initial=_env_float("AOGSTREAM_RESTART_BACKOFF", 0.5) or 0.0,
            health_interval=_env_float("AOGSTREAM_HEALTH_INTERVAL", 5.0) or 5.0,
            workers=_env_int("AOGSTREAM_WORKERS", 0),
            allowed_hosts=_env_list("AOGSTREAM_ALLOWED_HOSTS"),
            cors_origins=_env_list("AOGSTREAM_CORS_ORIGINS"),
            require_management_key=_env_flag("AOGSTREAM_REQUIRE_MANAGEMENT_KEY"),
            local_audio_paths=os.environ.get("AOGSTREAM_LOCAL_AUDIO_PATHS", "1").lower()
            not in ("0", "false", "no", "off"),
            local_audio_max_bytes=_env_int("AOGSTREAM_LOCAL_AUDIO_MAX_BYTES", 16 * 1024 * 1024),
            max_realtime_sessions=_env_int("AOGSTREAM_MAX_REALTIME_SESSIONS", 16),
            realtime_session_seconds=_env_float("AOGSTREAM_REALTIME_SESSION_SECONDS",
                                                3600.0) or None,
            database_url=os.environ.get("AOGSTREAM_DATABASE_URL", "").strip(),
            plugin_lane=os.environ.get("AOGSTREAM_PLUGIN_LANE", "on").strip().lower()
            not in ("0", "false", "no", "off"),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        engines = os.environ.get("AOGSTREAM_ENGINE_DIR")
        cfg.engine_dir = Path(engines) if engines else cfg.data_dir / "engines"
        if "engine_dir" in overrides and overrides["engine_dir"] is not None:
            cfg.engine_dir = Path(str(overrides["engine_dir"]))
        # plugins run in their own folders: hand them absolute paths only
        cfg.data_dir = cfg.data_dir.expanduser().absolute()
        cfg.engine_dir = cfg.engine_dir.expanduser().absolute()
        if not cfg.plugin_dirs:
            cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
        return cfg


def default_plugin_dirs(data_dir: Path) -> list[Path]:
    """`./plugins` when present (development mode, as AOG), `AOG_PLUGIN_DIR` (which AOG
    documents but ignores), then the data directory's `plugins/`."""
    dirs: list[Path] = []
    local = Path.cwd() / "plugins"
    if local.is_dir():
        dirs.append(local)
    env = os.environ.get("AOG_PLUGIN_DIR")
    if env:
        for part in env.split(os.pathsep):
            if part:
                dirs.append(Path(part).expanduser())
    dirs.append(data_dir / "plugins")
    seen: set[Path] = set()
    out = []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out
