"""Plugin manifest and payload types of AOG's plugin SDK (`plugin-sdk/types`), in Python.

Why this module exists: aogstream must run plugins that were written for Intel AOG without
touching them. Their ``plugin.yaml`` / ``plugin.json`` and the JSON documents they exchange over
the ``bytes`` fields of the gRPC protocol are defined by the Go structs of the SDK ``types``
package, so every class here mirrors one of those structs:

* attribute names are the JSON/YAML keys (snake_case), so a document maps onto a class 1:1;
* ``to_dict()`` applies Go's ``omitempty`` exactly where the Go tag has it, so a Go peer (or a
  test comparing bytes) sees the same document the SDK would produce;
* ``from_dict()`` is as tolerant as Go's decoders are: unknown keys are ignored, missing or null
  keys keep their zero value, but a value of the wrong shape is an error naming the key.

On top of the plain types, :func:`load_manifest` adds the validation a host needs before it
executes anything a manifest points at (safe plugin name, executable inside the plugin folder,
``config_ref`` in the ``flavor:service`` form AOG requires), and reports problems as
``<file>: <field>: <reason>`` so the author can fix them without reading our code.

This module is part of the neutral core: it knows nothing about HTTP, gRPC or processes.

Why one module of this size: it mirrors AOG's plugin-sdk `types` package, one wire type
per AOG type with the same names and order, so a reader can check it against the spec
in one pass; the codec those types share (`_Wire`) lives here with them.
"""

import base64
import json
import os
import platform
import posixpath
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Self

import attrs
import yaml

__all__ = [
    "AUTH_TYPE_APIKEY",
    "AUTH_TYPE_NONE",
    "AUTH_TYPE_OAUTH",
    "AUTH_TYPE_SIGN",
    "AUTH_TYPE_TOKEN",
    "DEFAULT_STREAM_TIMEOUT_S",
    "DEFAULT_UNARY_TIMEOUT_S",
    "ERR_CODE_ABORTED",
    "ERR_CODE_ALREADY_EXISTS",
    "ERR_CODE_DATA_LOSS",
    "ERR_CODE_ENGINE_HEALTH_CHECK_FAILED",
    "ERR_CODE_ENGINE_INSTALL_FAILED",
    "ERR_CODE_ENGINE_NOT_FOUND",
    "ERR_CODE_ENGINE_NOT_INSTALLED",
    "ERR_CODE_ENGINE_START_FAILED",
    "ERR_CODE_ENGINE_STOP_FAILED",
    "ERR_CODE_ENGINE_UPGRADE_FAILED",
    "ERR_CODE_FAILED_PRECONDITION",
    "ERR_CODE_INTERNAL",
    "ERR_CODE_INVALID_ARGUMENT",
    "ERR_CODE_MODEL_DELETE_FAILED",
    "ERR_CODE_MODEL_INVALID_FORMAT",
    "ERR_CODE_MODEL_LOAD_FAILED",
    "ERR_CODE_MODEL_NOT_FOUND",
    "ERR_CODE_MODEL_PULL_FAILED",
    "ERR_CODE_MODEL_UNLOAD_FAILED",
    "ERR_CODE_NOT_FOUND",
    "ERR_CODE_OUT_OF_RANGE",
    "ERR_CODE_PERMISSION_DENIED",
    "ERR_CODE_PLUGIN_HEALTH_CHECK_FAILED",
    "ERR_CODE_PLUGIN_INVALID_CONFIG",
    "ERR_CODE_PLUGIN_LOAD_FAILED",
    "ERR_CODE_PLUGIN_NOT_FOUND",
    "ERR_CODE_PLUGIN_START_FAILED",
    "ERR_CODE_PLUGIN_STOP_FAILED",
    "ERR_CODE_RESOURCE_EXHAUSTED",
    "ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED",
    "ERR_CODE_SERVICE_INVALID_REQUEST",
    "ERR_CODE_SERVICE_INVALID_RESPONSE",
    "ERR_CODE_SERVICE_NOT_FOUND",
    "ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED",
    "ERR_CODE_SERVICE_TIMEOUT",
    "ERR_CODE_SUCCESS",
    "ERR_CODE_UNAUTHENTICATED",
    "ERR_CODE_UNAVAILABLE",
    "ERR_CODE_UNIMPLEMENTED",
    "ERR_CODE_UNKNOWN",
    "GPU_TYPE_AMD",
    "GPU_TYPE_INTEL_ARC",
    "GPU_TYPE_NONE",
    "GPU_TYPE_NVIDIA",
    "INVOKE_MODE_BIDIRECTIONAL",
    "INVOKE_MODE_STREAMING",
    "INVOKE_MODE_UNARY",
    "KNOWN_PROTOCOLS",
    "MANIFEST_JSON",
    "MANIFEST_YAML",
    "PLUGIN_STATUS_RUNNING",
    "PLUGIN_STATUS_STOPPED",
    "PLUGIN_STATUS_UNLOAD",
    "PLUGIN_TYPE_LOCAL",
    "PLUGIN_TYPE_REMOTE",
    "PROTOCOL_GRPC",
    "PROTOCOL_GRPC_STREAM",
    "PROTOCOL_GRPC_WEB",
    "PROTOCOL_HTTP",
    "PROTOCOL_HTTPS",
    "PROTOCOL_WEBSOCKET",
    "PROTOCOL_WSS",
    "SERVICE_TYPE_CHAT",
    "SERVICE_TYPE_EMBED",
    "SERVICE_TYPE_GENERATE",
    "SERVICE_TYPE_IMAGE_TO_IMAGE",
    "SERVICE_TYPE_IMAGE_TO_VIDEO",
    "SERVICE_TYPE_MODELS",
    "SERVICE_TYPE_RERANK",
    "SERVICE_TYPE_SPEECH_TO_TEXT",
    "SERVICE_TYPE_SPEECH_TO_TEXT_WS",
    "SERVICE_TYPE_TEXT_TO_IMAGE",
    "SERVICE_TYPE_TEXT_TO_SPEECH",
    "SERVICE_TYPE_TEXT_TO_VIDEO",
    "SERVICE_TYPE_VISION",
    "STATUS_ERROR",
    "STATUS_INSTALLING",
    "STATUS_RUNNING",
    "STATUS_STOPPED",
    "STATUS_UNKNOWN",
    "ZERO_TIME",
    "Credentials",
    "DeleteModelRequest",
    "DeleteRequest",
    "EngineConfig",
    "EngineRecommendConfig",
    "EngineStatus",
    "EngineVersionResponse",
    "FieldError",
    "HealthStatus",
    "InvokeRequest",
    "InvokeResponse",
    "ListModelsResponse",
    "ListResponse",
    "LoadModelRequest",
    "LoadRequest",
    "LocalTime",
    "ManifestError",
    "ModelDetails",
    "ModelInfo",
    "OllamaResources",
    "PlatformConfig",
    "PlatformNotSupportedError",
    "PluginError",
    "PluginManifest",
    "PluginStatus",
    "ProgressResponse",
    "ProviderInfo",
    "PullModelRequest",
    "PullProgressFunc",
    "RecommendModelData",
    "ResourcesConfig",
    "ServiceCapabilities",
    "ServiceDef",
    "ServiceNotFoundError",
    "UnloadModelRequest",
    "current_platform",
    "default_aog_data_dir",
    "expand_path_vars",
    "load_manifest",
]

