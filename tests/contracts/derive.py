#!/usr/bin/env python3
"""Maintenance tool, NOT run by the tests: derives the (METHOD path-template) lists in this
directory from the servers' OpenAPI documents. Re-run it by hand when a spec is updated:

    python3 tests/contracts/derive.py /path/to/api-specs

The tests only read the committed *.txt files (the project stays self-contained)."""
import json
import sys
from pathlib import Path

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

SOURCES = {
    "jellyfin": [
        "jellyfin-openapi-stable.json",
        "jellyfin-openapi-10.11.11.json",
        "jellyfin-openapi-10.8.13.json",
    ],
    "emby": ["emby-openapi-v3-4.8.11.0.json"],
    "plex": ["plex-pms-openapi-lukehagar-1.1.1.json"],
}


def operations(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    for path, item in spec["paths"].items():
        for method in METHODS:
            if isinstance(item.get(method), dict):
                yield f"{method.upper()} {path}"


def main():
    specs = Path(sys.argv[1])
    out = Path(__file__).resolve().parent
    for server, files in SOURCES.items():
        ops = set()
        for name in files:
            ops.update(operations(specs / name))
        header = [
            f"# {server}: every (METHOD path-template) of {', '.join(files)}",
            "# derived by tests/contracts/derive.py; `{x}` matches exactly one path segment",
        ]
        (out / f"{server}.txt").write_text("\n".join(header + sorted(ops)) + "\n")
        print(server, len(ops))


if __name__ == "__main__":
    main()
