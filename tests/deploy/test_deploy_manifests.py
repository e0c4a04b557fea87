"""The Kubernetes manifests: every overlay renders, validates strictly, and follows the conventions."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from tests.support.deploy import (
    KUBERNETES_VERSION,
    KUSTOMIZE,
    OVERLAYS,
    SINGLE_RUN_OVERLAYS,
    container_env,
    documented_certificate_names,
    documented_commands,
    find,
    pinned,
    pod_spec,
    pod_templates,
    render,
    repo_path,
    workloads,
)
from tests.support.jobset import check_jsonschema, jobs
from tests.support.network_policies import (
    NAMESPACE,
    PRIVATE,
    PROMETHEUS,
    PUBLIC,
    allowed,
    direction_allows,
    selects,
)

# Its module-scoped services are built once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_deploy_manifests")

RECOMMENDED = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
               "app.kubernetes.io/part-of", "app.kubernetes.io/version")
SERVICES = {"rewind-buffer": 50051, "rewind-checkpoint": 50052, "rewind-trainer": 50053}
HEALTH_PORTS = {"rewind-buffer": 50061, "rewind-checkpoint": 50062, "rewind-trainer": 50063}
# HTTPS: /metrics and /healthz on each; the training-history pages on the checkpoint service.
HTTP_PORTS = {"rewind-buffer": 50071, "rewind-checkpoint": 50072, "rewind-trainer": 50073}
KINDS = {"rewind-buffer": "Deployment", "rewind-checkpoint": "Deployment", "rewind-trainer": "Job"}
SECRETS_DIR = "/var/lib/rewind/secrets"
# The Secrets every Rewind pod mounts, key by key (cert-manager's names for the TLS one).
SECRETS = {"rewind-tokens": ("read.token", "write.token"), "rewind-tls": ("tls.crt", "tls.key", "ca.crt")}
# The keys the documented commands put in them: the scale overlay's pods also mount collector.token.
DOCUMENTED_SECRETS = {**SECRETS, "rewind-tokens": (*SECRETS["rewind-tokens"], "collector.token")}
# What serves and what calls: each variable and the file it must name.
SECURITY_ENV = {"REWIND_READ_TOKENS_FILE": "read.token", "REWIND_WRITE_TOKENS_FILE": "write.token",
                "REWIND_TLS_CERT_FILE": "tls.crt", "REWIND_TLS_KEY_FILE": "tls.key",
                "REWIND_TOKEN_FILE": "write.token", "REWIND_TLS_CA_FILE": "ca.crt"}


@pytest.fixture(scope="module", params=OVERLAYS)
def every_overlay(request):
    return request.param, render(request.param)


@pytest.fixture(scope="module", params=SINGLE_RUN_OVERLAYS)
def overlay(request):
    """An overlay with the base's buffer Deployment and trainer Job (tests/deploy/test_deploy_jobset.py has
    the scale overlay's JobSet)."""
    return request.param, render(request.param)


def test_every_overlay_validates_strictly_against_the_pinned_kubernetes_schemas(every_overlay, tmp_path):
    name, docs = every_overlay
    import yaml

    # A JobSet against its CRD's schema, made strict (tests/data/jobset), and the Jobs it makes against
    # batch/v1's; the rest as they are.
    jobsets = [d for d in docs if d["kind"] == "JobSet"]
    builtin = [d for d in docs if d["kind"] != "JobSet"] + [job for jobset in jobsets for job in jobs(jobset)]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
                             str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("INFO") == len(builtin)  # one "validated" line per object, none skipped
    if jobsets:
        checked = check_jsonschema(jobsets, tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"rewind"}


def test_every_workload_and_container_is_hardened_labelled_and_sized(every_overlay):
    _, docs = every_overlay
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    used_accounts = []
    for w, (where, template, _) in ((each, t) for each in workloads(docs) for t in pod_templates(each)):
        labels, template_labels = w["metadata"]["labels"], template["metadata"]["labels"]
        for key in RECOMMENDED:
            assert labels.get(key) and template_labels.get(key), f"{where}: label {key}"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        spec = template["spec"]
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
    assert len(used_accounts) == len(set(used_accounts)), "one ServiceAccount per workload (per JobSet role)"


