"""Tests for aogstream.manifest: AOG plugin manifests and SDK payload types."""

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from aogstream import manifest as m
from aogstream.invocation import Mode, TimeoutPolicy

# The local-plugin example of the AOG plugin guide, plus the config_ref AOG requires.
GUIDE_EXAMPLE = """\
version: "1.0"
provider:
  name: my-engine-plugin
  display_name: My Engine Plugin
  version: 1.0.0
  type: local
  author: Your Name
  description: A custom AI engine plugin for AOG
  homepage: https://github.com/yourusername/my-engine-plugin
  engine_host: "http://127.0.0.1:8080"
services:
  - service_name: chat
    task_type: text-generation
    protocol: HTTP
    expose_protocol: HTTP
    endpoint: /api/chat
    auth_type: none
    default_model: my-model
    support_models:
      - my-model
    config_ref: ollama:chat
    capabilities:
      support_streaming: true
      support_bidirectional: false
platforms:
  linux_amd64:
    executable: bin/linux-amd64/my-engine-plugin
  darwin_arm64:
    executable: bin/darwin-arm64/my-engine-plugin
  windows_amd64:
    executable: bin/windows-amd64/my-engine-plugin.exe
resources:
  data_dir: "${AOG_DATA_DIR}/engine/my-engine"
  my_engine:
    executable: "${DATA_DIR}/bin/engine"
    models_dir: "${DATA_DIR}/models"
    download_dir: "${HOME}/Downloads"
"""


def minimal(name: str = "demo-plugin", **service: object) -> dict:
    """Smallest manifest that validates, as a dict."""
    svc: dict[str, object] = {"service_name": "chat", "config_ref": "ollama:chat"}
    svc.update(service)
    return {
        "version": "1.0",
        "provider": {"name": name, "type": "remote"},
        "services": [svc],
        "platforms": {"linux_amd64": {"executable": f"bin/linux-amd64/{name}"}},
    }


def write(root: Path, name: str, text: str, filename: str = "plugin.yaml") -> Path:
    plugin_dir = root / name
    plugin_dir.mkdir(parents=True, exist_ok=True)
    (plugin_dir / filename).write_text(text, encoding="utf-8")
    return plugin_dir


# -- loading ---------------------------------------------------------------------------------


def test_load_guide_example(tmp_path):
    plugin_dir = write(tmp_path, "my-engine-plugin", GUIDE_EXAMPLE)
    man = m.load_manifest(plugin_dir)

    assert man.version == "1.0"
    assert man.provider.name == "my-engine-plugin"
    assert man.provider.type == m.PLUGIN_TYPE_LOCAL
    assert man.provider.version == "1.0.0"
    assert man.provider.engine_host == "http://127.0.0.1:8080"
    assert man.list_service_names() == ["chat"]
    chat = man.get_service_by_name("chat")
    assert chat.config_ref == "ollama:chat"
    assert chat.support_models == ["my-model"]
    assert chat.capabilities.support_streaming is True
    assert chat.capabilities.support_bidirectional is False
    assert chat.timeout == 0
    assert set(man.platforms) == {"linux_amd64", "darwin_arm64", "windows_amd64"}
    assert man.platforms["windows_amd64"].executable.endswith(".exe")
    assert man.resources is not None
    assert man.resources.data_dir == "${AOG_DATA_DIR}/engine/my-engine"
    assert man.resources.ollama is None
    assert man.resources.extra["my_engine"]["models_dir"] == "${DATA_DIR}/models"
    assert man.plugin_dir == plugin_dir
    assert man.source_path == plugin_dir / "plugin.yaml"


def test_json_fallback(tmp_path):
    plugin_dir = write(tmp_path, "demo-plugin", json.dumps(minimal()), "plugin.json")
    man = m.load_manifest(plugin_dir)
    assert man.source_path == plugin_dir / "plugin.json"
    assert man.provider.name == "demo-plugin"


def test_yaml_preferred_over_json(tmp_path):
    plugin_dir = write(tmp_path, "demo-plugin", yaml.safe_dump(minimal()))
    from_json = minimal()
    from_json["version"] = "9.9"
    (plugin_dir / "plugin.json").write_text(json.dumps(from_json))
    man = m.load_manifest(plugin_dir)
    assert man.source_path == plugin_dir / "plugin.yaml"
    assert man.version == "1.0"


