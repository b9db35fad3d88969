"""Flavor conversion: AOG-format templates translating API dialects to and from the AOG shape."""

from aogstream.convert.engine import (
    PIVOT,
    Conversion,
    Converted,
    Converter,
    ConvertError,
    StreamConverter,
)
from aogstream.convert.flavor import (
    BUILTIN_DIR,
    Flavor,
    FlavorRegistry,
    FlavorService,
    TemplateError,
    UnknownFlavorError,
    load_flavor_file,
    load_plugin_templates,
    parse_flavor,
)

__all__ = [
    "BUILTIN_DIR",
    "PIVOT",
    "Conversion",
    "ConvertError",
    "Converted",
    "Converter",
    "Flavor",
    "FlavorRegistry",
    "FlavorService",
    "StreamConverter",
    "TemplateError",
    "UnknownFlavorError",
    "load_flavor_file",
    "load_plugin_templates",
    "parse_flavor",
]
