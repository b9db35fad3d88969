"""Flavor templates: load AOG-format YAML, compile every step once, keep them by flavor name.

A flavor template is the recipe for translating one API dialect (openai, ollama, ...) to and
from the AOG pivot shape.  Loading compiles each jsonata expression exactly once, so the hot
path (one stream chunk at a time) only evaluates already-compiled expressions.  Every error
names the file, the service, the block and the step, because a template author has nothing
else to go on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonata
import yaml

from aogstream.convert.fast import lookup
from aogstream.convert.time_functions import from_millis, millis, to_millis

BLOCKS = (
    "request_to_aog",
    "request_from_aog",
    "response_to_aog",
    "response_from_aog",
    "stream_response_to_aog",
    "stream_response_from_aog",
)
CONVERTERS = ("jsonata", "header", "action_if")
BUILTIN_DIR = Path(__file__).parent / "templates"


class TemplateError(Exception):
    """A flavor template that cannot be used; the message names file, service, block and step."""


class UnknownFlavorError(TemplateError):
    """A flavor name no template answers to; the message lists the known flavors."""


def canonical_header(name: str) -> str:
    """Header names compare case-insensitively; store them in one spelling (Content-Type)."""
    return "-".join(part.capitalize() for part in name.split("-"))


@dataclass(frozen=True)
class Step:
    """One compiled pipeline step; `where` is the human-readable location for error messages."""

    converter: str
    where: str
    expr: jsonata.Jsonata | None = None
    header: dict[str, Any] | None = None
    pattern: str | re.Pattern[str] | None = None
    trim: bool = False
    # The plain-Python twin of `expr` (aogstream.convert.fast), when the text has one.
    fast: Callable[[Any, dict[str, Any]], Any] | None = None
    # action_if with a plain pattern: bytes that must occur in a body for it to match at all.
    needle: bytes | None = None


@dataclass(frozen=True)
class Pipeline:
    """One conversion block: body-changing steps, header steps and stream prologue/epilogue."""

    body_steps: tuple[Step, ...] = ()
    header_steps: tuple[Step, ...] = ()
    prologue: tuple[str, ...] = ()
    epilogue: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """An empty block means passthrough: the body is never parsed."""
        return not self.body_steps


EMPTY = Pipeline()


@dataclass(frozen=True)
class FlavorService:
    """A service of a flavor: its routing facts (raw YAML keys) and its six pipelines."""

    name: str
    flavor: str
    info: dict[str, Any]
    pipelines: dict[str, Pipeline]

    def pipeline(self, block: str) -> Pipeline:
        """Missing blocks are passthrough, as in AOG."""
        return self.pipelines.get(block, EMPTY)


@dataclass(frozen=True)
class Flavor:
    """A loaded flavor template."""

    name: str
    path: str
    version: str
    info: dict[str, Any]
    services: dict[str, FlavorService] = field(default_factory=dict)

    def service(self, name: str) -> FlavorService:
        """Look a service up, failing with the list of services this flavor has."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise TemplateError(
                f"flavor {self.name!r} ({self.path}) has no service {name!r}; it has: {known}"
            ) from None