def test_unknown_keys_ignored(tmp_path):
    data = minimal(auth_fields=["api_key"], extra_header='{"X": "1"}', special_url="wss://x")
    data["something_new"] = {"nested": [1, 2]}
    data["provider"]["mascot"] = "owl"
    man = m.load_manifest(write(tmp_path, "demo-plugin", yaml.safe_dump(data)))
    assert man.services[0].service_name == "chat"
    assert "something_new" not in man.to_dict()


def test_yaml_scalars_read_like_go(tmp_path):
    # Unquoted numbers in string fields keep their text; only true/false are booleans.
    text = yaml.safe_dump(minimal(auth_type="placeholder")).replace("placeholder", "no")
    text = text.replace("version: '1.0'", "version: 1.10")
    man = m.load_manifest(write(tmp_path, "demo-plugin", text))
    assert man.version == "1.10"
    assert man.services[0].auth_type == "no"


def test_require_dir_match_can_be_disabled(tmp_path):
    plugin_dir = write(tmp_path, "checkout", yaml.safe_dump(minimal()))
    with pytest.raises(m.ManifestError):
        m.load_manifest(plugin_dir)
    assert m.load_manifest(plugin_dir, require_dir_match=False).provider.name == "demo-plugin"


def test_dot_plugin_dir_matches_cwd_name(tmp_path, monkeypatch):
    plugin_dir = write(tmp_path, "demo-plugin", yaml.safe_dump(minimal()))
    monkeypatch.chdir(plugin_dir)
    assert m.load_manifest(".").provider.name == "demo-plugin"


# -- validation errors -----------------------------------------------------------------------


def _yaml_with(mutate) -> str:
    data = minimal()
    mutate(data)
    return yaml.safe_dump(data)


def _set(path: str, value: object):
    def mutate(data: dict) -> None:
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()


def _second_service(ref: object):
    def mutate(data: dict) -> None:
        data["services"].append({"service_name": "embed", "config_ref": ref})

    return mutate


BROKEN = [
    pytest.param("version: '1.0'\nprovider: [oops\n", "", "invalid YAML", id="bad-yaml"),
    pytest.param(_yaml_with(_set("version", _DELETE)), "version", "required", id="no-version"),
    pytest.param(
        _yaml_with(_set("provider.name", _DELETE)), "provider.name", "required", id="no-name"
    ),
    pytest.param(
        _yaml_with(_set("provider.name", "other-plugin")),
        "provider.name",
        "plugin directory name",
        id="name-not-dir",
    ),
    pytest.param(
        _yaml_with(_set("provider.name", "..demo-plugin")), "provider.name", "'..'", id="dotdot"
    ),
    pytest.param(
        _yaml_with(_set("provider.name", "a/b")), "provider.name", "letters", id="slash-in-name"
    ),
    pytest.param(
        _yaml_with(_set("provider.type", "cloud")), "provider.type", '"cloud"', id="bad-type"
    ),
    pytest.param(
        _yaml_with(_set("services", {"service_name": "chat"})),
        "services",
        "expected a list",
        id="services-not-list",
    ),
    pytest.param(_yaml_with(_set("services", [])), "services", "at least one", id="no-services"),
    pytest.param(
        _yaml_with(_set("services.0.config_ref", _DELETE)),
        "services[0].config_ref",
        "required",
        id="missing-config-ref",
    ),
    pytest.param(
        _yaml_with(_second_service("ollama")),
        "services[1].config_ref",
        'expected "flavor:service", got "ollama"',
        id="bad-config-ref",
    ),
    pytest.param(
        _yaml_with(_set("services.0.config_ref", "../x:chat")),
        "services[0].config_ref",
        "flavor:service",
        id="config-ref-traversal",
    ),
    pytest.param(
        _yaml_with(_set("services.0.timeout", "abc")),
        "services[0].timeout",
        'expected an integer, got "abc"',
        id="timeout-not-int",
    ),
    pytest.param(
        _yaml_with(_set("services.0.protocol", "smtp")),
        "services[0].protocol",
        '"smtp"',
        id="bad-protocol",
    ),
    pytest.param(
        _yaml_with(_set("services.0.capabilities", {"support_streaming": "maybe"})),
        "services[0].capabilities.support_streaming",
        "boolean",
        id="flag-not-bool",
    ),
    pytest.param(
        _yaml_with(_set("services.0.service_name", "")),
        "services[0].service_name",
        "required",
        id="no-service-name",
    ),
    pytest.param(
        _yaml_with(_set("platforms.linux_amd64.executable", "../../bin/sh")),
        "platforms.linux_amd64.executable",
        "inside the plugin directory",
        id="exe-escapes",
    ),
    pytest.param(
        _yaml_with(_set("platforms.linux_amd64.executable", "/usr/bin/python3")),
        "platforms.linux_amd64.executable",
        "relative",
        id="exe-absolute",
    ),
    pytest.param(
        _yaml_with(_set("platforms.linux_amd64.executable", "")),
        "platforms.linux_amd64.executable",
        "required",
        id="exe-empty",
    ),
    pytest.param(
        _yaml_with(_set("platforms", {"linux": {"executable": "bin/x"}})),
        "platforms.linux",
        "<goos>_<goarch>",
        id="bad-platform-key",
    ),
    pytest.param(
        _yaml_with(_second_service("ollama:chat")).replace("embed", "chat"),
        "services[1].service_name",
        "duplicate",
        id="duplicate-service",
    ),
    pytest.param("- just\n- a list\n", "", "top level", id="not-a-mapping"),
    pytest.param("", "", "empty", id="empty-file"),
]