def test_the_services_have_probes_on_their_health_and_http_ports_named_ports_and_cluster_ip_services(overlay):
    _, docs = overlay
    for name, port in SERVICES.items():
        kind = KINDS[name]
        w = find(docs, kind, name)
        [c] = pod_spec(w)["containers"]
        health, http = HEALTH_PORTS[name], HTTP_PORTS[name]
        assert c["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"},
                              {"name": "health", "containerPort": health, "protocol": "TCP"},
                              {"name": "http", "containerPort": http, "protocol": "TCP"}]
        env = container_env(docs, c)
        assert env["REWIND_PORT"] == str(port)
        # The main port serves TLS only; the kubelet's gRPC probes cannot, so they use the
        # plaintext health-only port the service opens for them.
        assert env["REWIND_HEALTH_PORT"] == str(health)
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": health}, f"{name}: {probe} must use the health port"
        # Readiness asks the HTTP side's open /healthz, over HTTPS since TLS is on (REWIND_TLS_CERT_FILE).
        assert env["REWIND_HTTP_PORT"] == str(http) and env["REWIND_TLS_CERT_FILE"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}, name
        svc = find(docs, "Service", name)
        assert svc["spec"]["type"] == "ClusterIP"
        # The Service offers the TLS ports (gRPC and HTTPS), never the health port.
        assert [(p["name"], p["port"], p["targetPort"], p["appProtocol"]) for p in svc["spec"]["ports"]] == [
            ("grpc", port, "grpc", "grpc"), ("http", http, "http", "https")]
        selector = svc["spec"]["selector"]
        assert selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        if kind == "Deployment":
            assert w["spec"]["replicas"] == 1 and w["spec"]["strategy"]["type"] == "Recreate"
            assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_every_pod_asks_to_be_scraped_over_https_on_its_http_port(overlay):
    _, docs = overlay
    for name, http in HTTP_PORTS.items():
        annotations = find(docs, KINDS[name], name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(http),
                               "prometheus.io/scheme": "https", "prometheus.io/path": "/metrics"}, name


def test_the_optional_service_monitor_scrapes_every_http_port_with_the_read_token_and_the_ca(tmp_path):
    import yaml

    # A user's kustomization over an overlay (kustomize wants relative paths).
    kustomization = tmp_path / "kustomization.yaml"
    kustomization.write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(repo_path("deploy", "k8s", "overlays", "cpu"), tmp_path)],
        "components": [os.path.relpath(repo_path("deploy", "k8s", "components", "servicemonitor"), tmp_path)]}))
    out = subprocess.run([str(KUSTOMIZE), "build", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    monitor = find(docs, "ServiceMonitor", "rewind")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == "rewind"
    selector = monitor["spec"]["selector"]
    services = [d for d in docs if d["kind"] == "Service" and selects(selector, d["metadata"]["labels"])]
    assert sorted(d["metadata"]["name"] for d in services) == sorted(SERVICES)
    [endpoint] = monitor["spec"]["endpoints"]
    assert all(endpoint["port"] in [p["name"] for p in d["spec"]["ports"]] for d in services)
    assert (endpoint["port"], endpoint["scheme"], endpoint["path"]) == ("http", "https", "/metrics")
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "rewind-tokens",
                                                                            "key": "read.token"}}
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "rewind-tls", "key": "ca.crt"}}
    assert endpoint["tlsConfig"]["serverName"] in {f"{s}.rewind.svc" for s in SERVICES}  # in the certificate
    assert "insecureSkipVerify" not in endpoint["tlsConfig"]


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


def test_s3_credentials_come_only_from_a_secret_and_the_endpoint_and_bucket_from_a_config_map(every_overlay):
    name, docs = every_overlay
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


def test_every_rewind_pod_mounts_the_token_and_tls_secrets_read_only_and_turns_auth_and_tls_on(overlay):
    _, docs = overlay
    for name in SERVICES:
        spec = pod_spec(find(docs, KINDS[name], name))
        [c] = spec["containers"]
        [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == SECRETS_DIR]
        assert mount["readOnly"] is True, name
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        projected = volume["projected"]
        sources = {s["secret"]["name"]: s["secret"] for s in projected["sources"]}
        assert set(sources) == set(SECRETS), name
        files = set()
        for secret, keys in SECRETS.items():
            items = sources[secret]["items"]
            assert [(i["key"], i["path"]) for i in items] == [(k, k) for k in keys], (name, secret)
            assert not sources[secret].get("optional"), f"{name}: a missing Secret must keep the pod from starting"
            files.update(keys)
        # Readable by the owner (root) and the pod's fsGroup, which the service user is in; no one else.
        assert projected["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 10001, name
        env = container_env(docs, c)
        for variable, file in SECURITY_ENV.items():
            assert env.get(variable) == f"{SECRETS_DIR}/{file}" and file in files, (name, variable)
        assert "REWIND_ALLOW_UNAUTHENTICATED" not in env, name
        assert not env.get("REWIND_HOST"), f"{name}: the image's 0.0.0.0, where no tokens means no start"
    # The Secrets are the user's (docs/reference/deploy.md): no overlay ships a token or a key.
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] in SECRETS]


