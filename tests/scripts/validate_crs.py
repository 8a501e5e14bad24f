#!/usr/bin/env python3
"""Validates every example custom resource against its CRD's schema.

usage: validate_crs.py --crd CRD.yaml [--crd ...] PATH...

PATH is a Markdown file (its ```yaml blocks are read), a YAML file, or a
directory searched for both. Every mapping of a kind a CRD defines, at any
depth (the local config's `policies:` lists hold them too), is checked
against that CRD's openAPIV3Schema, turned into a JSON Schema the way the
API server reads it: unknown fields are errors (strict), and
`x-kubernetes-int-or-string` accepts an integer or a string.

Prints one line per example and a JSON summary ({"validated": N, "failed":
M}); exits 1 if any failed or a block that mentions a kind does not parse.
"""

import argparse
import json
import pathlib
import re
import sys

import jsonschema
import yaml


def to_json_schema(schema):
    """openAPIV3Schema -> JSON Schema (draft 7), strict about unknown fields."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key == "format":
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        string = {"type": "string"}
        if "pattern" in out:
            string["pattern"] = out.pop("pattern")
        out["anyOf"] = [{"type": "integer"}, string]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def load_crds(paths):
    kinds = {}
    for path in paths:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group = doc["spec"]["group"]
            for version in doc["spec"]["versions"]:
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                # metadata is the API server's to check.
                schema.get("properties", {})["metadata"] = {"type": "object"}
                kinds.setdefault(doc["spec"]["names"]["kind"], {})[
                    f"{group}/{version['name']}"
                ] = schema
    return kinds


def yaml_sources(paths):
    """(origin, text) of every YAML document source under the paths."""
    for path in map(pathlib.Path, paths):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (".yaml", ".yml"):
                yield str(file), file.read_text()
            elif file.suffix == ".md":
                text = file.read_text()
                for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
                    line = text[: match.start()].count("\n") + 1
                    yield f"{file}:{line}", match.group(1)


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", action="append", required=True)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    kinds = load_crds(args.crd)
    if not kinds:
        print("no CustomResourceDefinition found in", args.crd)
        return 1
    validated = failed = 0
    for origin, text in yaml_sources(args.paths):
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            if any(f"kind: {kind}" in text for kind in kinds):
                print(f"FAIL {origin}: does not parse: {error}")
                failed += 1
            continue
        for doc in docs:
            for node in walk(doc):
                kind = node.get("kind")
                if not isinstance(kind, str) or kind not in kinds or "spec" not in node:
                    continue
                versions = kinds[kind]
                api_version = node.get("apiVersion")
                name = (node.get("metadata") or {}).get("name", "?")
                if api_version is not None and api_version not in versions:
                    print(f"FAIL {origin}: {kind} {name}: apiVersion {api_version} is not one of {sorted(versions)}")
                    failed += 1
                    continue
                schema = versions[api_version or sorted(versions)[-1]]
                errors = sorted(
                    jsonschema.Draft7Validator(schema).iter_errors(node), key=str
                )
                if errors:
                    for error in errors:
                        path = ".".join(str(p) for p in error.absolute_path)
                        print(f"FAIL {origin}: {kind} {name}: {path}: {error.message}")
                    failed += 1
                else:
                    print(f"ok   {origin}: {kind} {name}")
                    validated += 1
    print(json.dumps({"validated": validated, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