@pytest.mark.parametrize(("text", "field", "reason"), BROKEN)
def test_validation_errors_name_file_and_field(tmp_path, text, field, reason):
    plugin_dir = write(tmp_path, "demo-plugin", text)
    with pytest.raises(m.ManifestError) as info:
        m.load_manifest(plugin_dir)
    err = info.value
    assert err.path == str(plugin_dir / "plugin.yaml")
    assert err.field == field
    assert reason in err.reason
    message = str(err)
    assert message.startswith(str(plugin_dir / "plugin.yaml"))
    assert f": {field}: " in message if field else reason in message


def test_error_message_format():
    err = m.ManifestError(
        "plugins/foo/plugin.yaml", "services[1].config_ref", 'expected "flavor:service", got "x"'
    )
    assert str(err) == (
        'plugins/foo/plugin.yaml: services[1].config_ref: expected "flavor:service", got "x"'
    )
    assert isinstance(err, ValueError)


def test_yaml_error_reports_line(tmp_path):
    text = 'version: "1.0"\nprovider:\n  name: demo-plugin\n  type: [remote\n'
    with pytest.raises(m.ManifestError) as info:
        m.load_manifest(write(tmp_path, "demo-plugin", text))
    assert info.value.line is not None and info.value.line >= 4
    assert f"plugin.yaml:{info.value.line}: invalid YAML" in str(info.value)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    text = yaml.safe_dump(minimal()) + "version: '2.0'\n"
    with pytest.raises(m.ManifestError, match="duplicate key"):
        m.load_manifest(write(tmp_path, "demo-plugin", text))


def test_bad_json_reports_line(tmp_path):
    plugin_dir = write(
        tmp_path, "demo-plugin", '{\n  "version": "1.0"\n  "provider": {}\n}\n', "plugin.json"
    )
    with pytest.raises(m.ManifestError) as info:
        m.load_manifest(plugin_dir)
    assert info.value.line == 3
    assert "invalid JSON" in info.value.reason


def test_missing_manifest(tmp_path):
    plugin_dir = tmp_path / "demo-plugin"
    plugin_dir.mkdir()
    with pytest.raises(m.ManifestError, match=r"no plugin\.yaml or plugin\.json") as info:
        m.load_manifest(plugin_dir)
    assert info.value.path == str(plugin_dir)


# -- save / round trip -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "filename"), [("yaml", "plugin.yaml"), ("yml", "plugin.yaml"), ("json", "plugin.json")]
)
def test_save_load_round_trip(tmp_path, fmt, filename):
    original = m.load_manifest(write(tmp_path / "src", "my-engine-plugin", GUIDE_EXAMPLE))
    original.services.append(
        m.ServiceDef(
            service_name="speech-to-text-ws",
            protocol="GRPC_STREAM",
            expose_protocol="WEBSOCKET",
            config_ref="openvino:speech-to-text-ws",
            timeout=-1,
        )
    )
    target = tmp_path / "dst" / "my-engine-plugin"
    written = original.save(target, fmt)
    assert written == target / filename
    assert not list(target.glob(".*.tmp"))

    reloaded = m.load_manifest(target)
    assert reloaded == original
    assert reloaded.resources is not None
    assert reloaded.resources.extra == original.resources.extra
    if fmt == "json":
        text = written.read_text()
        assert text.startswith("{\n  ")
        assert json.loads(text) == original.to_dict()