# ---------------------------------------------------------------------------------------------
# Constants (values are the wire values of plugin-sdk/types/common.go and AOG's host).
# ---------------------------------------------------------------------------------------------

# Plugin types: "local" plugins manage an engine on this machine, "remote" ones call a cloud API.
PLUGIN_TYPE_LOCAL = "local"
PLUGIN_TYPE_REMOTE = "remote"

# Protocol names as the SDK spells them. Manifests usually write them upper-case ("HTTP",
# "WEBSOCKET"), and AOG compares them case-insensitively, so compare with `.lower()`.
PROTOCOL_HTTP = "http"
PROTOCOL_HTTPS = "https"
PROTOCOL_GRPC = "grpc"
PROTOCOL_GRPC_WEB = "grpc-web"
PROTOCOL_WEBSOCKET = "websocket"
PROTOCOL_WSS = "wss"
# Not an SDK constant, but AOG's own templates and manifests use "GRPC_STREAM".
PROTOCOL_GRPC_STREAM = "grpc_stream"

#: Every protocol value a manifest may use (lower-case; compare case-insensitively).
KNOWN_PROTOCOLS: frozenset[str] = frozenset(
    {
        PROTOCOL_HTTP,
        PROTOCOL_HTTPS,
        PROTOCOL_GRPC,
        PROTOCOL_GRPC_STREAM,
        PROTOCOL_WEBSOCKET,
        PROTOCOL_WSS,
        PROTOCOL_GRPC_WEB,
    }
)

# Service types: the SDK list plus the host-side services plugins can also serve.
SERVICE_TYPE_CHAT = "chat"
SERVICE_TYPE_EMBED = "embed"
SERVICE_TYPE_GENERATE = "generate"
SERVICE_TYPE_TEXT_TO_IMAGE = "text-to-image"
SERVICE_TYPE_IMAGE_TO_IMAGE = "image-to-image"
SERVICE_TYPE_IMAGE_TO_VIDEO = "image-to-video"
SERVICE_TYPE_TEXT_TO_VIDEO = "text-to-video"
SERVICE_TYPE_TEXT_TO_SPEECH = "text-to-speech"
SERVICE_TYPE_SPEECH_TO_TEXT = "speech-to-text"
SERVICE_TYPE_VISION = "vision"
SERVICE_TYPE_SPEECH_TO_TEXT_WS = "speech-to-text-ws"
SERVICE_TYPE_RERANK = "rerank"
SERVICE_TYPE_MODELS = "models"

# Authentication types a service may declare in `auth_type`.
AUTH_TYPE_NONE = "none"
AUTH_TYPE_APIKEY = "apikey"
AUTH_TYPE_TOKEN = "token"
AUTH_TYPE_OAUTH = "oauth"
AUTH_TYPE_SIGN = "sign"

# GPU types (EngineConfig.device_type).
GPU_TYPE_NONE = "none"
GPU_TYPE_NVIDIA = "nvidia"
GPU_TYPE_AMD = "amd"
GPU_TYPE_INTEL_ARC = "intel_arc"

# Error codes carried in PluginError.code and in the `code` of every RPC response.
ERR_CODE_SUCCESS = 0
ERR_CODE_UNKNOWN = 1
ERR_CODE_INVALID_ARGUMENT = 2
ERR_CODE_NOT_FOUND = 3
ERR_CODE_ALREADY_EXISTS = 4
ERR_CODE_PERMISSION_DENIED = 5
ERR_CODE_RESOURCE_EXHAUSTED = 6
ERR_CODE_FAILED_PRECONDITION = 7
ERR_CODE_ABORTED = 8
ERR_CODE_OUT_OF_RANGE = 9
ERR_CODE_UNIMPLEMENTED = 10
ERR_CODE_INTERNAL = 11
ERR_CODE_UNAVAILABLE = 12
ERR_CODE_DATA_LOSS = 13
ERR_CODE_UNAUTHENTICATED = 14
# Plugin-specific (1000-1999).
ERR_CODE_PLUGIN_NOT_FOUND = 1000
ERR_CODE_PLUGIN_LOAD_FAILED = 1001
ERR_CODE_PLUGIN_INVALID_CONFIG = 1002
ERR_CODE_PLUGIN_START_FAILED = 1003
ERR_CODE_PLUGIN_STOP_FAILED = 1004
ERR_CODE_PLUGIN_HEALTH_CHECK_FAILED = 1005
# Engine-specific (2000-2999).
ERR_CODE_ENGINE_NOT_FOUND = 2000
ERR_CODE_ENGINE_NOT_INSTALLED = 2001
ERR_CODE_ENGINE_START_FAILED = 2002
ERR_CODE_ENGINE_STOP_FAILED = 2003
ERR_CODE_ENGINE_INSTALL_FAILED = 2004
ERR_CODE_ENGINE_UPGRADE_FAILED = 2005
ERR_CODE_ENGINE_HEALTH_CHECK_FAILED = 2006
# Model-specific (3000-3999).
ERR_CODE_MODEL_NOT_FOUND = 3000
ERR_CODE_MODEL_PULL_FAILED = 3001
ERR_CODE_MODEL_DELETE_FAILED = 3002
ERR_CODE_MODEL_LOAD_FAILED = 3003
ERR_CODE_MODEL_UNLOAD_FAILED = 3004
ERR_CODE_MODEL_INVALID_FORMAT = 3005
# Service invocation (4000-4999). The SDK defines no 4001.
ERR_CODE_SERVICE_NOT_FOUND = 4000
ERR_CODE_SERVICE_TIMEOUT = 4002
ERR_CODE_SERVICE_INVALID_REQUEST = 4003
ERR_CODE_SERVICE_INVALID_RESPONSE = 4004
ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED = 4005
ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED = 4006

# Operation status strings (EngineStatus.status, PluginStatus.status).
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"
STATUS_INSTALLING = "installing"
STATUS_ERROR = "error"
STATUS_UNKNOWN = "unknown"

