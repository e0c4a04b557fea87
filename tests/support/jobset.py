"""JobSet (jobset.x-k8s.io/v1alpha2) offline: its CRD's schema made strict, and the pods a JobSet makes.

No API server or JobSet controller can be had in the tests. The schema is the released CRD's
(tests/data/jobset, JobSet v0.12.0), turned into a JSON Schema that refuses unknown fields, as
`kubernetes-validate --strict` treats the built-in kinds. The pods are what the controller makes of
each replicatedJob (pkg/controllers/jobset_controller.go of that tag): one Job per replica, named
<jobset>-<replicatedJob>-<jobIndex>, whose pods carry JobSet's labels and annotations and, with
network.enableDNSHostnames, the hostname <job>-<podIndex> in the subdomain (by default the JobSet's
name), so that `<hostname>.<subdomain>` resolves in the namespace.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO

RELEASE = "v0.12.0"
API_VERSION = "jobset.x-k8s.io/v1alpha2"
CRD = REPO / "tests" / "data" / "jobset" / "jobset.x-k8s.io_jobsets.yaml"
CRD_SHA256 = "d022b87624512cf0b6741b31b24a2bea9945b5a838b50713af29332c878bb6fe"
# What JobSet puts on every Job it makes and on the Job's pods (api/jobset/v1alpha2/jobset_types.go).
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
# The keywords of a CRD's structural schema that say nothing a JSON Schema validator checks.
KUBERNETES_ONLY = ("description", "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                   "x-kubernetes-map-type", "x-kubernetes-int-or-string", "default")


def crd_bytes() -> bytes:
    return CRD.read_bytes()


def crd_sha256() -> str:
    return hashlib.sha256(crd_bytes()).hexdigest()


def openapi_schema() -> dict:
    """The CRD's openAPIV3Schema of API_VERSION."""
    crd = yaml.safe_load(crd_bytes())
    [version] = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == API_VERSION]
    assert version["served"] and version["storage"], version["name"]
    return version["schema"]["openAPIV3Schema"]


def strict(node: Any) -> Any:
    """A structural schema as a JSON Schema that refuses what the CRD does not define.

    Every object with `properties` and no `additionalProperties` gets `additionalProperties: false`,
    unless it says x-kubernetes-preserve-unknown-fields (the API server keeps unknown fields there);
    an object with neither (metadata at the top, which the API server checks itself) stays open.
    `x-kubernetes-int-or-string` fields already carry their anyOf of integer and string.
    """
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items() if key not in KUBERNETES_ONLY}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    out.pop("x-kubernetes-preserve-unknown-fields", None)
    return out


def json_schema() -> dict:
    """The JobSet's JSON Schema: the CRD's, strict, with apiVersion and kind fixed."""
    schema = strict(openapi_schema())
    schema["properties"]["apiVersion"] = {"const": API_VERSION}
    schema["properties"]["kind"] = {"const": "JobSet"}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata", "spec"})
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def check_jsonschema(documents: list[dict], folder: Path) -> subprocess.CompletedProcess:
    """`check-jsonschema` of each JobSet in `documents` against json_schema(), as one run."""
    schema = folder / "jobset.schema.json"
    schema.write_text(json.dumps(json_schema()))
    files = []
    for i, document in enumerate(documents):
        files.append(folder / f"jobset-{i}.json")
        files[-1].write_text(json.dumps(document))
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def subdomain(jobset: dict) -> str:
    return jobset["spec"].get("network", {}).get("subdomain") or jobset["metadata"]["name"]


def replicated_job(jobset: dict, name: str) -> dict:
    [found] = [r for r in jobset["spec"]["replicatedJobs"] if r["name"] == name]
    return found


def job_name(jobset: dict, replicated: str, index: int) -> str:
    return f"{jobset['metadata']['name']}-{replicated}-{index}"


def jobs(jobset: dict) -> list[dict]:
    """The batch/v1 Job of each replicatedJob (its first replica), for the built-in Job schema."""
    return [{"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": job_name(jobset, r["name"], 0), "namespace": jobset["metadata"].get("namespace"),
                          **({"labels": r["template"]["metadata"]["labels"]}
                             if r["template"].get("metadata", {}).get("labels") else {})},
             "spec": r["template"]["spec"]}
            for r in jobset["spec"]["replicatedJobs"]]


@dataclass(frozen=True)
class Pod:
    """A pod JobSet makes: its replicatedJob, Job and pod index, labels, annotations and spec."""

    replicated: str
    job_index: int
    pod_index: int
    hostname: str
    subdomain: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict

    @property
    def dns_name(self) -> str:
        """The name that resolves to it in the namespace (and the one the certificate must hold)."""
        return f"{self.hostname}.{self.subdomain}"

    def field(self, path: str) -> str:
        """A downward API fieldRef's value: metadata.labels['k'] or metadata.annotations['k']."""
        for prefix, values in (("metadata.labels", self.labels), ("metadata.annotations", self.annotations)):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return values[path[len(prefix) + 2:-2]]
        raise AssertionError(f"fieldRef {path}: only labels and annotations are resolved here")


def pods(jobset: dict) -> list[Pod]:
    """Every pod the JobSet starts (one per completion index of each Job of each replicatedJob)."""
    found = []
    for r in jobset["spec"]["replicatedJobs"]:
        spec = r["template"]["spec"]
        template = spec["template"]
        for job_index in range(r.get("replicas", 1)):
            job = job_name(jobset, r["name"], job_index)
            marks = {JOBSET_NAME: jobset["metadata"]["name"], REPLICATED_JOB: r["name"], JOB_INDEX: str(job_index)}
            for pod_index in range(spec.get("completions", spec.get("parallelism", 1))):
                found.append(Pod(r["name"], job_index, pod_index, f"{job}-{pod_index}", subdomain(jobset),
                                 {**template.get("metadata", {}).get("labels", {}), **marks},
                                 {**template.get("metadata", {}).get("annotations", {}), **marks},
                                 template["spec"]))
    return found