def test_save_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="toml"):
        m.PluginManifest.from_dict(minimal()).save(tmp_path, "toml")


def test_manifest_to_dict_omitempty():
    data = m.PluginManifest.from_dict(
        {"version": "1.0", "provider": {"name": "x", "type": "remote"}, "services": [{}]}
    ).to_dict()
    assert data == {
        "version": "1.0",
        "provider": {"name": "x", "display_name": "", "version": "", "type": "remote"},
        "services": [
            {
                "service_name": "",
                "task_type": "",
                "protocol": "",
                "expose_protocol": "",
                "capabilities": {},
            }
        ],
    }


# -- capability helpers ----------------------------------------------------------------------

CAPABILITY_CASES = [
    # protocol, expose_protocol, streaming, bidi -> supports_streaming, supports_bidi, mode
    ("HTTP", "HTTP", False, False, False, False, "unary"),
    ("HTTP", "HTTP", True, False, True, False, "streaming"),
    ("WEBSOCKET", "HTTP", False, False, True, False, "bidirectional"),
    ("websocket", "", False, False, True, False, "bidirectional"),
    ("wss", "", False, False, True, False, "bidirectional"),
    ("GRPC_STREAM", "WEBSOCKET", False, False, False, True, "unary"),
    ("GRPC_STREAM", "websocket", True, False, True, True, "streaming"),
    ("HTTP", "WSS", False, False, False, True, "unary"),
    ("HTTP", "HTTP", False, True, False, True, "unary"),
    ("", "", True, True, True, True, "streaming"),
]


@pytest.mark.parametrize(
    ("protocol", "expose", "streaming", "bidi", "want_stream", "want_bidi", "want_mode"),
    CAPABILITY_CASES,
)
def test_capability_helpers(protocol, expose, streaming, bidi, want_stream, want_bidi, want_mode):
    svc = m.ServiceDef(
        service_name="s",
        protocol=protocol,
        expose_protocol=expose,
        capabilities=m.ServiceCapabilities(support_streaming=streaming, support_bidirectional=bidi),
    )
    assert svc.supports_streaming() is want_stream
    assert svc.supports_bidirectional() is want_bidi
    assert svc.get_invoke_mode() == want_mode


@pytest.mark.parametrize(
    ("timeout", "mode", "want"),
    [
        (0, Mode.UNARY, 60.0),
        (0, Mode.STREAM, 300.0),
        (0, Mode.BIDI, None),
        (30, Mode.UNARY, 30.0),
        (30, Mode.STREAM, 30.0),
        (30, Mode.BIDI, None),
        (-1, Mode.UNARY, None),
        (-1, Mode.STREAM, None),
    ],
)
def test_a_services_timeout_gives_aogs_deadline_for_each_mode(timeout, mode, want):
    """The one timeout rule (`invocation.TimeoutPolicy`) with AOG's defaults."""
    assert TimeoutPolicy().for_call(mode, timeout) == want


def test_get_platform_config_hit_and_miss(tmp_path):
    man = m.load_manifest(write(tmp_path, "my-engine-plugin", GUIDE_EXAMPLE))
    hit = man.get_platform_config("darwin", "arm64")
    assert hit.executable == "bin/darwin-arm64/my-engine-plugin"
    with pytest.raises(m.PlatformNotSupportedError) as info:
        man.get_platform_config("linux", "riscv64")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, m.ManifestError)
    assert info.value.field == "platforms.linux_riscv64"
    assert "linux_riscv64" in str(info.value)
    assert str(info.value).startswith(str(man.source_path))


def test_get_service_by_name_miss(tmp_path):
    man = m.PluginManifest.from_dict(minimal())
    assert man.get_service_by_name("chat").config_ref == "ollama:chat"
    with pytest.raises(m.ServiceNotFoundError, match='service "embed" not found') as info:
        man.get_service_by_name("embed")
    assert isinstance(info.value, LookupError)
    assert info.value.available == ["chat"]


