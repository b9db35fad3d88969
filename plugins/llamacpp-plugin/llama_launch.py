"""Engine process of llamacpp-plugin: `python llama_launch.py llama_cpp.server <args>`
runs llama-cpp-python's own server, unchanged, after one adjustment.

Why a launcher at all: llama.cpp puts weights into "extra" CPU buffer types when the
CPU allows it, and on a CPU that advertises AMX (Intel Sapphire Rapids and later) that
means the AMX matrix kernels. In virtual machines that pass the AMX CPUID bits through
without a working tile state, the first AMX instruction (`ldtilecfg`) kills the engine
with SIGSEGV on its first request. llama_cpp.server has no option for it, so with
LLAMACPP_EXTRA_BUFTS=0 (which the plugin sets on AMX CPUs) this launcher turns
`use_extra_bufts` off in the default model parameters before the server creates its
model. Runs in the engine's virtualenv; stdlib + llama_cpp only.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: llama_launch.py llama_cpp.server [server options]")
    module = sys.argv[1]
    if os.environ.get("LLAMACPP_EXTRA_BUFTS", "1") == "0":
        import llama_cpp.llama_cpp as lib

        defaults = lib.llama_model_default_params

        def without_extra_bufts() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = without_extra_bufts
        print("llama_launch: extra CPU buffer types (AMX, weight repacking) are off",
              file=sys.stderr, flush=True)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