def test_the_checkpoint_service_may_dial_the_trainers_buffer_and_no_other_address(overlay):
    from rewind_checkpoint.dials import is_allowed, is_plain

    _, docs = overlay
    [trainer] = pod_spec(find(docs, "Job", "rewind-trainer"))["containers"]
    [ckpt] = pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"]
    allowed = tuple(container_env(docs, ckpt)["REWIND_BUFFER_ADDRESSES"].split(","))
    buffer = container_env(docs, trainer)["REWIND_BUFFER_ADDRESS"]
    assert is_plain(buffer) and is_allowed(buffer, allowed)
    assert all("*" not in entry and "?" not in entry for entry in allowed), "exact addresses, no patterns"
    assert {entry.split(":")[0].split(".")[0] for entry in allowed} == {"rewind-buffer"}
    for other in ("rewind-checkpoint:50052", "rewind-buffer:50061", "127.0.0.1:50051", "10.0.0.1:50051",
                  "rewind-minio:9000", "kubernetes.default.svc:443", "169.254.169.254:80"):
        assert not is_allowed(other, allowed), other


def presigned_host(env: dict[str, str], monkeypatch) -> str:
    """The host:port of a presigned URL the checkpoint service with this environment would hand out."""
    from rewind.presigned import endpoint_of
    from rewind_checkpoint.store import open_store

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "REWIND_S3_ADDRESSING_STYLE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION"):
        if name in env:
            monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "example")  # presigning is offline: any key signs
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    grant = open_store(env["REWIND_STORE"]).presign_put("agent/run/blocks/x", 1, "0" * 64, 60)
    return endpoint_of(grant.url, "url")[3]


def test_the_buffer_service_and_the_trainer_may_upload_to_the_store_and_nowhere_else(overlay, monkeypatch):
    from rewind.endpoints import may_dial

    _, docs = overlay
    [ckpt] = pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"]
    store = presigned_host(container_env(docs, ckpt), monkeypatch)
    for kind, name in (("Deployment", "rewind-buffer"), ("Job", "rewind-trainer")):
        [c] = pod_spec(find(docs, kind, name))["containers"]
        endpoints = container_env(docs, c)["REWIND_STORE_ENDPOINTS"].split(",")
        assert may_dial(store, endpoints), (name, store, endpoints)
        for other in ("rewind-checkpoint:50052", "rewind-buffer:50051", "127.0.0.1:9000", "10.0.0.1:443",
                      "kubernetes.default.svc:443", "169.254.169.254:80", "example.com:443"):
            assert not may_dial(other, endpoints), (name, other)


def test_the_documented_secrets_name_every_address_the_pods_dial_and_hold_every_key_they_mount(tmp_path):
    commands = documented_commands()
    names = documented_certificate_names(tmp_path)
    dialled = {"127.0.0.1", "localhost"}  # kubectl port-forward
    for overlay in SINGLE_RUN_OVERLAYS:  # the scale overlay's names: tests/deploy/test_deploy_jobset.py
        docs = render(overlay)
        [trainer] = pod_spec(find(docs, "Job", "rewind-trainer"))["containers"]
        [ckpt] = pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"]
        env = container_env(docs, trainer)
        addresses = [env["REWIND_BUFFER_ADDRESS"], env["REWIND_CHECKPOINT_ADDRESS"],
                     *container_env(docs, ckpt)["REWIND_BUFFER_ADDRESSES"].split(",")]
        dialled |= {a.rsplit(":", 1)[0] for a in addresses}
        for service in SERVICES:
            dialled |= {service, f"{service}.rewind.svc", f"{service}.rewind.svc.cluster.local"}
    assert dialled <= names, sorted(dialled - names)
    # The kubectl commands make exactly the Secrets and keys the pods mount, from the files init wrote.
    made = {}
    for command in commands:
        if command[:2] == ["kubectl", "-n"] and command[3:6] == ["create", "secret", "generic"]:
            sources = [a.split("=", 1)[1] for a in command if a.startswith("--from-file=")]
            keys = [s.split("=", 1)[0] if "=" in s else s.rsplit("/", 1)[-1] for s in sources]
            assert all((tmp_path / s.split("=")[-1]).is_file() for s in sources), command
            made[command[6]] = tuple(keys)
    assert made == DOCUMENTED_SECRETS


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