def test_current_platform_and_executable_path(tmp_path, monkeypatch):
    monkeypatch.setattr(m.sys, "platform", "linux")
    monkeypatch.setattr(m.platform, "machine", lambda: "aarch64")
    assert m.current_platform() == ("linux", "arm64")
    monkeypatch.setattr(m.sys, "platform", "win32")
    monkeypatch.setattr(m.platform, "machine", lambda: "AMD64")
    assert m.current_platform() == ("windows", "amd64")
    monkeypatch.setattr(m.sys, "platform", "darwin")
    monkeypatch.setattr(m.platform, "machine", lambda: "arm64")
    assert m.current_platform() == ("darwin", "arm64")
    monkeypatch.setattr(m.sys, "platform", "linux")
    monkeypatch.setattr(m.platform, "machine", lambda: "x86_64")
    assert m.current_platform() == ("linux", "amd64")

    plugin_dir = write(tmp_path, "my-engine-plugin", GUIDE_EXAMPLE)
    man = m.load_manifest(plugin_dir)
    exe = man.executable_path()
    assert exe.is_absolute()
    assert exe == plugin_dir.absolute() / "bin" / "linux-amd64" / "my-engine-plugin"
    with pytest.raises(m.PlatformNotSupportedError):
        man.executable_path("linux", "arm64")


# -- path variables --------------------------------------------------------------------------


def test_expand_path_vars():
    text = "${AOG_DATA_DIR}|${DATA_DIR}|${PLUGIN_DIR}|${HOME}|${OTHER}|$HOME"
    out = m.expand_path_vars(
        text, aog_data_dir="/var/lib/aog", data_dir="/d", plugin_dir="/p", home="/h"
    )
    assert out == "/var/lib/aog|/d|/p|/h|${OTHER}|$HOME"


def test_expand_path_vars_defaults():
    out = m.expand_path_vars("${DATA_DIR}/${PLUGIN_DIR}/${HOME}", aog_data_dir=Path("/a"))
    assert out == f"${{DATA_DIR}}/${{PLUGIN_DIR}}/{Path.home()}"


def test_default_aog_data_dir():
    assert m.default_aog_data_dir(environ={"AOG_DATA_DIR": "/x"}, goos="linux") == Path("/x")
    assert m.default_aog_data_dir(environ={}, goos="linux") == Path("/var/lib/aog")
    assert m.default_aog_data_dir(environ={}, goos="darwin") == (
        Path.home() / "Library" / "Application Support" / "AOG"
    )
    env = {"LOCALAPPDATA": "L", "APPDATA": "R"}
    assert m.default_aog_data_dir(environ=env, goos="windows") == Path("L") / "AOG"
    assert m.default_aog_data_dir(environ={"APPDATA": "R"}, goos="windows") == Path("R") / "AOG"


def test_resolved_data_dir_and_expand_vars(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "current_platform", lambda: ("linux", "amd64"))
    plugin_dir = write(tmp_path, "my-engine-plugin", GUIDE_EXAMPLE)
    man = m.load_manifest(plugin_dir)
    assert man.resolved_data_dir(aog_data_dir="/srv/aog") == Path("/srv/aog/engine/my-engine")
    section = man.resources.extra["my_engine"]
    assert man.expand_vars(section["models_dir"], aog_data_dir="/srv/aog") == (
        "/srv/aog/engine/my-engine/models"
    )
    assert man.expand_vars("${PLUGIN_DIR}", aog_data_dir="/srv/aog") == os.fspath(
        plugin_dir.absolute() / "bin" / "linux-amd64"
    )
    assert m.PluginManifest.from_dict(minimal()).resolved_data_dir() is None


def test_resolved_data_dir_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AOG_DATA_DIR", str(tmp_path))
    man = m.PluginManifest(resources=m.ResourcesConfig(data_dir="${AOG_DATA_DIR}/engine/x"))
    assert man.resolved_data_dir() == tmp_path / "engine" / "x"


# -- payload types ---------------------------------------------------------------------------


def test_progress_response_omitempty():
    assert m.ProgressResponse(status="pulling manifest").to_dict() == {"status": "pulling manifest"}
    full = m.ProgressResponse(status="downloading", digest="sha256:1", total=10, completed=5)
    assert m.ProgressResponse.from_dict(full.to_dict()) == full


def test_pull_model_request_stream_pointer_bool():
    assert m.PullModelRequest(model="qwen3:0.6b").to_dict() == {"model": "qwen3:0.6b"}
    assert m.PullModelRequest(model="a", stream=False).to_dict() == {"model": "a", "stream": False}
    assert m.PullModelRequest(model="a", stream=True, model_type="chat").to_dict() == {
        "model": "a",
        "stream": True,
        "model_type": "chat",
    }
    assert m.PullModelRequest(model="a", insecure=False).to_dict() == {"model": "a"}
    assert m.PullModelRequest.from_dict({"model": "a"}).stream is None
    assert m.PullModelRequest.from_dict({"model": "a", "stream": False}).stream is False