# AOG host's plugin process status (internal/constants/global.go), shown by the plugin list.
PLUGIN_STATUS_RUNNING = 1
PLUGIN_STATUS_STOPPED = 2
PLUGIN_STATUS_UNLOAD = 3  # discovered on disk but not registered

# Invocation modes returned by ServiceDef.get_invoke_mode().
INVOKE_MODE_UNARY = "unary"
INVOKE_MODE_STREAMING = "streaming"
INVOKE_MODE_BIDIRECTIONAL = "bidirectional"

# AOG's defaults when a service leaves `timeout` unset (spec section 5).
DEFAULT_UNARY_TIMEOUT_S = 60
DEFAULT_STREAM_TIMEOUT_S = 300

MANIFEST_YAML = "plugin.yaml"
MANIFEST_JSON = "plugin.json"

#: Go's zero time.Time, which is what an unset ModelInfo.modified_at serializes as.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

#: RecommendModelData.created_at is the host's own `LocalTime` type; its textual form is not
#: part of the SDK contract, so it is carried as an opaque string.
LocalTime = str

_WEBSOCKET_PROTOCOLS = frozenset({PROTOCOL_WEBSOCKET, PROTOCOL_WSS})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class FieldError(ValueError):
    """A document value has the wrong shape or fails validation.

    ``field`` is a path such as ``services[1].timeout`` so the message points at the exact key;
    :func:`load_manifest` turns it into a :class:`ManifestError` that also names the file.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ManifestError(ValueError):
    """A plugin manifest could not be found, parsed or accepted.

    Rendered as ``<path>[:<line>]: <field>: <reason>`` so a plugin author can locate the
    problem from a log line alone.
    """

    def __init__(self, path: str, field: str, reason: str, *, line: int | None = None) -> None:
        super().__init__(path, field, reason)
        self.path = str(path)
        self.field = field
        self.reason = reason
        self.line = line

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.reason}"
        return f"{where}: {self.reason}"


class PlatformNotSupportedError(ManifestError, KeyError):
    """The manifest has no ``platforms`` entry for the requested ``<goos>_<goarch>`` key.

    A KeyError too, because it is a failed lookup in a mapping and callers may treat it so.
    """

    def __str__(self) -> str:
        return ManifestError.__str__(self)


class ServiceNotFoundError(KeyError):
    """The manifest declares no service with the requested name."""

    def __init__(self, service_name: str, available: list[str]) -> None:
        super().__init__(service_name)
        self.service_name = service_name
        self.available = available

    def __str__(self) -> str:
        have = ", ".join(self.available) or "none"
        return f'service "{self.service_name}" not found (declared services: {have})'


# ---------------------------------------------------------------------------------------------
# Value codecs: how one field moves between a JSON/YAML value and its Python value.
# ---------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """Short human description of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({getattr(value, 'raw', value)})"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _load_str(value: object, where: str) -> str:
    # Go's YAML decoder stores any scalar into a string field using its source text, so an
    # unquoted `version: 1.0` is still the string "1.0". Numbers from our YAML loader carry
    # that text in `.raw`.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        raw = getattr(value, "raw", None)
        return raw if isinstance(raw, str) else str(value)
    raise FieldError(where, f"expected a string, got {_describe(value)}")


