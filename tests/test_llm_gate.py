"""The plugin LLM trust gate as a table, and the config file it reads.

Pure code: `policy_from_config` and `check_overrides` on parsed YAML (written from the
same text an operator would put in `<data dir>/config.yaml`), and `PluginConfigFile`
on real files in a temporary folder (re-read when changed; unreadable or unparsable
files reported, so the gate fails closed). The same rows are proven across the process
boundary in tests/test_plugin_llm.py.
"""

from __future__ import annotations

import os

import pytest
import yaml

from aogstream.host.llm_gate import (
    DENY_ALL,
    Allowlist,
    Granted,
    TrustDenied,
    check_overrides,
    clamp_max_tokens,
    clamp_timeout,
    coerce_allowlist,
    policy_from_config,
)
from aogstream.plugin_config import PluginConfigFile

PID = "probe"


def llm(block: str, plugin: str = PID) -> dict:
    text = f"plugins:\n  entries:\n    {plugin}:\n      llm:\n" + "".join(
        f"        {line}\n" for line in block.strip().splitlines())
    return yaml.safe_load(text)


# (name, config, overrides, expected Granted or the config key named by the denial)
ROWS = [
    ("no overrides pass with no config", None, {}, Granted()),
    ("provider denied by default", None, {"provider": "x"},
     "plugins.entries.probe.llm.allow_provider_override"),
    ("model denied by default", None, {"model": "m"},
     "plugins.entries.probe.llm.allow_model_override"),
    ("agent id denied by default", None, {"agent_id": "a"},
     "plugins.entries.probe.llm.allow_agent_id_override"),
    ("profile denied by default", None, {"profile": "p"},
     "plugins.entries.probe.llm.allow_profile_override"),
    ("model allowed by flag", llm("allow_model_override: true"), {"model": " Big-M "},
     Granted(model="Big-M")),
    ("a model grant is not a provider grant", llm("allow_model_override: true"),
     {"provider": "x", "model": "m"}, "plugins.entries.probe.llm.allow_provider_override"),
    ("the string 'false' is false", llm("allow_model_override: 'false'"), {"model": "m"},
     "plugins.entries.probe.llm.allow_model_override"),
    ("the string 'yes' is true", llm("allow_model_override: 'yes'"), {"model": "m"},
     Granted(model="m")),
    ("allowlist hit, case-insensitive, case kept",
     llm("allow_provider_override: true\nallowed_providers: [llamacpp-plugin]"),
     {"provider": "LlamaCpp-Plugin"}, Granted(provider="LlamaCpp-Plugin")),
    ("allowlist miss", llm("allow_provider_override: true\nallowed_providers: [a, b]"),
     {"provider": "c"}, "plugins.entries.probe.llm.allowed_providers"),
    ("model allowlist miss", llm("allow_model_override: true\nallowed_models: [m1]"),
     {"model": "m2"}, "plugins.entries.probe.llm.allowed_models"),
    ("star allows anything", llm("allow_model_override: true\nallowed_models: ['*']"),
     {"model": "anything/at-all"}, Granted(model="anything/at-all")),
    ("star with specifics still allows anything",
     llm("allow_model_override: true\nallowed_models: ['*', m1]"), {"model": "m9"},
     Granted(model="m9")),
    ("a star inside a value is literal",
     llm("allow_model_override: true\nallowed_models: ['openai/*']"),
     {"model": "openai/gpt"}, "plugins.entries.probe.llm.allowed_models"),
    ("empty list denies every value", llm("allow_model_override: true\nallowed_models: []"),
     {"model": "m"}, "plugins.entries.probe.llm.allowed_models"),
    ("a bare string is no allowlist", llm("allow_model_override: true\nallowed_models: m1"),
     {"model": "m2"}, Granted(model="m2")),
    ("allowlist without its flag denies", llm("allowed_models: ['*']"), {"model": "m"},
     "plugins.entries.probe.llm.allow_model_override"),
    ("another plugin's grant is not ours", llm("allow_model_override: true", plugin="other"),
     {"model": "m"}, "plugins.entries.probe.llm.allow_model_override"),
    ("provider is checked before model", None, {"model": "m", "provider": "p"},
     "plugins.entries.probe.llm.allow_provider_override"),
    ("everything granted", llm("allow_provider_override: true\nallow_model_override: true\n"
                               "allow_agent_id_override: true\nallow_profile_override: true"),
     {"provider": " p ", "model": "m", "agent_id": " a ", "profile": " work "},
     Granted("p", "m", " a ", "work")),
    ("llm block not a mapping", yaml.safe_load("plugins: {entries: {probe: {llm: yes}}}"),
     {"model": "m"}, "plugins.entries.probe.llm.allow_model_override"),
    ("entries not a mapping", yaml.safe_load("plugins: {entries: [probe]}"),
     {"model": "m"}, "plugins.entries.probe.llm.allow_model_override"),
]


