"""The Kubernetes manifests: every overlay renders, validates strictly, and follows the conventions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.deploy import KUBERNETES_VERSION, OVERLAYS, container_env, find, pinned, pod_spec, render, workloads

RECOMMENDED = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
               "app.kubernetes.io/part-of", "app.kubernetes.io/version")
SERVICES = {"rewind-buffer": 50051, "rewind-checkpoint": 50052, "rewind-trainer": 50053}
EXTERNAL = {"external": "true"}  # stands for an address outside the cluster


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


def test_every_overlay_validates_strictly_against_the_pinned_kubernetes_schemas(overlay, tmp_path):
    name, docs = overlay
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
                             str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("INFO") == len(docs)  # one "validated" line per object, none skipped
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"rewind"}


def test_every_workload_and_container_is_hardened_labelled_and_sized(overlay):
    _, docs = overlay
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    used_accounts = []
    for w in workloads(docs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        labels, template_labels = w["metadata"]["labels"], w["spec"]["template"]["metadata"]["labels"]
        for key in RECOMMENDED:
            assert labels.get(key) and template_labels.get(key), f"{where}: label {key}"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        spec = pod_spec(w)
        assert spec["serviceAccountName"] in accounts, where
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False
        used_accounts.append(spec["serviceAccountName"])
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            what = f"{where} container {c['name']}"
            image = c["image"]
            assert pinned(image), f"{what}: pin {image}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{what}: resources.{part}"
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, what
            assert security["readOnlyRootFilesystem"] is True, what
            assert security["runAsNonRoot"] is True, what
            assert security["capabilities"] == {"drop": ["ALL"]}, what
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{what}: /tmp must be an emptyDir scratch volume"
    assert len(used_accounts) == len(set(used_accounts)), "one ServiceAccount per workload"


def test_the_services_have_grpc_probes_named_ports_and_cluster_ip_services(overlay):
    _, docs = overlay
    for name, port in SERVICES.items():
        kind = "Job" if name == "rewind-trainer" else "Deployment"
        w = find(docs, kind, name)
        [c] = pod_spec(w)["containers"]
        assert c["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
        assert container_env(docs, c)["REWIND_PORT"] == str(port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port}, f"{name}: {probe} must use the gRPC health service"
        svc = find(docs, "Service", name)
        assert svc["spec"]["type"] == "ClusterIP"
        assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("grpc", port, "grpc")]
        selector = svc["spec"]["selector"]
        assert selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        if kind == "Deployment":
            assert w["spec"]["replicas"] == 1 and w["spec"]["strategy"]["type"] == "Recreate"
            assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_the_trainer_job_resumes_and_preemption_does_not_spend_retries(overlay):
    _, docs = overlay
    job = find(docs, "Job", "rewind-trainer")
    spec = pod_spec(job)
    [c] = spec["containers"]
    env = container_env(docs, c)
    assert c["args"] == ["train"]
    assert env["REWIND_RESUME_FROM_CHECKPOINT"] == "latest"
    assert env["REWIND_BUFFER_ADDRESS"] == "rewind-buffer:50051"
    assert env["REWIND_CHECKPOINT_ADDRESS"] == "rewind-checkpoint:50052"
    # The Job's pods may start before the services (or MinIO and its bucket) are up.
    assert float(env["REWIND_WAIT_FOR_SERVICES_S"]) >= 300
    assert spec["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    [exit_rule] = [r for r in rules if "onExitCodes" in r]
    assert exit_rule["action"] == "Ignore"
    assert exit_rule["onExitCodes"] == {"containerName": c["name"], "operator": "In",
                                        "values": [int(env["REWIND_PREEMPT_EXIT_CODE"])]}
    assert int(env["REWIND_PREEMPT_EXIT_CODE"]) not in (0, 1, 2), "0 completes the Job; 1 and 2 are real errors"
    # The grace must cover the checkpoint-on-SIGTERM grace plus reaching a boundary.
    assert spec["terminationGracePeriodSeconds"] >= float(env["REWIND_STOP_GRACE_S"]) + 30
    assert job["spec"]["backoffLimit"] >= 1


def test_s3_credentials_come_only_from_a_secret_and_the_endpoint_and_bucket_from_a_config_map(overlay):
    name, docs = overlay
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key in cm["data"]:
            assert not any(word in key for word in ("SECRET", "PASSWORD", "ACCESS_KEY")), f"{key} in a ConfigMap"
    [c] = pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"]
    assert {"secretRef": {"name": "rewind-s3"}} in c["envFrom"]
    assert {"configMapRef": {"name": "rewind-s3"}} in c["envFrom"]
    assert all(v.get("valueFrom") is None and "KEY" not in v["name"] for v in c.get("env", []))
    s3 = find(docs, "ConfigMap", "rewind-s3")["data"]
    assert s3["REWIND_STORE"].startswith("s3://")
    if name == "cpu":  # the in-cluster MinIO, its bucket, and its own credentials Secret
        assert s3["AWS_ENDPOINT_URL"] == "http://rewind-minio:9000"
        assert s3["REWIND_STORE"].split("/")[2] in find(docs, "Job", "rewind-create-bucket")["spec"]["template"][
            "spec"]["containers"][0]["args"][0]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(find(docs, "Secret", "rewind-s3")["data"])
    else:  # external S3: the user creates the Secret; the overlay never ships keys
        assert not [d for d in docs if d["kind"] == "Secret"]


def test_the_cpu_overlay_runs_minio_as_a_statefulset_with_a_volume_claim():
    docs = render("cpu")
    minio = find(docs, "StatefulSet", "rewind-minio")
    [claim] = minio["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    [c] = pod_spec(minio)["containers"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert c["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert find(docs, "Deployment", "rewind-buffer")["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "rewind:0.1.0-cpu"


def test_the_gpu_overlay_asks_for_gpus_tolerates_their_taint_and_selects_gpu_nodes():
    docs = render("gpu")
    for kind, name in (("Job", "rewind-trainer"), ("Deployment", "rewind-buffer")):
        spec = pod_spec(find(docs, kind, name))
        [c] = spec["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith(":0.1.0-cuda")
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    [c] = pod_spec(find(docs, "Job", "rewind-trainer"))["containers"]
    assert container_env(docs, c)["REWIND_DEVICE"] == "cuda"
    # The checkpoint service stays on CPU nodes.
    assert "nvidia.com/gpu" not in pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"][0][
        "resources"]["limits"]


def test_a_disruption_budget_keeps_the_checkpoint_service_for_the_trainers_last_save(overlay):
    _, docs = overlay
    pdb = find(docs, "PodDisruptionBudget", "rewind-checkpoint")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = find(docs, "Deployment", "rewind-checkpoint")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- network policies ----------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _peer_matches(peer: dict, labels: dict) -> bool:
    if "ipBlock" in peer:
        return labels is EXTERNAL
    if "namespaceSelector" in peer:
        return False  # other namespaces (DNS): never one of ours
    return labels is not EXTERNAL and _selects(peer["podSelector"], labels)


def _direction_allows(docs, pod: dict, peer: dict, port: int, direction: str) -> bool:
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    policies = [p for p in docs if p["kind"] == "NetworkPolicy" and direction in p["spec"]["policyTypes"]
                and _selects(p["spec"]["podSelector"], pod)]
    if not policies:
        return True  # no policy isolates this pod in this direction
    for policy in policies:
        for rule in policy["spec"].get(key, []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if any(_peer_matches(p, peer) for p in rule.get(peers_key, [])):
                return True
    return False


def allowed(docs, src: dict, dst: dict, port: int) -> bool:
    """Whether the namespace's NetworkPolicies let pod `src` open a connection to `dst` on `port`."""
    if dst is EXTERNAL:
        return _direction_allows(docs, src, dst, port, "Egress")
    return _direction_allows(docs, src, dst, port, "Egress") and _direction_allows(docs, dst, src, port, "Ingress")


