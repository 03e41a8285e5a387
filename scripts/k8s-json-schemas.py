#!/usr/bin/env python3
"""Turn Kubernetes' OpenAPI v2 document into the JSON schemas kubeconform reads.

Usage: k8s-json-schemas.py SWAGGER_JSON OUT_DIR

SWAGGER_JSON is api/openapi-spec/swagger.json of the k8s.io/kubernetes module
(scripts/build-peers.sh takes it from the Go module cache, so no schema is
ever downloaded). OUT_DIR gets one file per kind, named the way kubeconform
looks them up with -schema-location DIR -kubernetes-version X.Y.Z -strict:
DIR/vX.Y.Z-standalone-strict/<kind>[-<group's first label>]-<version>.json.

Each schema is
  - standalone: every $ref is replaced by the definition it names (kubeconform
    loads one file per kind and resolves nothing); a definition that refers to
    itself (apiextensions' JSONSchemaProps) is cut off there and accepts
    anything below that point;
  - strict: an object with named properties allows no others, so a misspelt
    or misplaced key fails validation as the API server's strict field
    validation would;
  - typed as the API server decodes: IntOrString takes a string or an integer,
    a Quantity a string or a number.
Descriptions are dropped: they make up most of the bytes and validate nothing.
Only the standard library is used.
"""

import json
import os
import sys

INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# Keys of a schema whose values are schemas, lists of schemas or maps of them.
SCHEMA_KEYS = ("items", "additionalProperties", "not")
SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")


def expand(schema, definitions, done, stack):
    """Return `schema` with refs inlined, strict and without descriptions."""
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        return definition(name, definitions, done, stack)
    out = {}
    for key, value in schema.items():
        if key == "description" or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {p: expand(s, definitions, done, stack) for p, s in value.items()}
        elif key in SCHEMA_KEYS:
            out[key] = expand(value, definitions, done, stack)
        elif key in SCHEMA_LIST_KEYS:
            out[key] = [expand(s, definitions, done, stack) for s in value]
        else:
            out[key] = value
    if out.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def definition(name, definitions, done, stack):
    """The expanded definition `name`, computed once and shared."""
    if name in done:
        return done[name]
    if name in stack:
        return {}  # recursion: accept anything below this point
    if name == INT_OR_STRING:
        result = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    elif name == QUANTITY:
        result = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    else:
        stack.add(name)
        result = expand(definitions[name], definitions, done, stack)
        stack.discard(name)
    done[name] = result
    return result


def file_name(gvk):
    """kubeconform's lookup name: kind, first label of the group, version."""
    group = gvk.get("group", "")
    suffix = "-" + group.split(".")[0] if group else ""
    return "{}{}-{}.json".format(gvk["kind"], suffix, gvk["version"]).lower()


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: k8s-json-schemas.py SWAGGER_JSON OUT_DIR")
    with open(argv[1], encoding="utf-8") as f:
        definitions = json.load(f)["definitions"]
    out_dir = argv[2]
    os.makedirs(out_dir, exist_ok=True)
    done = {}
    owner = {}
    for name in sorted(definitions):
        for gvk in definitions[name].get("x-kubernetes-group-version-kind", []):
            target = file_name(gvk)
            if owner.setdefault(target, name) != name:
                sys.exit(
                    "k8s-json-schemas: {} and {} both map to {}".format(owner[target], name, target)
                )
            schema = definition(name, definitions, done, set())
            with open(os.path.join(out_dir, target), "w", encoding="utf-8") as f:
                json.dump(schema, f, separators=(",", ":"), sort_keys=True)
    if not owner:
        sys.exit("k8s-json-schemas: no kinds in {}".format(argv[1]))
    print("k8s-json-schemas: {} schemas in {}".format(len(owner), out_dir), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
