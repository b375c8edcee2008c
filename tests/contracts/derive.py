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


# Query names the client sends beyond a document, each for a real server's sake (a server
# built from the document ignores an unknown name; one that the real server needs cannot be
# left out).
EXTRA_QUERY = {
    "plex": {
        # Real Plex leaves the `Guid` array (the external ids) out of a metadata lookup
        # without it, as it does for section listings, where the document names it.
        "GET /library/metadata/{ids}": ["includeGuids"],
        # Real Plex may ignore a timeline report without the library identifier (as
        # WatchState's Progress action notes); `/:/scrobble` documents the same name.
        "POST /:/timeline": ["identifier"],
    },
}


def resolve(spec, obj):
    """Follows a local `$ref` (`#/components/parameters/X`)."""
    while isinstance(obj, dict) and "$ref" in obj:
        node = spec
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def operations(spec_path):
    """(`METHOD path`, the names of its query parameters): the operation's and its path's
    parameters `in: query`, and the query names of the document's apiKey security schemes
    (Emby's `api_key`)."""
    spec = json.loads(Path(spec_path).read_text())
    schemes = (spec.get("components") or {}).get("securitySchemes") or {}
    security = {
        s["name"]
        for s in schemes.values()
        if s.get("type") == "apiKey" and s.get("in") == "query"
    }
    for path, item in spec["paths"].items():
        shared = item.get("parameters") or []
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            names = set(security)
            for param in shared + (op.get("parameters") or []):
                param = resolve(spec, param)
                if param.get("in") != "query":
                    continue
                # An object sent form-style exploded (the query default) is its properties
                # (Plex's `mediaQuery`: `type=4&sort=addedAt`).
                schema = resolve(spec, param.get("schema") or {})
                exploded = param.get("style", "form") == "form" and param.get("explode", True)
                if exploded and schema.get("type") == "object" and schema.get("properties"):
                    names.update(schema["properties"])
                else:
                    names.add(param["name"])
            yield f"{method.upper()} {path}", names


def main():
    specs = Path(sys.argv[1])
    out = Path(__file__).resolve().parent
    for server, files in SOURCES.items():
        ops = {}
        for name in files:
            for op, names in operations(specs / name):
                ops.setdefault(op, set()).update(names)
        for op, names in EXTRA_QUERY.get(server, {}).items():
            ops[op].update(names)
        header = [
            f"# {server}: every (METHOD path-template) of {', '.join(files)},",
            "# with the names of its documented query parameters after `?` (a union over the",
            "# documents, plus derive.py's EXTRA_QUERY); derived by tests/contracts/derive.py;",
            "# `{x}` matches exactly one path segment",
        ]
        lines = [
            f"{op} ?{','.join(sorted(names))}" if names else op for op, names in ops.items()
        ]
        (out / f"{server}.txt").write_text("\n".join(header + sorted(lines)) + "\n")
        print(server, len(ops))


if __name__ == "__main__":
    main()