def _labels(docs, kind, name):
    return find(docs, kind, name)["spec"]["template"]["metadata"]["labels"]


def test_network_policies_deny_by_default_and_allow_exactly_what_the_trio_needs(overlay):
    name, docs = overlay
    deny = find(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    trainer = _labels(docs, "Job", "rewind-trainer")
    buffer = _labels(docs, "Deployment", "rewind-buffer")
    ckpt = _labels(docs, "Deployment", "rewind-checkpoint")
    assert allowed(docs, trainer, buffer, 50051)
    assert allowed(docs, trainer, ckpt, 50052)
    assert allowed(docs, ckpt, buffer, 50051)  # snapshots and restores
    assert not allowed(docs, buffer, ckpt, 50052)
    assert not allowed(docs, buffer, trainer, 50053)
    assert not allowed(docs, trainer, buffer, 50052)
    assert not allowed(docs, trainer, EXTERNAL, 443)
    assert not allowed(docs, buffer, EXTERNAL, 443)
    if name == "cpu":
        minio = _labels(docs, "StatefulSet", "rewind-minio")
        assert allowed(docs, ckpt, minio, 9000)
        assert allowed(docs, _labels(docs, "Job", "rewind-create-bucket"), minio, 9000)
        assert not allowed(docs, trainer, minio, 9000)
        assert not allowed(docs, ckpt, EXTERNAL, 443)
    else:
        assert allowed(docs, ckpt, EXTERNAL, 443)


# -- Pod Security Standards: restricted, evaluated offline ---------------------------------


def test_every_pod_template_meets_the_restricted_pod_security_standard(overlay):
    from tests.support.pod_security import restricted_violations

    name, docs = overlay
    checked = workloads(docs)
    assert {w["kind"] for w in checked} >= {"Deployment", "Job"}
    for workload in checked:
        where = f"{name}: {workload['kind']}/{workload['metadata']['name']}"
        assert restricted_violations(pod_spec(workload)) == [], where


def test_the_restricted_evaluation_names_what_a_lax_pod_breaks():
    from tests.support.pod_security import restricted_violations

    lax = {"hostNetwork": True, "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
           "containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": 80}],
                           "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = restricted_violations(lax)
    for expected in ("spec.hostNetwork must be false", "volumes[host]: hostPath is not allowed",
                     "containers[app]: privileged must be false", "containers[app]: hostPort 80 is not allowed",
                     "containers[app]: capability SYS_ADMIN may not be added",
                     "containers[app]: allowPrivilegeEscalation must be false",
                     "containers[app]: runAsNonRoot must be true (in the pod's or the container's securityContext)",
                     "containers[app]: seccompProfile.type must be RuntimeDefault or Localhost",
                     "containers[app]: capabilities.drop must include ALL"):
        assert expected in found, (expected, found)