def _load_int(value: object, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise FieldError(where, f"expected an integer, got {_describe(value)}")


def _load_float(value: object, where: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise FieldError(where, f"expected a number, got {_describe(value)}")


# yaml.v3 accepts these YAML 1.1 spellings when the target is a bool.
_YAML11_TRUE = frozenset({"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"})
_YAML11_FALSE = frozenset({"n", "N", "no", "No", "NO", "off", "Off", "OFF"})


def _load_bool(value: object, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _YAML11_TRUE:
            return True
        if value in _YAML11_FALSE:
            return False
    raise FieldError(where, f"expected a boolean (true/false), got {_describe(value)}")


def _load_bytes(value: object, where: str) -> bytes:
    # Go marshals []byte as standard base64 with padding.
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise FieldError(where, f"expected base64-encoded bytes, got {_describe(value)}")


_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def _load_time(value: object, where: str) -> datetime:
    if value is None:
        return ZERO_TIME
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        m = _RFC3339_RE.match(value)
        if m:
            year, month, day, hour, minute, second, frac, zone = m.groups()
            if zone in ("Z", "z"):
                tz: timezone = UTC
            else:
                sign = -1 if zone[0] == "-" else 1
                delta = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
                tz = timezone(sign * delta)
            micros = int((frac or "0").ljust(6, "0")[:6])
            try:
                return datetime(
                    int(year),
                    int(month),
                    int(day),
                    int(hour),
                    int(minute),
                    int(second),
                    micros,
                    tzinfo=tz,
                )
            except ValueError:
                pass
    raise FieldError(where, f"expected an RFC3339 time, got {_describe(value)}")


def _dump_time(value: datetime) -> str:
    """Format like Go's time.Time JSON: RFC3339 with trimmed fraction, "Z" for UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return f"{text}{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def _identity(value: Any) -> Any:
    return value


def _falsy(value: Any) -> bool:
    # Go's omitempty test: "", 0, false, nil, empty slice/map. Struct values are never
    # falsy here (attrs instances are truthy), matching encoding/json, which never omits them.
    return not value


@attrs.frozen
class _Codec:
    load: Callable[[Any, str], Any]
    dump: Callable[[Any], Any] = _identity
    is_empty: Callable[[Any], bool] = _falsy


_STR = _Codec(_load_str)
_INT = _Codec(_load_int)
_FLOAT = _Codec(_load_float)
_BOOL = _Codec(_load_bool)
# A Go *bool: nil (None) is omitted, an explicit false is kept.
_OPT_BOOL = _Codec(_load_bool, is_empty=lambda v: v is None)
_BYTES = _Codec(_load_bytes, lambda v: base64.b64encode(v).decode("ascii"))
_TIME = _Codec(_load_time, _dump_time)


def _list_of(item: _Codec) -> _Codec:
    def load(value: object, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise FieldError(where, f"expected a list, got {_describe(value)}")
        return [item.load(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return _Codec(load, lambda v: [item.dump(x) for x in v])


def _map_of(item: _Codec) -> _Codec:
    def load(value: object, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise FieldError(where, f"expected a mapping, got {_describe(value)}")
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise FieldError(where, f"keys must be strings, got {_describe(key)}")
            out[key] = item.load(v, _join(where, key))
        return out

    return _Codec(load, lambda v: {k: item.dump(x) for k, x in v.items()})


_STR_LIST = _list_of(_STR)
_STR_MAP = _map_of(_STR)


def _struct(cls: "type[_Wire]") -> _Codec:
    def load(value: object, where: str) -> Any:
        return cls._load_at({} if value is None else value, where)

    return _Codec(load, lambda v: v.to_dict())


def _opt_struct(cls: "type[_Wire]") -> _Codec:
    def load(value: object, where: str) -> Any:
        return None if value is None else cls._load_at(value, where)

    return _Codec(load, lambda v: v.to_dict(), lambda v: v is None)


@attrs.frozen
class _Spec:
    """Per-field serialization settings, stored in attrs metadata under ``_SPEC``."""

    codec: _Codec
    omitempty: bool = False
    key: str | None = None  # only when the JSON key is not a valid attribute name


_SPEC = "aogstream.manifest.spec"


def _wire(codec: _Codec, *, omitempty: bool = False, key: str | None = None) -> dict[str, _Spec]:
    """attrs field metadata recording how the field is (de)serialized."""
    return {_SPEC: _Spec(codec, omitempty, key)}


class _Wire:
    """Mixin giving attrs classes Go-compatible ``to_dict`` / ``from_dict``."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict Go's encoding/json would produce for this struct."""
        out: dict[str, Any] = {}
        for a in attrs.fields(type(self)):  # type: ignore[arg-type]
            spec = a.metadata.get(_SPEC)
            if spec is None:  # runtime-only attribute, never serialized
                continue
            value = getattr(self, a.name)
            if spec.omitempty and spec.codec.is_empty(value):
                continue
            out[spec.key or a.name] = spec.codec.dump(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a decoded JSON/YAML mapping; unknown keys ignored, missing ones zeroed.

        Raises :class:`FieldError` naming the key when a value has the wrong type.
        """
        return cls._load_at(data, "")

    @classmethod
    def _load_at(cls, data: object, where: str) -> Self:
        if not isinstance(data, Mapping):
            raise FieldError(where, f"expected a mapping, got {_describe(data)}")
        kwargs: dict[str, Any] = {}
        for a in attrs.fields(cls):  # type: ignore[arg-type]
            spec = a.metadata.get(_SPEC)
            if spec is None:
                continue
            key = spec.key or a.name
            value = data.get(key)
            if value is None:  # absent or null: Go leaves the zero value in place
                continue
            kwargs[a.alias] = spec.codec.load(value, _join(where, key))
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Payload types carried as JSON inside the gRPC `bytes` fields (plugin-sdk/types/service.go).
# ---------------------------------------------------------------------------------------------


@attrs.define
class ModelDetails(_Wire):
    """Detailed model information (ModelInfo.details)."""

    format: str = attrs.field(default="", metadata=_wire(_STR))
    family: str = attrs.field(default="", metadata=_wire(_STR))
    families: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST))
    parameter_size: str = attrs.field(default="", metadata=_wire(_STR))
    quantization_level: str = attrs.field(default="", metadata=_wire(_STR))


@attrs.define
class ModelInfo(_Wire):
    """One model of a ListModels / GetRunningModels answer.

    ``modified_at`` is a timezone-aware datetime in Python and an RFC3339 string on the wire;
    unset it is Go's zero time, which Go also emits (the key has no omitempty).
    """

    name: str = attrs.field(default="", metadata=_wire(_STR))
    model: str = attrs.field(default="", metadata=_wire(_STR))
    modified_at: datetime = attrs.field(default=ZERO_TIME, metadata=_wire(_TIME))
    size: int = attrs.field(default=0, metadata=_wire(_INT))
    digest: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    details: ModelDetails | None = attrs.field(
        default=None, metadata=_wire(_opt_struct(ModelDetails), omitempty=True)
    )


@attrs.define
class ListModelsResponse(_Wire):
    """Answer of ListModels and GetRunningModels."""

    models: list[ModelInfo] = attrs.field(
        factory=list, metadata=_wire(_list_of(_struct(ModelInfo)))
    )


@attrs.define
class PullModelRequest(_Wire):
    """Request of PullModel / PullModelStream.

    ``stream`` is a Go ``*bool``: None means "not said" and is omitted; False is sent.
    ``model_type`` is set by the host to the service name (OpenVINO uses it).
    """

    model: str = attrs.field(default="", metadata=_wire(_STR))
    insecure: bool = attrs.field(default=False, metadata=_wire(_BOOL, omitempty=True))
    username: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    password: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    stream: bool | None = attrs.field(default=None, metadata=_wire(_OPT_BOOL, omitempty=True))
    name: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    model_type: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class ProgressResponse(_Wire):
    """Progress of a long operation such as a model download (one PullModelStream message)."""

    status: str = attrs.field(default="", metadata=_wire(_STR))
    digest: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    total: int = attrs.field(default=0, metadata=_wire(_INT, omitempty=True))
    completed: int = attrs.field(default=0, metadata=_wire(_INT, omitempty=True))


@attrs.define
class DeleteModelRequest(_Wire):
    """Request of DeleteModel."""

    model: str = attrs.field(default="", metadata=_wire(_STR))


@attrs.define
class LoadModelRequest(_Wire):
    """Request of LoadModel."""

    model: str = attrs.field(default="", metadata=_wire(_STR))


@attrs.define
class UnloadModelRequest(_Wire):
    """Request of UnloadModel. The SDK key is ``models`` (the host-internal type differs)."""

    models: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST))


#: Backward-compatible aliases kept by the SDK.
DeleteRequest = DeleteModelRequest
LoadRequest = LoadModelRequest
ListResponse = ListModelsResponse

#: Progress callback of a local plugin's pull_model (Go: func(ProgressResponse) error).
PullProgressFunc = Callable[[ProgressResponse], None]


@attrs.define
class EngineRecommendConfig(_Wire):
    """Answer of GetConfig: where a local engine lives and how to install it."""

    host: str = attrs.field(default="", metadata=_wire(_STR))
    origin: str = attrs.field(default="", metadata=_wire(_STR))
    scheme: str = attrs.field(default="", metadata=_wire(_STR))
    recommend_model: str = attrs.field(default="", metadata=_wire(_STR))
    download_url: str = attrs.field(default="", metadata=_wire(_STR))
    download_path: str = attrs.field(default="", metadata=_wire(_STR))
    engine_path: str = attrs.field(default="", metadata=_wire(_STR))
    exec_path: str = attrs.field(default="", metadata=_wire(_STR))
    exec_file: str = attrs.field(default="", metadata=_wire(_STR))
    device_type: str = attrs.field(default="", metadata=_wire(_STR))


@attrs.define
class EngineConfig(_Wire):
    """Basic engine configuration."""

    host: str = attrs.field(default="", metadata=_wire(_STR))
    scheme: str = attrs.field(default="", metadata=_wire(_STR))
    engine_path: str = attrs.field(default="", metadata=_wire(_STR))
    exec_file: str = attrs.field(default="", metadata=_wire(_STR))
    exec_path: str = attrs.field(default="", metadata=_wire(_STR))
    download_url: str = attrs.field(default="", metadata=_wire(_STR))
    download_path: str = attrs.field(default="", metadata=_wire(_STR))
    device_type: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class EngineVersionResponse(_Wire):
    """Answer of GetVersion."""

    version: str = attrs.field(default="", metadata=_wire(_STR))


@attrs.define
class EngineStatus(_Wire):
    """Status of an engine (status is one of the STATUS_* strings)."""

    name: str = attrs.field(default="", metadata=_wire(_STR))
    version: str = attrs.field(default="", metadata=_wire(_STR))
    status: str = attrs.field(default="", metadata=_wire(_STR))
    message: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class HealthStatus(_Wire):
    """Health report; status is "UP", "DOWN" or "UNKNOWN"."""

    status: str = attrs.field(default="", metadata=_wire(_STR))
    message: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    details: dict[str, str] = attrs.field(factory=dict, metadata=_wire(_STR_MAP, omitempty=True))


@attrs.define
class PluginStatus(_Wire):
    """Status of a plugin (status is one of the STATUS_* strings)."""

    name: str = attrs.field(default="", metadata=_wire(_STR))
    version: str = attrs.field(default="", metadata=_wire(_STR))
    status: str = attrs.field(default="", metadata=_wire(_STR))
    message: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class Credentials(_Wire):
    """Authentication credentials: a type (apikey, token, ...) and its key/value pairs."""

    type: str = attrs.field(default="", metadata=_wire(_STR))
    values: dict[str, str] = attrs.field(factory=dict, metadata=_wire(_STR_MAP))


@attrs.define
class InvokeRequest(_Wire):
    """A service invocation. ``request_body`` is raw bytes (base64 in JSON, as Go does)."""

    service_name: str = attrs.field(default="", metadata=_wire(_STR))
    request_body: bytes = attrs.field(default=b"", metadata=_wire(_BYTES))
    headers: dict[str, str] = attrs.field(factory=dict, metadata=_wire(_STR_MAP, omitempty=True))


@attrs.define
class InvokeResponse(_Wire):
    """A service invocation result. ``response_body`` is base64 in JSON, as Go does."""

    response_body: bytes = attrs.field(default=b"", metadata=_wire(_BYTES))
    headers: dict[str, str] = attrs.field(factory=dict, metadata=_wire(_STR_MAP, omitempty=True))
    status_code: int = attrs.field(default=0, metadata=_wire(_INT, omitempty=True))


@attrs.define
class RecommendModelData(_Wire):
    """A model entry of the host's "supported model list", built from manifests.

    Defaults follow the Go struct's ``default:`` tags (method POST, flags false,
    ``is_default`` the *string* "false"). The JSON key ``class`` is a Python keyword, so the
    attribute is ``class_``. ``created_at`` is kept as an opaque string (see LocalTime).
    """

    id: str = attrs.field(default="", metadata=_wire(_STR))
    service_name: str = attrs.field(default="", metadata=_wire(_STR))
    api_flavor: str = attrs.field(default="", metadata=_wire(_STR))
    flavor: str = attrs.field(default="", metadata=_wire(_STR))
    method: str = attrs.field(default="POST", metadata=_wire(_STR))
    desc: str = attrs.field(default="", metadata=_wire(_STR))
    url: str = attrs.field(default="", metadata=_wire(_STR))
    auth_type: str = attrs.field(default="", metadata=_wire(_STR))
    auth_apply_url: str = attrs.field(default="", metadata=_wire(_STR))
    auth_fields: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST))
    name: str = attrs.field(default="", metadata=_wire(_STR))
    service_provider_name: str = attrs.field(default="", metadata=_wire(_STR))
    size: str = attrs.field(default="", metadata=_wire(_STR))
    is_recommended: bool = attrs.field(default=False, metadata=_wire(_BOOL))
    status: str = attrs.field(default="", metadata=_wire(_STR))
    avatar: str = attrs.field(default="", metadata=_wire(_STR))
    can_select: bool = attrs.field(default=False, metadata=_wire(_BOOL))
    class_: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST, key="class"))
    ollama_id: str = attrs.field(default="", metadata=_wire(_STR))
    params_size: float = attrs.field(default=0.0, metadata=_wire(_FLOAT))
    input_length: int = attrs.field(default=0, metadata=_wire(_INT))
    output_length: int = attrs.field(default=0, metadata=_wire(_INT))
    source: str = attrs.field(default="", metadata=_wire(_STR))
    is_default: str = attrs.field(default="false", metadata=_wire(_STR))
    think: bool = attrs.field(default=False, metadata=_wire(_BOOL))
    think_switch: bool = attrs.field(default=False, metadata=_wire(_BOOL))
    tools: bool = attrs.field(default=False, metadata=_wire(_BOOL))
    context: float = attrs.field(default=0.0, metadata=_wire(_FLOAT))
    created_at: LocalTime = attrs.field(default="", metadata=_wire(_STR))


@attrs.define(str=False)
class PluginError(_Wire, Exception):
    """An error a plugin reports with one of the ERR_CODE_* codes.

    It is both an exception and a payload: the SDK server copies ``code``/``message`` into the
    RPC response, and the host re-raises non-success codes as this type. ``str()`` uses AOG's
    wording, ``Plugin error (code=N): msg``, so logs read the same as with the Go host.
    """

    code: int = attrs.field(default=ERR_CODE_SUCCESS, metadata=_wire(_INT))
    message: str = attrs.field(default="", metadata=_wire(_STR))
    details: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))

    def __str__(self) -> str:
        return f"Plugin error (code={self.code}): {self.message}"


# ---------------------------------------------------------------------------------------------
# Manifest types (plugin-sdk/types/metadata.go; YAML and JSON keys are identical).
# ---------------------------------------------------------------------------------------------


@attrs.define
class ProviderInfo(_Wire):
    """Who the plugin is. ``name`` is the plugin id and must equal its directory name."""

    name: str = attrs.field(default="", metadata=_wire(_STR))
    display_name: str = attrs.field(default="", metadata=_wire(_STR))
    version: str = attrs.field(default="", metadata=_wire(_STR))
    type: str = attrs.field(default="", metadata=_wire(_STR))
    author: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    description: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    homepage: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    # Engine base URL; AOG prefixes it to each service's endpoint (required for local plugins).
    engine_host: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class ServiceCapabilities(_Wire):
    """What a service declares it can do beyond a single request/response."""

    support_streaming: bool = attrs.field(default=False, metadata=_wire(_BOOL, omitempty=True))
    support_bidirectional: bool = attrs.field(default=False, metadata=_wire(_BOOL, omitempty=True))


@attrs.define
class ServiceDef(_Wire):
    """One service a plugin serves (chat, embed, speech-to-text-ws, ...).

    ``config_ref`` ("flavor:service") names the built-in conversion template AOG applies
    between its own API shape and the plugin's native one. ``timeout`` is in seconds: 0 means
    AOG's default, a positive value is the deadline, a negative value means no deadline.
    """

    service_name: str = attrs.field(default="", metadata=_wire(_STR))
    task_type: str = attrs.field(default="", metadata=_wire(_STR))
    protocol: str = attrs.field(default="", metadata=_wire(_STR))
    expose_protocol: str = attrs.field(default="", metadata=_wire(_STR))
    endpoint: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    auth_type: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    default_model: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    support_models: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST, omitempty=True))
    config_ref: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    timeout: int = attrs.field(default=0, metadata=_wire(_INT, omitempty=True))
    middlewares: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST, omitempty=True))
    # Go's encoding/json never omits a struct value, so this is always emitted in JSON.
    capabilities: ServiceCapabilities = attrs.field(
        factory=ServiceCapabilities, metadata=_wire(_struct(ServiceCapabilities), omitempty=True)
    )

    def supports_streaming(self) -> bool:
        """True if the host may use InvokeServiceStream (WebSocket protocol or declared)."""
        return self.protocol.lower() in _WEBSOCKET_PROTOCOLS or self.capabilities.support_streaming

    def supports_bidirectional(self) -> bool:
        """True if the host may use InvokeServiceBidi (exposed as WebSocket or declared)."""
        return (
            self.expose_protocol.lower() in _WEBSOCKET_PROTOCOLS
            or self.capabilities.support_bidirectional
        )

    def get_invoke_mode(self) -> str:
        """The invocation mode AOG recommends for this service.

        Mirrors the SDK exactly: a WebSocket *protocol* (not expose_protocol) means
        bidirectional, else a declared streaming capability means streaming, else unary.
        """
        if self.protocol.lower() in _WEBSOCKET_PROTOCOLS:
            return INVOKE_MODE_BIDIRECTIONAL
        if self.capabilities.support_streaming:
            return INVOKE_MODE_STREAMING
        return INVOKE_MODE_UNARY


@attrs.define
class PlatformConfig(_Wire):
    """The executable for one ``<goos>_<goarch>`` platform, relative to the plugin root."""

    executable: str = attrs.field(default="", metadata=_wire(_STR))
    dependencies: list[str] = attrs.field(factory=list, metadata=_wire(_STR_LIST, omitempty=True))


@attrs.define
class OllamaResources(_Wire):
    """Resource paths of the reference Ollama plugin (``resources.ollama``)."""

    executable: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    models_dir: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    download_dir: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))


@attrs.define
class ResourcesConfig(_Wire):
    """Plugin-private resources (the host never reads them).

    ``data_dir`` may use ``${AOG_DATA_DIR}`` and friends. Any other key (for example a
    plugin's own ``my_engine:`` section) is kept verbatim in ``extra`` so the plugin can read
    it and so saving the manifest does not lose it.
    """

    data_dir: str = attrs.field(default="", metadata=_wire(_STR, omitempty=True))
    ollama: OllamaResources | None = attrs.field(
        default=None, metadata=_wire(_opt_struct(OllamaResources), omitempty=True)
    )
    extra: dict[str, Any] = attrs.field(factory=dict)

    _KNOWN = frozenset({"data_dir", "ollama"})

    def to_dict(self) -> dict[str, Any]:
        """Known keys as Go writes them, followed by the preserved extra sections."""
        out = super().to_dict()
        for key, value in self.extra.items():
            if key not in self._KNOWN:
                out[key] = _plain(value)
        return out

    @classmethod
    def _load_at(cls, data: object, where: str) -> Self:
        loaded = super()._load_at(data, where)
        assert isinstance(data, Mapping)  # checked by the base class
        loaded.extra = {str(k): _plain(v) for k, v in data.items() if str(k) not in cls._KNOWN}
        return loaded


def _plain(value: Any) -> Any:
    """Strip our YAML loader's number subclasses so the value dumps with any serializer."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _opt_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_PLATFORM_KEY_RE = re.compile(r"^[a-z0-9]+_[a-z0-9]+$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not safe as a single path component, or None if it is."""
    if not _SAFE_NAME_RE.match(name):
        return "may only contain letters, digits, '-', '_' and '.'"
    if ".." in name or name == ".":
        return "must not contain '..' or be '.'"
    return None


def _executable_problem(executable: str) -> str | None:
    """Why ``executable`` may not be run as ``<plugin dir>/<executable>``, or None."""
    if not executable:
        return "required (path of the plugin executable, relative to the plugin directory)"
    if "\0" in executable:
        return "must not contain NUL characters"
    posix = executable.replace("\\", "/")
    if posix.startswith("/") or _DRIVE_RE.match(posix):
        return f"must be a relative path inside the plugin directory, got {_describe(executable)}"
    normal = posixpath.normpath(posix)
    if normal == "." or normal == ".." or normal.startswith("../"):
        return f"must stay inside the plugin directory, got {_describe(executable)}"
    return None


@attrs.define
class PluginManifest(_Wire):
    """The whole ``plugin.yaml`` / ``plugin.json`` of a plugin.

    ``plugin_dir`` (where the manifest was found) and ``source_path`` (the file read) are
    runtime facts, never serialized and ignored by ``==`` so a saved-and-reloaded manifest
    compares equal to the original.
    """

    version: str = attrs.field(default="", metadata=_wire(_STR))
    provider: ProviderInfo = attrs.field(
        factory=ProviderInfo, metadata=_wire(_struct(ProviderInfo))
    )
    services: list[ServiceDef] = attrs.field(
        factory=list, metadata=_wire(_list_of(_struct(ServiceDef)))
    )
    platforms: dict[str, PlatformConfig] = attrs.field(
        factory=dict, metadata=_wire(_map_of(_struct(PlatformConfig)), omitempty=True)
    )
    resources: ResourcesConfig | None = attrs.field(
        default=None, metadata=_wire(_opt_struct(ResourcesConfig), omitempty=True)
    )
    plugin_dir: Path | None = attrs.field(default=None, eq=False, converter=_opt_path)
    source_path: Path | None = attrs.field(default=None, eq=False, converter=_opt_path)

    # -- lookups --------------------------------------------------------------------------

    def _where(self) -> str:
        if self.source_path is not None:
            return str(self.source_path)
        if self.plugin_dir is not None:
            return str(self.plugin_dir)
        return "<manifest>"

    def get_platform_config(self, goos: str, goarch: str) -> PlatformConfig:
        """The ``platforms["<goos>_<goarch>"]`` entry; AOG refuses to load without one."""
        key = f"{goos}_{goarch}"
        try:
            return self.platforms[key]
        except KeyError:
            have = ", ".join(sorted(self.platforms)) or "none"
            raise PlatformNotSupportedError(
                self._where(), f"platforms.{key}", f"platform not supported (declared: {have})"
            ) from None

    def get_service_by_name(self, service_name: str) -> ServiceDef:
        """The service named ``service_name``; raises ServiceNotFoundError if undeclared."""
        for service in self.services:
            if service.service_name == service_name:
                return service
        raise ServiceNotFoundError(service_name, self.list_service_names())

    def list_service_names(self) -> list[str]:
        """Service names in manifest order."""
        return [s.service_name for s in self.services]


    def support_model_list(self) -> list[RecommendModelData]:
        """The models this plugin offers, one row per service and model, as AOG's
        host builds its supported-model list (GetSupportModelList)."""
        prov = self.provider
        out: list[RecommendModelData] = []
        for svc in self.services:
            for model in svc.support_models or ([svc.default_model] if svc.default_model else []):
                out.append(RecommendModelData(
                    id=f"{prov.name}:{svc.service_name}:{model}",
                    service_name=svc.service_name, api_flavor=prov.name, flavor=prov.name,
                    name=model, service_provider_name=f"{prov.type}_{prov.name}_{svc.service_name}",
                    source=prov.type, auth_type=svc.auth_type,
                    is_default="true" if model == svc.default_model else "false",
                ))
        return out
    def executable_path(self, goos: str | None = None, goarch: str | None = None) -> Path:
        """Absolute path of the executable for this (or the given) platform.

        Built from ``plugin_dir`` like AOG builds it from ``<plugins>/<provider.name>``; the
        two agree because validation requires the directory name to equal provider.name.
        """
        if self.plugin_dir is None:
            raise ValueError("manifest has no plugin_dir (it was not loaded from a directory)")
        here_os, here_arch = current_platform()
        config = self.get_platform_config(goos or here_os, goarch or here_arch)
        return Path(os.path.abspath(self.plugin_dir / config.executable))

    # -- variables --------------------------------------------------------------------------

    def resolved_data_dir(
        self, *, aog_data_dir: str | os.PathLike[str] | None = None
    ) -> Path | None:
        """``resources.data_dir`` with variables expanded, or None if the manifest has none."""
        if self.resources is None or not self.resources.data_dir:
            return None
        text = expand_path_vars(
            self.resources.data_dir,
            aog_data_dir=aog_data_dir if aog_data_dir is not None else default_aog_data_dir(),
            plugin_dir=self._executable_dir(),
        )
        return Path(text)

    def expand_vars(self, text: str, *, aog_data_dir: str | os.PathLike[str] | None = None) -> str:
        """Expand ``${AOG_DATA_DIR}``, ``${DATA_DIR}``, ``${PLUGIN_DIR}``, ``${HOME}`` in text.

        Meant for a plugin reading its own ``resources`` sections: DATA_DIR is the expanded
        ``resources.data_dir``, PLUGIN_DIR the directory holding this platform's executable
        (as the AOG guide defines it), falling back to the plugin root.
        """
        aog = aog_data_dir if aog_data_dir is not None else default_aog_data_dir()
        data_dir = self.resolved_data_dir(aog_data_dir=aog)
        return expand_path_vars(
            text, aog_data_dir=aog, data_dir=data_dir, plugin_dir=self._executable_dir()
        )

    def _executable_dir(self) -> Path | None:
        if self.plugin_dir is None:
            return None
        try:
            return self.executable_path().parent
        except PlatformNotSupportedError:
            return Path(os.path.abspath(self.plugin_dir))

    # -- validation and persistence ---------------------------------------------------------

    def validate(self, *, dir_name: str | None = None) -> None:
        """Check what a host needs before running the plugin; raise FieldError on the first
        problem. ``dir_name``, when given, must equal provider.name (AOG finds the
        executable through provider.name, not through the folder it scanned)."""
        if not self.version:
            raise FieldError("version", 'required (manifest format version, e.g. "1.0")')
        name = self.provider.name
        if not name:
            raise FieldError("provider.name", "required (the plugin id)")
        problem = _name_problem(name)
        if problem:
            raise FieldError("provider.name", f"{problem}, got {_describe(name)}")
        if dir_name is not None and name != dir_name:
            raise FieldError(
                "provider.name",
                f"{_describe(name)} must equal the plugin directory name {_describe(dir_name)}",
            )
        if self.provider.type not in (PLUGIN_TYPE_LOCAL, PLUGIN_TYPE_REMOTE):
            raise FieldError(
                "provider.type",
                f'expected "local" or "remote", got {_describe(self.provider.type)}',
            )
        if not self.services:
            raise FieldError("services", "at least one service is required")
        seen: dict[str, int] = {}
        for i, service in enumerate(self.services):
            _validate_service(service, f"services[{i}]", seen, i)
        for key, config in self.platforms.items():
            if not _PLATFORM_KEY_RE.match(key):
                raise FieldError(
                    f"platforms.{key}",
                    'key must look like "<goos>_<goarch>" (e.g. "linux_amd64")',
                )
            problem = _executable_problem(config.executable)
            if problem:
                raise FieldError(f"platforms.{key}.executable", problem)

    def save(self, plugin_dir: str | os.PathLike[str], fmt: str = "yaml") -> Path:
        """Write ``plugin.yaml`` (fmt "yaml"/"yml") or ``plugin.json`` (fmt "json").

        The file is replaced atomically so a host scanning the folder never reads half of
        it. Returns the path written.
        """
        root = Path(plugin_dir)
        data = self.to_dict()
        if fmt in ("yaml", "yml"):
            path = root / MANIFEST_YAML
            # yaml.v3's omitempty drops an all-zero struct, which encoding/json keeps.
            for service in data.get("services", []):
                if service.get("capabilities") == {}:
                    del service["capabilities"]
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        elif fmt == "json":
            path = root / MANIFEST_JSON
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            raise ValueError(f'unsupported manifest format {fmt!r} (use "yaml", "yml" or "json")')
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path


_CONFIG_REF_HINT = '"flavor:service"'


def _validate_service(service: ServiceDef, where: str, seen: dict[str, int], index: int) -> None:
    if not service.service_name:
        raise FieldError(f"{where}.service_name", "required")
    first = seen.setdefault(service.service_name, index)
    if first != index:
        raise FieldError(
            f"{where}.service_name",
            f"duplicate service {_describe(service.service_name)} (also services[{first}])",
        )
    for key in ("protocol", "expose_protocol"):
        value: str = getattr(service, key)
        if value and value.lower() not in KNOWN_PROTOCOLS:
            known = ", ".join(sorted(p.upper() for p in KNOWN_PROTOCOLS))
            raise FieldError(
                f"{where}.{key}", f"expected one of {known} (any case), got {_describe(value)}"
            )
    ref = service.config_ref
    if not ref:
        raise FieldError(f"{where}.config_ref", f"required by AOG, format {_CONFIG_REF_HINT}")
    flavor, sep, name = ref.partition(":")
    # The flavor can become a file name (<plugin>/templates/<flavor>.yaml): keep it safe.
    if not sep or _name_problem(flavor) or _name_problem(name):
        raise FieldError(
            f"{where}.config_ref", f"expected {_CONFIG_REF_HINT}, got {_describe(ref)}"
        )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _RawInt(int):
    """An int that remembers its YAML source text (see _load_str)."""

    raw: str

    def __new__(cls, value: int, raw: str) -> Self:
        obj = super().__new__(cls, value)
        obj.raw = raw
        return obj


class _RawFloat(float):
    """A float that remembers its YAML source text (see _load_str)."""

    raw: str

    def __new__(cls, value: float, raw: str) -> Self:
        obj = super().__new__(cls, value)
        obj.raw = raw
        return obj


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader tuned to read manifests the way Go's yaml.v3 does.

    * only true/false are booleans (YAML 1.2), so ``auth_type: no`` stays a string;
    * dates stay strings; numbers keep their source text for string fields;
    * a key repeated in one mapping is an error, as in yaml.v3.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return _RawInt(loader.construct_yaml_int(node), node.value)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    return _RawFloat(loader.construct_yaml_float(node), node.value)


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ManifestLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_ManifestLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _parse(text: str, path: Path, is_yaml: bool) -> object:
    where = str(path)
    if is_yaml:
        try:
            return yaml.load(text, Loader=_ManifestLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            reason = exc.problem or exc.context or "syntax error"
            raise ManifestError(where, "", f"invalid YAML: {reason}", line=line) from None
        except yaml.YAMLError as exc:
            raise ManifestError(where, "", f"invalid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(where, "", f"invalid JSON: {exc.msg}", line=exc.lineno) from None


def load_manifest(
    plugin_dir: str | os.PathLike[str], *, require_dir_match: bool = True
) -> PluginManifest:
    """Load and validate ``<plugin_dir>/plugin.yaml``, else ``<plugin_dir>/plugin.json``.

    Unknown keys are ignored, as AOG ignores them. Every failure (missing file, syntax error,
    wrong type, unsafe value) raises :class:`ManifestError` naming the file and the field.
    ``require_dir_match=False`` skips the provider.name == directory name rule, for a plugin
    reading its own manifest from a checkout whose folder is named differently.
    """
    root = Path(plugin_dir)
    yaml_path, json_path = root / MANIFEST_YAML, root / MANIFEST_JSON
    if yaml_path.is_file():
        path, is_yaml = yaml_path, True
    elif json_path.is_file():
        path, is_yaml = json_path, False
    else:
        raise ManifestError(str(root), "", f"no {MANIFEST_YAML} or {MANIFEST_JSON} found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ManifestError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(str(path), "", "not valid UTF-8 text") from None
    data = _parse(text, path, is_yaml)
    if data is None:
        raise ManifestError(str(path), "", "file is empty")
    if not isinstance(data, Mapping):
        raise ManifestError(
            str(path), "", f"expected a mapping at top level, got {_describe(data)}"
        )
    dir_name = os.path.basename(os.path.abspath(root)) if require_dir_match else None
    try:
        manifest = PluginManifest.from_dict(data)
        manifest.validate(dir_name=dir_name)
    except FieldError as exc:
        raise ManifestError(str(path), exc.field, exc.reason) from None
    manifest.plugin_dir = root
    manifest.source_path = path
    return manifest


# ---------------------------------------------------------------------------------------------
# Platforms and path variables
# ---------------------------------------------------------------------------------------------

_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8": "arm64",
    "i386": "386",
    "i686": "386",
    "x86": "386",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def _goos(sys_platform: str) -> str:
    if sys_platform.startswith("linux"):
        return "linux"
    if sys_platform == "darwin":
        return "darwin"
    if sys_platform in ("win32", "cygwin", "msys"):
        return "windows"
    return re.sub(r"\d+$", "", sys_platform)  # e.g. freebsd14 -> freebsd


def _goarch(machine: str) -> str:
    lowered = machine.lower()
    return _GOARCH.get(lowered, lowered)


def current_platform() -> tuple[str, str]:
    """This machine as Go's ``(GOOS, GOARCH)``, the parts of a ``platforms`` key."""
    return _goos(sys.platform), _goarch(platform.machine())


_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_path_vars(
    text: str,
    *,
    aog_data_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    plugin_dir: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> str:
    """Expand the path variables AOG plugins use in ``resources``.

    ``${AOG_DATA_DIR}`` (AOG's data root), ``${DATA_DIR}`` (the plugin's expanded data_dir),
    ``${PLUGIN_DIR}`` (the directory of the plugin executable) and ``${HOME}`` (defaults to the
    user's home). A variable whose value is not known (data_dir/plugin_dir None) and any other
    ``${X}`` are left untouched, so a later stage can still expand them. Single pass: values
    are inserted literally.
    """
    values: dict[str, str | None] = {
        "AOG_DATA_DIR": os.fspath(aog_data_dir),
        "DATA_DIR": None if data_dir is None else os.fspath(data_dir),
        "PLUGIN_DIR": None if plugin_dir is None else os.fspath(plugin_dir),
        "HOME": os.fspath(home) if home is not None else str(Path.home()),
    }

    def substitute(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        return match.group(0) if value is None else value

    return _VAR_RE.sub(substitute, text)


def default_aog_data_dir(
    *, environ: Mapping[str, str] | None = None, goos: str | None = None
) -> Path:
    """AOG's data directory as plugins compute it (AOG does not pass it to them).

    ``AOG_DATA_DIR`` from the environment wins; otherwise Linux ``/var/lib/aog``, macOS
    ``~/Library/Application Support/AOG``, Windows ``%LOCALAPPDATA%/AOG`` falling back to
    ``%APPDATA%/AOG``. ``environ``/``goos`` exist for tests and default to this process.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("AOG_DATA_DIR")
    if explicit:
        return Path(explicit)
    system = goos or _goos(sys.platform)
    if system == "darwin":
        return Path.home() / "Library" / "Application Support" / "AOG"
    if system == "windows":
        base = env.get("LOCALAPPDATA") or env.get("APPDATA")
        return Path(base) / "AOG" if base else Path.home() / "AppData" / "Local" / "AOG"
    return Path("/var/lib/aog")
