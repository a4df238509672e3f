"""Offline validation of what the project generates: custom resources against their CRDs' own OpenAPI schemas
(copied from ../shared/schemas into tests/schemas), built-in kinds with kubernetes-validate."""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
CRDS = {("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
        ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml"}
KUBERNETES_VERSION = "1.31"


def _strict(schema):
    """Reject fields the CRD does not declare: the API server would prune them silently, hiding typos."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def crd(api_version: str, kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 0.6 MB schemas in a blink
    return yaml.load((SCHEMAS / CRDS[(api_version, kind)]).read_text(), Loader=loader)


@lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    version = api_version.split("/")[1]
    (entry,) = [v for v in crd(api_version, kind)["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft202012Validator(_strict(copy.deepcopy(entry["schema"]["openAPIV3Schema"])))


def crd_errors(doc: dict) -> list[str]:
    """Every schema violation of a custom resource, as 'path: message'; empty when valid."""
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    # the one CEL rule on object level in these CRDs that needs no old object: the name pattern
    for rule in _name_rules(doc["apiVersion"], doc["kind"]):
        if not re.fullmatch(rule, doc["metadata"]["name"]):
            errors.append(f"metadata/name: does not match {rule}")
    return errors


def _name_rules(api_version: str, kind: str) -> list[str]:
    text = (SCHEMAS / CRDS[(api_version, kind)]).read_text()
    return re.findall(r"self\.metadata\.name\.matches\('\^(.*?)\$'\)", text)


def builtin_errors(doc: dict) -> list[str]:
    """kubernetes-validate's verdict on a built-in kind (strict: unknown fields are errors)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{doc['kind']}/{doc['metadata'].get('name')}: {'/'.join(map(str, err.path))}: {err.message}"]
    return []