def test_a_disruption_budget_keeps_the_checkpoint_service_for_the_trainers_last_save(every_overlay):
    _, docs = every_overlay
    pdb = find(docs, "PodDisruptionBudget", "rewind-checkpoint")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = find(docs, "Deployment", "rewind-checkpoint")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- network policies ----------------------------------------------------------


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
    # The plaintext health ports are for the kubelet's probes (from the node) alone.
    for src in (trainer, buffer, ckpt):
        for dst, health in ((buffer, 50061), (ckpt, 50062), (trainer, 50063)):
            assert not allowed(docs, src, dst, health)
    if name == "cpu":
        minio = _labels(docs, "StatefulSet", "rewind-minio")
        bucket_job = _labels(docs, "Job", "rewind-create-bucket")
        # The checkpoint service and the bucket job, and the buffer service and the trainer (uploads to
        # presigned URLs), reach MinIO's API; nobody reaches its console.
        for pod in (ckpt, bucket_job, buffer, trainer):
            assert allowed(docs, pod, minio, 9000) and not allowed(docs, pod, minio, 9001)
        for pod in (ckpt, bucket_job, minio, buffer, trainer):  # the in-cluster store: nothing leaves the cluster
            for address in (*PUBLIC, *PRIVATE):
                assert not allowed(docs, pod, address, 443) and not allowed(docs, pod, address, 80)
    else:
        for pod in (ckpt, buffer, trainer):  # the store's clients: HTTPS to public addresses only
            for address in PUBLIC:
                assert allowed(docs, pod, address, 443), address
                assert not allowed(docs, pod, address, 80)


def test_prometheus_in_the_monitoring_namespace_reaches_the_http_ports_and_nothing_else_does(overlay):
    _, docs = overlay
    pods = {name: _labels(docs, KINDS[name], name) for name in SERVICES}
    elsewhere = {**PROMETHEUS, NAMESPACE: {"kubernetes.io/metadata.name": "default"}}
    for name, pod in pods.items():
        http = HTTP_PORTS[name]
        # Only ingress is ours to check: the monitoring namespace's own policies govern its egress.
        assert direction_allows(docs, pod, PROMETHEUS, http, "Ingress"), name
        assert not direction_allows(docs, pod, elsewhere, http, "Ingress"), name
        for port in (SERVICES[name], HEALTH_PORTS[name]):
            assert not direction_allows(docs, pod, PROMETHEUS, port, "Ingress"), (name, port)
        for src in pods.values():  # the pages and /metrics are for people and Prometheus, not the trio
            assert not allowed(docs, src, pod, http), (name, src["app.kubernetes.io/name"])


def test_an_ingress_controller_reaches_the_history_pages_and_nothing_else(overlay):
    _, docs = overlay
    ingress = {NAMESPACE: {"kubernetes.io/metadata.name": "ingress-nginx"}, "app.kubernetes.io/name": "ingress-nginx"}
    elsewhere = {**ingress, NAMESPACE: {"kubernetes.io/metadata.name": "default"}}
    pods = {name: _labels(docs, KINDS[name], name) for name in SERVICES}
    assert direction_allows(docs, pods["rewind-checkpoint"], ingress, 50072, "Ingress")
    assert not direction_allows(docs, pods["rewind-checkpoint"], elsewhere, 50072, "Ingress")
    for name, pod in pods.items():
        for port in (SERVICES[name], HEALTH_PORTS[name], *([] if name == "rewind-checkpoint" else [HTTP_PORTS[name]])):
            assert not direction_allows(docs, pod, ingress, port, "Ingress"), (name, port)


def test_the_gpu_overlay_lets_the_store_clients_reach_public_https_but_not_the_cluster_or_metadata():
    docs = render("gpu")
    for pod in (_labels(docs, "Deployment", "rewind-checkpoint"), _labels(docs, "Deployment", "rewind-buffer"),
                _labels(docs, "Job", "rewind-trainer")):
        for address in PRIVATE:
            assert not allowed(docs, pod, address, 443), f"{address} must be excluded from the store's ipBlocks"
    [policy] = [p for p in docs if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] == "rewind-store-s3"]
    for rule in policy["spec"]["egress"]:
        assert [p["port"] for p in rule["ports"]] == [443]
        for peer in rule["to"]:
            block = peer["ipBlock"]
            network = ipaddress.ip_network(block["cidr"])
            # Every excluded range lies inside its block (the API server refuses any other).
            assert all(ipaddress.ip_network(e).subnet_of(network) for e in block["except"]), block


# -- Pod Security Standards: restricted, evaluated offline ---------------------------------


def test_every_pod_template_meets_the_restricted_pod_security_standard(every_overlay):
    from tests.support.pod_security import restricted_violations

    name, docs = every_overlay
    checked = [t for w in workloads(docs) for t in pod_templates(w)]
    kinds = {w["kind"] for w in workloads(docs)}
    assert "Deployment" in kinds and kinds & {"Job", "JobSet"}, kinds
    for where, template, _ in checked:
        assert restricted_violations(template["spec"]) == [], f"{name}: {where}"


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