@pytest.mark.parametrize(("config", "overrides", "expected"),
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_gate_table(config, overrides, expected):
    policy = policy_from_config(config, PID)
    if isinstance(expected, Granted):
        assert check_overrides(policy, PID, **overrides) == expected
    else:
        with pytest.raises(TrustDenied) as info:
            check_overrides(policy, PID, **overrides)
        assert info.value.key == expected
        assert expected in str(info.value)
        assert isinstance(info.value, PermissionError)


def test_unreadable_config_denies_and_says_why():
    policy = policy_from_config(llm("allow_model_override: true"), PID,
                                problem="config.yaml is not valid YAML (line 3)")
    with pytest.raises(TrustDenied) as info:
        check_overrides(policy, PID, model="m")
    assert "not valid YAML" in str(info.value)
    assert check_overrides(policy, PID) == Granted()


def test_empty_plugin_id_gets_no_grants():
    data = {"plugins": {"entries": {"": {"llm": {"allow_model_override": True}}}}}
    assert policy_from_config(data, "") == DENY_ALL


def test_nested_plugin_ids_are_whole_keys():
    data = {"plugins": {"entries": {"image_gen/openai": {"llm": {"allow_model_override": True}}}}}
    assert policy_from_config(data, "image_gen/openai").allow_model_override
    assert not policy_from_config(data, "openai").allow_model_override


@pytest.mark.parametrize(("raw", "expected"), [
    (None, Allowlist(None, False)),
    ("openrouter", Allowlist(None, False)),
    (["A", " b ", 3, ""], Allowlist(frozenset({"a", "b"}), False)),
    (["*"], Allowlist(frozenset(), True)),
    (["*", "x"], Allowlist(frozenset({"x"}), True)),
    ([], Allowlist(frozenset(), False)),
])
def test_allowlist_coercion(raw, expected):
    assert coerce_allowlist(raw) == expected


def test_request_shaping_is_clamped():
    assert clamp_max_tokens(None) is None
    assert clamp_max_tokens(0) == 1
    assert clamp_max_tokens(10**9) == 4096
    assert clamp_timeout(None, 60.0) == 60.0
    assert clamp_timeout(0.01, 60.0) == 1.0
    assert clamp_timeout(10**6, 60.0) == 600.0
    with pytest.raises(ValueError):
        clamp_max_tokens("many")
    with pytest.raises(ValueError):
        clamp_timeout(True, 60.0)


# ---- the file ------------------------------------------------------------------------------


def test_missing_file_is_an_empty_policy(tmp_path):
    snap = PluginConfigFile.in_data_dir(tmp_path).read()
    assert snap.data == {} and snap.error == ""


def test_file_is_reread_when_it_changes_and_keeps_other_keys(tmp_path):
    cfg = PluginConfigFile.in_data_dir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text("plugins:\n  configs: {native-x: {a: 1}}\n  entries: {}\n")
    first = cfg.read()
    assert first.section("plugins", "configs", "native-x") == {"a": 1}
    assert cfg.read() is first  # unchanged: the cached parse
    path.write_text("plugins:\n  entries:\n    probe: {llm: {allow_model_override: true}}\n")
    os.utime(path, ns=(1, first_mtime_plus(path)))
    second = cfg.read()
    assert policy_from_config(second.data, PID).allow_model_override


def first_mtime_plus(path):
    return path.stat().st_mtime_ns + 1_000_000_000


@pytest.mark.parametrize("text", ["plugins: [unclosed\n", "- just\n- a list\n"])
def test_unparsable_file_is_reported(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    snap = PluginConfigFile.in_data_dir(tmp_path).read()
    assert snap.error and snap.data == {}
    assert str(tmp_path) not in snap.error  # no server path in what plugins are told


def test_unreadable_file_is_reported(tmp_path):
    (tmp_path / "config.yaml").mkdir()  # unreadable as a file, even for root
    snap = PluginConfigFile.in_data_dir(tmp_path).read()
    assert "cannot read" in snap.error
