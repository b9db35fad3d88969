"""`aogstream import|export`: services and providers to and from a `.aog` file, as AOG
writes them (never credentials)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aogstream.cli.client import Api
from aogstream.cli.output import read_json_file


def cmd_import(api: Api, args: argparse.Namespace) -> int:
    body = read_json_file(args.file, "import")
    api.call("POST", "/service/import", body=body)
    print(f"imported {args.file}")
    return 0


def cmd_export(api: Api, args: argparse.Namespace) -> int:
    """Stdout by default so it pipes; `to-file` without -f writes `./.aog` as AOG does."""
    body = {k: v for k, v in (("service_name", args.service), ("provider_name", args.provider),
                              ("model_name", args.model)) if v}
    data = api.call("POST", "/service/export", body=body)  # the document, bare (as AOG)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    target = args.file or (".aog" if args.target == "to-file" else None)
    if target is None:
        sys.stdout.write(text)
        return 0
    Path(target).write_text(text)
    print(f"exported to {target}", file=sys.stderr)
    return 0
