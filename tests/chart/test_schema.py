"""values.schema.json: Helm itself enforces it on render and lint; jsonschema agrees.

Helm v4 (helm-python-sdk) validates values against values.schema.json in both
Chart.render() (raises HelmValuesError) and lint() (reports severity-3 messages), so the bad
values below are asserted through Helm. The same cases are checked with the `jsonschema`
package directly, to catch a schema that only Helm's validator accepts (or vice versa).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from helm_python.chart import lint
from helm_python.errors import HelmValuesError

from conftest import CHART_DIR, NAMESPACE

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

BAD = {
    "unknown top-level key": ({"replicas": 2}, "additional propert"),
    "replicaCount as a string": ({"replicaCount": "three"}, "replicaCount"),
    "watchNamespaces not a list": ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    "bad log format": ({"log": {"format": "yaml"}}, "format"),
    "unknown nested key": ({"aws": {"regoin": "eu-west-1"}}, "additional propert"),
    "negative replicaCount": ({"replicaCount": -1}, "replicaCount"),
    "duplicate namespace": ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    "invalid namespace name": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "zero key-pair rate": ({"kmsKeyPairRate": 0}, "kmsKeyPairRate"),
    "zero key-pair rate of a spec": ({"kmsKeyPairRate": {"RSA_3072": 0}}, "kmsKeyPairRate"),
    "unknown key pair spec": ({"kmsKeyPairRate": {"ECC_NIST_P256": 5}}, "kmsKeyPairRate"),
    "zero symmetric rate": ({"kmsSymmetricRate": 0}, "kmsSymmetricRate"),
    "bad check interval": ({"kmsKeyCheckInterval": "hourly"}, "kmsKeyCheckInterval"),
    "crds.install not a bool": ({"crds": {"install": "yes"}}, "install"),
    "pullPolicy enum": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "prune not a bool": ({"pruneRetiredKeyPairs": "true"}, "pruneRetiredKeyPairs"),
    "key store not s3": ({"keyStore": {"url": "https://acme-kekeeper/prod"}}, "url"),
    "key store bucket uppercase": ({"keyStore": {"url": "s3://Acme"}}, "url"),
    "key store unknown key": ({"keyStore": {"bucket": "acme"}}, "additional propert"),
    "admission policy not a bool": ({"admissionPolicy": {"enabled": "no"}}, "enabled"),
    "break-glass group not a list": ({"admissionPolicy": {"breakGlassGroups": "admins"}},
                                     "breakGlassGroups"),
    "break-glass group with a quote": ({"admissionPolicy": {"breakGlassGroups": ["a'b"]}},
                                       "breakGlassGroups"),
    "empty break-glass group": ({"admissionPolicy": {"breakGlassGroups": [""]}},
                                "breakGlassGroups"),
    "helm test unknown key": ({"helmTest": {"image": "x"}}, "additional propert"),
    "negative max organisations": ({"helmTest": {"maxOrganizations": -1}}, "maxOrganizations"),
}


@pytest.mark.parametrize("label", BAD)
def test_helm_render_rejects(chart, label):
    values, needle = BAD[label]
    with pytest.raises(HelmValuesError) as err:
        chart.render(values, name="kekeeper", namespace=NAMESPACE)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("label", BAD)
def test_helm_lint_rejects(label):
    values, needle = BAD[label]
    report = lint(CHART_DIR, values, namespace=NAMESPACE)
    errors = [m for m in report["messages"] if m["severity"] == 3]
    assert errors and report["errors"], report
    assert any(needle in m["error"] for m in errors), report


@pytest.mark.parametrize("label", BAD)
def test_jsonschema_agrees(chart, label):
    values, _ = BAD[label]
    merged = chart.merge_values(values)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, SCHEMA, cls=jsonschema.Draft7Validator)


def test_schema_is_a_valid_draft7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


def test_defaults_validate(chart):
    jsonschema.validate(DEFAULTS, SCHEMA, cls=jsonschema.Draft7Validator)
    chart.validate_schema(None)


def test_every_default_key_is_in_the_schema_and_back():
    assert set(DEFAULTS) == set(SCHEMA["properties"]) - {"global"}


def test_good_values_pass(chart):
    chart.validate_schema({"replicaCount": 2, "watchNamespaces": ["team-a"], "kmsKeyPairRate": 0.2,
                           "kmsKeyCheckInterval": "1h30m", "log": {"format": "json"},
                           "aws": {"region": "us-gov-west-1", "kmsEndpoint": "http://localstack:4566",
                                   "s3Endpoint": "http://localstack:4566"},
                           "keyStore": {"url": "s3://acme-kekeeper/prod/eu-1"}})
    chart.validate_schema({"keyStore": {"url": "s3://acme-kekeeper"}})
    chart.validate_schema({"kmsKeyPairRate": {"RSA_3072": 0.45, "RSA_2048": 0.9},
                           "kmsSymmetricRate": 250})
