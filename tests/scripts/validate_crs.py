#!/usr/bin/env python3
"""Validates every example custom resource against its CRD's schema.

usage: validate_crs.py --crd CRD.yaml [--crd ...] [--dump FILE] PATH...

PATH is a Markdown file (its ```yaml blocks are read), a YAML file, or a
directory searched for both. An example is a mapping, at any depth, whose
kind a CRD defines, or an entry of a `policies:` or `peerAuthentications:`
list (the agent's local config, where kind and apiVersion are optional). Each is checked against
its CRD's openAPIV3Schema, turned into a JSON Schema the way the API server
reads it with strict field validation (kubectl's default): an unknown
field is an error, `x-kubernetes-int-or-string` takes an integer or a
string, `x-kubernetes-preserve-unknown-fields` takes anything.

Each CRD's schema is first checked for the structural-schema rules this
conversion relies on (a type on every node, no `additionalProperties:
false`, no regular expressions RE2 cannot run, list-map keys required).

Prints one line per example and a JSON summary ({"validated": N, "failed":
M, "skipped": S}) last; exits 1 if an example failed, a CRD is not
structural, or a block that names a CRD kind does not parse. --dump writes
every example (origin, name, ok, errors, the object) as a JSON list.
"""

import argparse
import json
import pathlib
import re
import sys

import jsonschema
import yaml

# The kind an entry of a local-config list is when it does not say.
LIST_KINDS = {"policies": "AuthorizationPolicy", "peerAuthentications": "PeerAuthentication"}

# Python's re accepts these; RE2 (the API server's) does not.
NOT_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]")


def lint_structural(schema, path="openAPIV3Schema"):
    """The structural-schema rules the conversion below relies on."""
    problems = []
    if not isinstance(schema, dict):
        return [f"{path}: not a mapping"]
    loose = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "type" not in schema and not loose:
        problems.append(f"{path}: no type")
    if schema.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false is refused by the API server")
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        problems.append(f"{path}: properties and additionalProperties together")
    pattern = schema.get("pattern")
    if pattern is not None:
        if NOT_RE2.search(pattern):
            problems.append(f"{path}: pattern {pattern!r} uses lookaround or backreferences (not RE2)")
        try:
            re.compile(pattern)
        except re.error as error:
            problems.append(f"{path}: pattern {pattern!r}: {error}")
    if schema.get("x-kubernetes-list-type") == "map":
        required = set(schema.get("items", {}).get("required", []))
        for key in schema.get("x-kubernetes-list-map-keys", []):
            if key not in required:
                problems.append(f"{path}: list-map key {key} is not required")
    for name, sub in schema.get("properties", {}).items():
        problems += lint_structural(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += lint_structural(schema[key], f"{path}.{key}")
    return problems


def to_json_schema(schema):
    """openAPIV3Schema -> JSON Schema (draft 7), strict about unknown fields."""
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("format", "description"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        number = {"type": "integer"}
        string = {"type": "string"}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in out:
                number[key] = out.pop(key)
        for key in ("pattern", "minLength", "maxLength"):
            if key in out:
                string[key] = out.pop(key)
        out["anyOf"] = [number, string]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def load_crds(paths):
    """kind -> {apiVersion -> JSON Schema}, and the structural problems."""
    kinds, problems = {}, []
    for path in paths:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group = doc["spec"]["group"]
            for version in doc["spec"]["versions"]:
                raw = version["schema"]["openAPIV3Schema"]
                problems += [f"{path}: {version['name']}: {p}" for p in lint_structural(raw)]
                schema = to_json_schema(raw)
                # metadata is the API server's to check.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                kinds.setdefault(doc["spec"]["names"]["kind"], {})[
                    f"{group}/{version['name']}"
                ] = schema
    return kinds, problems


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


def examples(node, kinds):
    """(kind, object) of every example in a parsed document."""
    if isinstance(node, dict):
        kind = node.get("kind")
        if isinstance(kind, str) and kind in kinds and ("spec" in node or "metadata" in node):
            yield kind, node
        for key, value in node.items():
            list_kind = LIST_KINDS.get(key)
            if list_kind in kinds and isinstance(value, list):
                for entry in value:
                    if isinstance(entry, dict) and "kind" not in entry:
                        yield list_kind, entry
            yield from examples(value, kinds)
    elif isinstance(node, list):
        for value in node:
            yield from examples(value, kinds)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", action="append", required=True)
    parser.add_argument("--dump")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    kinds, problems = load_crds(args.crd)
    if not kinds:
        print("FAIL no CustomResourceDefinition found in", args.crd)
        return 1
    for problem in problems:
        print(f"FAIL not structural: {problem}")
    validated = failed = skipped = 0
    dump = []
    for origin, text in yaml_sources(args.paths):
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            if any(f"kind: {kind}" in text for kind in kinds):
                print(f"FAIL {origin}: does not parse: {error}")
                failed += 1
            continue
        for doc in docs:
            for kind, node in examples(doc, kinds):
                versions = kinds[kind]
                api_version = node.get("apiVersion")
                name = (node.get("metadata") or {}).get("name", "?")
                if api_version is not None and api_version not in versions:
                    group = api_version.split("/")[0]
                    if any(v.split("/")[0] == group for v in versions):
                        print(f"FAIL {origin}: {kind} {name}: apiVersion {api_version} is not one of {sorted(versions)}")
                        failed += 1
                    else:
                        print(f"SKIP {origin}: {kind} {name}: {api_version} is not ambit's API")
                        skipped += 1
                    continue
                schema = versions[api_version or sorted(versions)[-1]]
                errors = sorted(
                    (
                        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
                        for error in jsonschema.Draft7Validator(schema).iter_errors(node)
                    )
                )
                for error in errors:
                    print(f"FAIL {origin}: {kind} {name}: {error}")
                if errors:
                    failed += 1
                else:
                    print(f"ok   {origin}: {kind} {name}")
                    validated += 1
                dump.append(
                    {"origin": origin, "kind": kind, "name": name, "ok": not errors, "errors": errors, "object": node}
                )
    if args.dump:
        pathlib.Path(args.dump).write_text(json.dumps(dump, indent=1, default=str))
    print(json.dumps({"validated": validated, "failed": failed, "skipped": skipped}))
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
