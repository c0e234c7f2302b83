"""docs/cluster.md's cluster definitions are valid for the tools that read them: the Ray cluster launcher's YAML
against the autoscaler schema Ray itself ships (and checks `ray up` with), the KubeRay manifest's keys against a
vendored subset of the RayCluster schema; and both run the harness the way docs/cluster.md says."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "cluster"


def test_the_launcher_yaml_is_valid_for_rays_autoscaler_schema():
    config = yaml.safe_load((DOCS / "aws.yaml").read_text())
    schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "no trial may run on the head"
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    broken = {**config, "provider": {**config["provider"], "type": 7}}
    with pytest.raises(jsonschema.ValidationError):  # the schema does check what it is given
        jsonschema.validate(broken, schema)


def test_the_kuberay_manifest_keys_fit_the_raycluster_schema():
    manifest = yaml.safe_load((DOCS / "kuberay.yaml").read_text())
    schema = json.loads((ROOT / "tests" / "schemas" / "raycluster-v1-subset.json").read_text())
    jsonschema.validate(manifest, schema)
    assert manifest["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    misspelt = yaml.safe_load((DOCS / "kuberay.yaml").read_text())
    misspelt["spec"]["workerGroupSpecs"][0]["replica"] = 8
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(misspelt, schema)


def test_the_guide_runs_the_paper_grid_with_the_store_on_s3_and_no_credential_in_it():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    for step in ("harness data prepare", "harness plan dags/paper-classification.yaml", "--workers",
                 "harness run dags/paper-classification.yaml", "--store s3://", "--tracking-uri http",
                 "harness report", "docs/cluster/aws.yaml", "docs/cluster/kuberay.yaml"):
        assert step in guide, step
    for text in (guide, (DOCS / "aws.yaml").read_text(), (DOCS / "kuberay.yaml").read_text()):
        assert not re.search(r"AKIA[0-9A-Z]{12}|(?i:secret(_access)?_key)\s*[=:]\s*\S", text), "a credential?"