def test_model_info_time_and_details():
    info = m.ModelInfo.from_dict(
        {
            "name": "qwen3:0.6b",
            "model": "qwen3:0.6b",
            "modified_at": "2025-04-29T08:15:30.123456789+08:00",
            "size": 522653767,
            "details": {"family": "qwen3", "families": ["qwen3"]},
            "unknown": 1,
        }
    )
    tz = timezone(timedelta(hours=8))
    assert info.modified_at == datetime(2025, 4, 29, 8, 15, 30, 123456, tzinfo=tz)
    out = info.to_dict()
    assert out["modified_at"] == "2025-04-29T08:15:30.123456+08:00"
    assert "digest" not in out
    assert out["details"]["families"] == ["qwen3"]
    assert m.ModelInfo(modified_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)).to_dict() == {
        "name": "",
        "model": "",
        "modified_at": "2024-01-02T03:04:05Z",
        "size": 0,
    }
    assert m.ModelInfo().to_dict()["modified_at"] == "0001-01-01T00:00:00Z"
    with pytest.raises(m.FieldError, match="modified_at"):
        m.ModelInfo.from_dict({"modified_at": "yesterday"})


def test_list_and_unload_payloads():
    listed = m.ListResponse.from_dict({"models": [{"name": "a"}, {"name": "b"}]})
    assert isinstance(listed, m.ListModelsResponse)
    assert [x.name for x in listed.models] == ["a", "b"]
    assert m.UnloadModelRequest(models=["a"]).to_dict() == {"models": ["a"]}
    assert m.DeleteRequest(model="a").to_dict() == {"model": "a"}
    assert m.LoadRequest is m.LoadModelRequest


def test_misc_payload_omitempty():
    assert m.HealthStatus(status="UP").to_dict() == {"status": "UP"}
    assert m.EngineStatus(name="e", version="1", status=m.STATUS_RUNNING).to_dict() == {
        "name": "e",
        "version": "1",
        "status": "running",
    }
    assert "device_type" not in m.EngineConfig().to_dict()
    assert m.EngineRecommendConfig().to_dict()["device_type"] == ""
    assert m.InvokeResponse(response_body=b"{}").to_dict() == {"response_body": "e30="}
    req = m.InvokeRequest.from_dict({"service_name": "chat", "request_body": "e30="})
    assert req.request_body == b"{}"
    assert m.Credentials(type="apikey", values={"api_key": "k"}).to_dict() == {
        "type": "apikey",
        "values": {"api_key": "k"},
    }


def test_recommend_model_data_defaults_and_class_key():
    data = m.RecommendModelData.from_dict({"id": "p:chat:m", "class": ["chat"], "think": True})
    assert data.method == "POST"
    assert data.is_default == "false"
    assert data.class_ == ["chat"]
    out = data.to_dict()
    assert out["class"] == ["chat"]
    assert "class_" not in out
    assert out["think"] is True


def test_from_dict_type_errors_name_key():
    with pytest.raises(m.FieldError) as info:
        m.ListModelsResponse.from_dict({"models": [{"size": "big"}]})
    assert info.value.field == "models[0].size"


def test_plugin_error():
    err = m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED, "pull failed", "disk full")
    assert str(err) == "Plugin error (code=3001): pull failed"
    assert (err.code, err.message, err.details) == (3001, "pull failed", "disk full")
    assert err.to_dict() == {"code": 3001, "message": "pull failed", "details": "disk full"}
    assert m.PluginError(11, "boom").to_dict() == {"code": 11, "message": "boom"}
    with pytest.raises(m.PluginError, match=r"code=12"):
        raise m.PluginError.from_dict({"code": m.ERR_CODE_UNAVAILABLE, "message": "down"})


def exported(prefix: str) -> dict[str, object]:
    """The module's public constants whose names start with `prefix`."""
    return {name: getattr(m, name) for name in m.__all__ if name.startswith(prefix)}


def test_every_exported_name_exists():
    for name in m.__all__:
        assert hasattr(m, name), name