def _compile_step(raw: Any, where: str, fast: bool = True) -> Step:
    """Validate and compile one `{converter, config}` step (with its fast twin if `fast`)."""
    if not isinstance(raw, dict) or "converter" not in raw:
        raise TemplateError(f"{where}: a step must be a mapping with 'converter' and 'config'")
    kind = raw["converter"]
    config = raw.get("config")
    if kind == "jsonata":
        if not isinstance(config, str) or not config.strip():
            raise TemplateError(f"{where}: jsonata config must be a non-empty expression string")
        try:
            expr = jsonata.Jsonata(config)
        except Exception as exc:
            raise TemplateError(f"{where}: bad jsonata expression: {exc}") from exc
        expr.register_lambda("fromMillis", from_millis)
        expr.register_lambda("toMillis", to_millis)
        # jsonata-python's own $millis() reads the clock of the expression compiled last in
        # the thread, which is only refreshed when *that* one runs: stale by minutes.
        expr.register_lambda("millis", millis)
        # json.loads output is always valid jsonata input: skip the per-call validation walk
        expr.set_validate_input(False)
        return Step("jsonata", where, expr=expr, fast=lookup(config) if fast else None)
    if kind == "header":
        config = config or {}
        if not isinstance(config, dict) or set(config) - {"clear_all", "del", "set", "add"}:
            raise TemplateError(f"{where}: header config takes clear_all, del, set, add")
        header = {
            "clear_all": bool(config.get("clear_all")),
            "del": [canonical_header(str(n)) for n in config.get("del") or []],
            "set": {canonical_header(str(k)): str(v) for k, v in (config.get("set") or {}).items()},
            "add": {canonical_header(str(k)): str(v) for k, v in (config.get("add") or {}).items()},
        }
        return Step("header", where, header=header)
    if kind == "action_if":
        if not isinstance(config, dict) or not isinstance(config.get("pattern"), str):
            raise TemplateError(f"{where}: action_if config needs a 'pattern' string")
        if config.get("action", "drop") != "drop":
            raise TemplateError(f"{where}: action_if supports only action 'drop'")
        pattern: str | re.Pattern[str] = config["pattern"]
        if config.get("is_regex"):
            try:
                pattern = re.compile(config["pattern"])
            except re.error as exc:
                raise TemplateError(f"{where}: bad action_if regex: {exc}") from exc
        # A plain pattern can only match a body that holds its UTF-8 bytes (U+FFFD excepted:
        # undecodable bytes turn into it), so most chunks are ruled out without decoding.
        needle = None
        if isinstance(pattern, str) and pattern and "\ufffd" not in pattern:
            needle = pattern.encode()
        return Step("action_if", where, pattern=pattern, trim=bool(config.get("trim")),
                    needle=needle)
    raise TemplateError(
        f"{where}: unknown converter {kind!r}; known converters: {', '.join(CONVERTERS)}"
    )