def test_error_codes_are_the_sdks_and_distinct():
    """AOG's spec §1.4 (plugin-sdk/types/common.go): 0..14 in this order, then families
    1000–1005 plugin, 2000–2006 engine, 3000–3005 model, 4000–4006 service. Distinct,
    because the host reads a plugin's code back into one meaning."""
    general = ["SUCCESS", "UNKNOWN", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
               "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
               "UNAUTHENTICATED"]
    assert [getattr(m, f"ERR_CODE_{name}") for name in general] == list(range(15))
    codes = exported("ERR_CODE_")
    assert len(set(codes.values())) == len(codes), codes
    families = {"PLUGIN": range(1000, 1006), "ENGINE": range(2000, 2007),
                "MODEL": range(3000, 3006), "SERVICE": range(4000, 4007)}
    for name, code in codes.items():
        family = name.removeprefix("ERR_CODE_").split("_")[0]
        assert code in families.get(family, range(15)), (name, code)
    # the plugin, engine and model families are complete, as the spec's ranges say
    for family in ("PLUGIN", "ENGINE", "MODEL"):
        assert sorted(v for n, v in codes.items() if n.startswith(f"ERR_CODE_{family}_")) \
            == list(families[family]), family
    assert m.ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED == 4006


def test_name_constants_are_the_wire_values_of_aogs_spec():
    """The strings and numbers a manifest, an RPC or the plugin list carries, as AOG's spec
    spells them (each set distinct: one value, one meaning)."""
    # §1.6: provider.type "local" | "remote"
    assert (m.PLUGIN_TYPE_LOCAL, m.PLUGIN_TYPE_REMOTE) == ("local", "remote")
    # §1.6: protocol "HTTP"/"HTTPS"/"GRPC"/"GRPC_STREAM"/"WEBSOCKET"/"WSS", case-insensitive;
    # kept lower-case so a manifest's value compares after .lower()
    protocols = exported("PROTOCOL_")
    assert set(protocols.values()) == m.KNOWN_PROTOCOLS
    assert all(p == p.lower() for p in m.KNOWN_PROTOCOLS)
    assert {"HTTP", "HTTPS", "GRPC", "GRPC_STREAM", "WEBSOCKET", "WSS"} <= {
        p.upper() for p in m.KNOWN_PROTOCOLS}
    # §4: AOG's services, plus the SDK's vision and text-to-video
    services = exported("SERVICE_TYPE_")
    assert len(set(services.values())) == len(services)
    assert set(services.values()) == {
        "chat", "models", "generate", "embed", "rerank", "text-to-image", "text-to-speech",
        "speech-to-text", "text-to-video", "image-to-video", "image-to-image",
        "speech-to-text-ws", "vision"}
    assert m.SERVICE_TYPE_SPEECH_TO_TEXT_WS == "speech-to-text-ws"
    # §1.6 auth_type none/apikey/token/oauth/sign
    assert set(exported("AUTH_TYPE_").values()) == {"none", "apikey", "token", "oauth", "sign"}
    assert len(exported("AUTH_TYPE_")) == 5
    # §1.7: the host's plugin status 1 running, 2 stopped, 3 unload
    assert (m.PLUGIN_STATUS_RUNNING, m.PLUGIN_STATUS_STOPPED, m.PLUGIN_STATUS_UNLOAD) == (1, 2, 3)
    # §5: an unset timeout is 60 s unary, 300 s for a stream
    assert (m.DEFAULT_UNARY_TIMEOUT_S, m.DEFAULT_STREAM_TIMEOUT_S) == (60, 300)
    # §1.6: <dir>/plugin.yaml, else <dir>/plugin.json
    assert (m.MANIFEST_YAML, m.MANIFEST_JSON) == ("plugin.yaml", "plugin.json")
    # device types (Nvidia/AMD/Intel Arc/none), invocation modes, operation statuses
    assert set(exported("GPU_TYPE_").values()) == {"none", "nvidia", "amd", "intel_arc"}
    assert len(exported("GPU_TYPE_")) == 4
    modes = exported("INVOKE_MODE_")
    assert sorted(modes.values()) == ["bidirectional", "streaming", "unary"]
    statuses = exported("STATUS_")
    assert len(set(statuses.values())) == len(statuses) == 5
    # Go's zero time.Time, what an unset ModelInfo.modified_at is on the wire
    assert m.ZERO_TIME == datetime(1, 1, 1, tzinfo=UTC)