def _compile_block(raw: Any, where: str, fast: bool = True) -> Pipeline:
    """Compile one conversion block (prologue, epilogue, conversion steps)."""
    if raw is None:
        return EMPTY
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: must be a mapping with 'conversion' (and prologue/epilogue)")
    steps = raw.get("conversion") or []
    if not isinstance(steps, list):
        raise TemplateError(f"{where}.conversion: must be a list of steps")
    compiled = [_compile_step(s, f"{where}.conversion[{i}]", fast) for i, s in enumerate(steps)]
    for key in ("prologue", "epilogue"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TemplateError(f"{where}.{key}: must be a list of strings")
    return Pipeline(
        body_steps=tuple(s for s in compiled if s.converter != "header"),
        header_steps=tuple(s for s in compiled if s.converter == "header"),
        prologue=tuple(raw.get("prologue") or ()),
        epilogue=tuple(raw.get("epilogue") or ()),
    )


def parse_flavor(text: str, path: str, *, fast: bool = True) -> Flavor:
    """Parse and compile a flavor template from YAML text; `path` is used in error messages.

    `fast=False` leaves out the plain-Python twins (aogstream.convert.fast), so every step runs
    on jsonata: the benchmark and the equivalence tests compare the two paths that way.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: a flavor template must be a YAML mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise TemplateError(f"{path}: missing 'name'")
    stem = Path(path).stem
    if stem != name:
        raise TemplateError(f"{path}: 'name' is {name!r} but the file is named {stem!r}")
    services_raw = doc.get("services") or {}
    if not isinstance(services_raw, dict):
        raise TemplateError(f"{path}: 'services' must be a mapping of service name to definition")
    services: dict[str, FlavorService] = {}
    for svc, body in services_raw.items():
        body = body or {}
        if not isinstance(body, dict):
            raise TemplateError(f"{path}: services.{svc} must be a mapping")
        pipelines = {
            block: _compile_block(body.get(block), f"{path}: services.{svc}.{block}", fast)
            for block in BLOCKS
            if body.get(block) is not None
        }
        info = {k: v for k, v in body.items() if k not in BLOCKS}
        services[str(svc)] = FlavorService(str(svc), name, info, pipelines)
    info = {k: v for k, v in doc.items() if k != "services"}
    return Flavor(name, path, str(doc.get("version", "")), info, services)


def load_flavor_file(path: Path, *, fast: bool = True) -> Flavor:
    """Load one template file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read template: {exc}") from exc
    return parse_flavor(text, str(path), fast=fast)


class FlavorRegistry:
    """Built-in flavors (loaded lazily, once) plus per-plugin templates.

    Built-ins win over a plugin's own file of the same name, as in AOG; a plugin's extra
    flavors are kept per plugin folder so one plugin's broken template hurts only that plugin.
    """

    def __init__(self, builtin_dir: Path = BUILTIN_DIR, *, fast: bool = True) -> None:
        """Remember where built-ins live; nothing is read until first use.

        `fast=False` runs every step on jsonata (no plain-Python twins), for comparisons.
        """
        self._builtin_dir = builtin_dir
        self._fast = fast
        self._builtin: dict[str, Flavor] | None = None
        self._plugin: dict[tuple[str, str], Flavor] = {}

    def builtin(self) -> dict[str, Flavor]:
        """All built-in flavors, compiled once."""
        if self._builtin is None:
            flavors = {}
            for path in sorted(self._builtin_dir.glob("*.yaml")):
                flavor = load_flavor_file(path, fast=self._fast)
                flavors[flavor.name] = flavor
            self._builtin = flavors
        return self._builtin

    def known(self) -> list[str]:
        """Names of the built-in flavors, for error messages."""
        return sorted(self.builtin())

    def get(self, name: str, plugin_dir: Path | None = None) -> Flavor:
        """Find a flavor: built-in first, then `<plugin_dir>/templates/<name>.yaml`."""
        builtin = self.builtin()
        if name in builtin:
            return builtin[name]
        if plugin_dir is not None:
            key = (str(plugin_dir), name)
            if key in self._plugin:
                return self._plugin[key]
            path = Path(plugin_dir) / "templates" / f"{name}.yaml"
            if path.is_file():
                flavor = load_flavor_file(path, fast=self._fast)
                self._plugin[key] = flavor
                return flavor
        where = f" (nor in {Path(plugin_dir) / 'templates'})" if plugin_dir is not None else ""
        raise UnknownFlavorError(
            f"unknown flavor {name!r}{where}; known flavors: {', '.join(self.known())}"
        )

    def resolve_config_ref(self, config_ref: str, plugin_dir: Path | None = None) -> FlavorService:
        """Resolve a plugin's `config_ref` ("flavor:service") to a service definition."""
        flavor_name, sep, service = config_ref.partition(":")
        if not sep or not flavor_name or not service:
            raise TemplateError(f"config_ref {config_ref!r} must look like 'flavor:service'")
        return self.get(flavor_name, plugin_dir).service(service)

    def add(self, flavor: Flavor, plugin_dir: Path) -> None:
        """Register an already-parsed plugin flavor (used by tests and by plugin loading)."""
        self._plugin[(str(plugin_dir), flavor.name)] = flavor


def load_plugin_templates(plugin_dir: Path, config_refs: list[str],
                          registry: FlavorRegistry) -> dict[str, FlavorService]:
    """Resolve every `config_ref` of one plugin, failing for that plugin alone.

    Returns config_ref → FlavorService; raises TemplateError naming the plugin folder, so plugin
    discovery can mark just this plugin as failed and keep loading the others.
    """
    out: dict[str, FlavorService] = {}
    for ref in config_refs:
        try:
            out[ref] = registry.resolve_config_ref(ref, plugin_dir)
        except UnknownFlavorError as exc:
            raise UnknownFlavorError(f"plugin {Path(plugin_dir).name}: {exc}") from exc
        except TemplateError as exc:
            raise TemplateError(f"plugin {Path(plugin_dir).name}: {exc}") from exc
    return out
