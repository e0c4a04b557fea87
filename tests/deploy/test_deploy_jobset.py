"""The scale overlay: one JobSet per run (N replay shards, a learner, M collectors) beside the base's shared
checkpoint service, checked offline against JobSet v0.12.0's CRD and what its controller and webhook do.

tests/deploy/test_deploy_manifests.py holds what every overlay must meet (strict schemas, the JobSet's
against its CRD's, hardening, the restricted Pod Security profile); this module holds what the run's
shape must be: order, success and failure, names and the certificate, tokens, and the network.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from rewind.endpoints import is_allowed, is_plain
from rewind_runtime import settings as mechanism
from tests.support.deploy import (
    container_env,
    documented_certificate_names,
    find,
    pod_spec,
    render,
)
from tests.support.docs import page
from tests.support.jobset import (
    API_VERSION,
    CRD,
    CRD_SHA256,
    JOB_INDEX,
    RELEASE,
    check_jsonschema,
    crd_sha256,
    job_name,
    openapi_schema,
    pods,
    replicated_job,
    subdomain,
)
from tests.support.network_policies import PRIVATE, PROMETHEUS, PUBLIC, allowed, direction_allows, selects

# Its module-scoped rendering is made once: every test of the module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("test_deploy_jobset")

ROLES = ("replay", "learner", "collectors")
CONTAINERS = {"replay": "buffer", "learner": "trainer", "collectors": "collector"}
PORTS = {"replay": 50051, "learner": 50053, "checkpoint": 50052}
HEALTH_PORTS = {"replay": 50061, "learner": 50063, "checkpoint": 50062}
HTTP_PORTS = {"replay": 50071, "learner": 50073, "checkpoint": 50072}
SECRETS_DIR = "/var/lib/rewind/secrets"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# JobSet's webhook (pkg/webhooks/jobset_webhook.go): failure-policy rule names, and DNS-1035 labels.
RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def docs():
    return render("scale")


@pytest.fixture(scope="module")
def jobset(docs):
    [found] = [d for d in docs if d["kind"] == "JobSet"]
    return found


def container(jobset: dict, role: str) -> dict:
    [c] = replicated_job(jobset, role)["template"]["spec"]["template"]["spec"]["containers"]
    assert c["name"] == CONTAINERS[role]
    return c


def env_of(docs: list[dict], jobset: dict, role: str, job_index: int = 0) -> dict[str, str]:
    """The environment of the pod of Job `job_index` of a role, its downward API fields resolved."""
    [pod] = [p for p in pods(jobset) if p.replicated == role and p.job_index == job_index]
    return container_env(docs, container(jobset, role), pod.field)


def settings_of(args: list[str], env: dict[str, str]):
    """The settings `rewind <args>` would run with in this environment (no file, no other variable)."""
    from rewind_cli.main import build_parser

    parsed = build_parser().parse_args(args)
    variables = {k: v for k, v in env.items() if k.startswith("REWIND_")}
    return mechanism.load(parsed.settings_class, environ=variables,
                          given=mechanism.flags(parsed.settings_class, parsed)).settings


def labels_of(jobset: dict, role: str) -> dict[str, str]:
    """The labels of a role's first pod, JobSet's own included."""
    return next(p.labels for p in pods(jobset) if p.replicated == role)


def shard_names(jobset: dict) -> list[str]:
    return [p.dns_name for p in pods(jobset) if p.replicated == "replay"]


def learner_name(jobset: dict) -> str:
    [learner] = [p for p in pods(jobset) if p.replicated == "learner"]
    return learner.dns_name


# -- the vendored CRD and the strict schema made of it --------------------------------------


def test_the_vendored_crd_is_jobset_v0_12_0s_as_its_readme_says():
    readme = (CRD.parent / "README.md").read_text()
    assert crd_sha256() == CRD_SHA256 and CRD_SHA256 in readme
    assert f"/jobset/blob/{RELEASE}/config/components/crd/bases/{CRD.name}" in readme
    schema = openapi_schema()
    # RestartJob, which the overlay uses for shards and collectors, is one of v0.12.0's actions.
    action = schema["properties"]["spec"]["properties"]["failurePolicy"]["properties"]["rules"]["items"][
        "properties"]["action"]
    assert action["enum"] == ["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob",
                              "RestartJobAndIgnoreMaxRestarts"]


@pytest.mark.parametrize("where, mistake", [
    ("an unknown field of the spec", lambda js: js["spec"].update(startupOrder="InOrder")),
    ("replicas misspelt", lambda js: js["spec"]["replicatedJobs"][0].update(replica=2)),
    ("a failure-policy action JobSet lacks", lambda js: js["spec"]["failurePolicy"]["rules"][0].update(
        action="RestartPod")),
    ("a dependsOn status JobSet lacks", lambda js: js["spec"]["replicatedJobs"][1]["dependsOn"][0].update(
        status="Running")),
    ("a field the Job template lacks", lambda js: js["spec"]["replicatedJobs"][0]["template"]["spec"].update(
        restartPolicy="Never")),
    ("a misspelt container field", lambda js: js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"]["containers"][0].update(imagePullpolicy="Always")),
    ("a string for an integer", lambda js: js["spec"]["failurePolicy"].update(maxRestarts="10")),
])
def test_the_strict_schema_refuses_what_the_crd_does_not_define(jobset, tmp_path, where, mistake):
    wrong = copy.deepcopy(jobset)
    mistake(wrong)
    result = check_jsonschema([wrong], tmp_path)
    assert result.returncode == 1, f"{where}: {result.stdout}{result.stderr}"
    assert "Schema validation errors were encountered" in result.stdout + result.stderr, where


# -- the run's shape -----------------------------------------------------------------


def test_the_overlay_is_one_jobset_of_shards_a_learner_and_collectors_beside_the_shared_checkpoint_service(docs):
    [jobset] = [d for d in docs if d["kind"] == "JobSet"]
    assert jobset["apiVersion"] == API_VERSION and jobset["metadata"]["namespace"] == "rewind"
    assert [r["name"] for r in jobset["spec"]["replicatedJobs"]] == list(ROLES)
    assert {r["name"]: r["replicas"] for r in jobset["spec"]["replicatedJobs"]} == {
        "replay": 2, "learner": 1, "collectors": 3}
    # The base's single buffer service and trainer Job are gone; its checkpoint service stays.
    assert not [d for d in docs if d["kind"] == "Job"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == ["rewind-checkpoint"]
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Service") == [
        "rewind-checkpoint", "rewind-trainer"]
    # The base's Service rewind-trainer (kubectl port-forward to status, checkpoint-now, stop) selects the
    # learner and no other pod.
    selector = find(docs, "Service", "rewind-trainer")["spec"]["selector"]
    assert [p.replicated for p in pods(jobset) if selects({"matchLabels": selector}, p.labels)] == ["learner"]


def test_the_learner_waits_for_the_shards_and_the_collectors_for_the_learner_through_depends_on(jobset):
    spec = jobset["spec"]
    assert "startupPolicy" not in spec, "startupPolicy is deprecated (and exclusive with dependsOn)"
    assert {r["name"]: r.get("dependsOn") for r in spec["replicatedJobs"]} == {
        "replay": None, "learner": [{"name": "replay", "status": "Ready"}],
        "collectors": [{"name": "learner", "status": "Ready"}]}
    # The webhook's rules: the first replicatedJob depends on nothing, each on one listed before it.
    seen = []
    for r in spec["replicatedJobs"]:
        assert len(r.get("dependsOn", [])) <= 1 and all(d["name"] in seen for d in r.get("dependsOn", [])), r["name"]
        seen.append(r["name"])
    # Ready means serving: the shards and the learner have readiness probes (collectors serve nothing).
    for role in ("replay", "learner"):
        assert container(jobset, role)["readinessProbe"]["httpGet"] == {
            "path": "/healthz", "port": "http", "scheme": "HTTPS"}, role


def test_the_run_succeeds_when_the_learner_finishes(jobset):
    assert jobset["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["learner"]}


def test_a_failed_shard_or_collector_restarts_alone_and_a_failed_learner_restarts_the_run(jobset):
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] >= 1
    assert "restartStrategy" not in policy or policy["restartStrategy"] == "Recreate"
    rules = policy["rules"]
    # For each role, the first rule that matches its Job's failure (an empty target list matches every role).
    first = {role: next(r for r in rules if not r.get("targetReplicatedJobs") or role in r["targetReplicatedJobs"])
             for role in ROLES}
    assert {role: rule["action"] for role, rule in first.items()} == {
        "replay": "RestartJob", "collectors": "RestartJob", "learner": "RestartJobSet"}
    assert all(not rule.get("onJobFailureReasons") and not rule.get("onJobFailureMessagePatterns")
               for rule in first.values()), "every failure of the role, whatever its reason"
    names = [r["name"] for r in rules]
    assert len(set(names)) == len(names) and all(RULE_NAME.match(n) and len(n) <= 128 for n in names), names
    # RestartJob is behind JobSet's alpha feature gate of that name (off in v0.12.0): the guide turns it on.
    assert "RestartJob: true" in page("how-to/kubernetes.md")


def test_no_preemption_or_eviction_spends_a_retry_of_any_job(docs, jobset):
    for r in jobset["spec"]["replicatedJobs"]:
        spec = r["template"]["spec"]
        assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 1, r["name"]
        assert spec["template"]["spec"]["restartPolicy"] == "Never", r["name"]  # podFailurePolicy needs it
        assert spec["backoffLimit"] >= 1, r["name"]
        rules = spec["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # Every role stopped by SIGTERM (the learner after its checkpoint, a drained shard, a collector) exits with
    # the code its podFailurePolicy ignores: exiting 0 would count the pod complete, and JobSet restarts no
    # complete Job.
    for role, container in (("learner", "trainer"), ("replay", "buffer"), ("collectors", "collector")):
        code = int(env_of(docs, jobset, role)["REWIND_PREEMPT_EXIT_CODE"])
        assert code not in (0, 1, 2), role
        [exit_rule] = [r for r in replicated_job(jobset, role)["template"]["spec"]["podFailurePolicy"]["rules"]
                       if "onExitCodes" in r]
        assert exit_rule == {"action": "Ignore", "onExitCodes": {"containerName": container, "operator": "In",
                                                                 "values": [code]}}, role
    assert env_of(docs, jobset, "learner")["REWIND_RESUME_FROM_CHECKPOINT"] == "latest"


def test_kueue_queues_the_jobset_as_one_workload(jobset):
    assert jobset["metadata"]["labels"][QUEUE_LABEL]
    assert "suspend" not in jobset["spec"], "Kueue suspends and resumes it"
    for r in jobset["spec"]["replicatedJobs"]:  # one workload: the JobSet's label, not its pods'
        assert QUEUE_LABEL not in r["template"]["spec"]["template"]["metadata"]["labels"], r["name"]


def test_the_shards_serve_on_after_sigterm_until_the_learners_final_cut_has_committed(docs, jobset):
    replay, learner = env_of(docs, jobset, "replay"), env_of(docs, jobset, "learner")
    serve_after = float(replay["REWIND_SERVE_AFTER_SIGTERM_S"])
    replay_grace = replicated_job(jobset, "replay")["template"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    learner_grace = replicated_job(jobset, "learner")["template"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    # A suspend stops every pod at once: the shards serve for as long as the learner may take to stop...
    assert learner_grace >= float(learner["REWIND_STOP_GRACE_S"]) + 30
    assert serve_after >= learner_grace
    # ... and the kubelet lets them serve that long, then drain.
    assert replay_grace >= serve_after + float(replay["REWIND_GRACE_S"])


# -- names, addresses and the certificate ------------------------------------------------------


def test_jobset_names_the_pods_and_makes_the_headless_service_itself(docs, jobset):
    network = jobset["spec"]["network"]
    assert network["enableDNSHostnames"] is True and network.get("publishNotReadyAddresses", True) is True
    name = subdomain(jobset)
    assert DNS_1035.match(name) and len(name) <= 63
    # JobSet makes the headless Service named after the subdomain, unless one by that name exists already
    # (then it takes that one as it is): the overlay ships none.
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    for r in jobset["spec"]["replicatedJobs"]:  # the webhook's limits on the names of the Jobs and pods
        longest = job_name(jobset, r["name"], r["replicas"] - 1)
        assert DNS_1035.match(longest) and len(f"{longest}-0-abcde") <= 63, longest
    assert shard_names(jobset) == ["rewind-run-replay-0-0.rewind-run", "rewind-run-replay-1-0.rewind-run"]


def test_every_shard_is_dialled_by_its_name_in_the_same_order_by_the_learner_and_every_collector(docs, jobset):
    shards = [f"{name}:{PORTS['replay']}" for name in shard_names(jobset)]
    learner = env_of(docs, jobset, "learner")
    assert learner["REWIND_BUFFER_ADDRESSES"].split(",") == shards
    for i in range(replicated_job(jobset, "collectors")["replicas"]):
        collector = env_of(docs, jobset, "collectors", i)
        assert collector["REWIND_BUFFER_ADDRESSES"].split(",") == shards, i
        assert collector["REWIND_LEARNER_ADDRESS"] == f"{learner_name(jobset)}:{PORTS['learner']}"
        assert collector["REWIND_CHECKPOINT_ADDRESS"] == learner["REWIND_CHECKPOINT_ADDRESS"] == \
            f"rewind-checkpoint:{PORTS['checkpoint']}"
        assert (collector["REWIND_RUN_ID"], collector["REWIND_TASK"]) == (learner["REWIND_RUN_ID"],
                                                                          learner["REWIND_TASK"])
    # The ports they dial are the ones the shards and the learner serve.
    assert container_env(docs, container(jobset, "replay"))["REWIND_PORT"] == str(PORTS["replay"])
    assert learner["REWIND_PORT"] == str(PORTS["learner"])


def test_the_learner_runs_as_a_learner_of_every_shard_and_collector(docs, jobset):
    settings = settings_of(container(jobset, "learner")["args"], env_of(docs, jobset, "learner"))
    assert settings.collectors == replicated_job(jobset, "collectors")["replicas"]
    assert settings.shard_count == replicated_job(jobset, "replay")["replicas"]
    assert list(settings.buffer_addresses) == [f"{n}:{PORTS['replay']}" for n in shard_names(jobset)]
    assert (settings.publish_weights_every, settings.updates_per_step) == (50, 1.0)
    assert not settings.local_services and settings.device == "cuda"


def test_the_checkpoint_service_may_dial_every_shard_and_nothing_else(docs, jobset):
    [ckpt] = pod_spec(find(docs, "Deployment", "rewind-checkpoint"))["containers"]
    allowed_list = container_env(docs, ckpt)["REWIND_BUFFER_ADDRESSES"].split(",")
    for shard in shard_names(jobset):
        assert is_plain(f"{shard}:50051") and is_allowed(f"{shard}:50051", allowed_list), shard
    for other in ("rewind-buffer:50051", f"{learner_name(jobset)}:50053", "rewind-run-replay-2-0.rewind-run:50051",
                  "rewind-run-collectors-0-0.rewind-run:50051", "rewind-run-replay-0-0.rewind-run:50061",
                  "10.0.0.1:50051", "169.254.169.254:80"):
        assert not is_allowed(other, allowed_list), other


def test_the_documented_certificate_names_the_shards_the_learner_and_the_checkpoint_service(docs, jobset, tmp_path):
    names = documented_certificate_names(tmp_path)
    learner = env_of(docs, jobset, "learner")
    collector = env_of(docs, jobset, "collectors")
    dialled = {a.rsplit(":", 1)[0] for a in (*learner["REWIND_BUFFER_ADDRESSES"].split(","),
                                              learner["REWIND_CHECKPOINT_ADDRESS"],
                                              collector["REWIND_LEARNER_ADDRESS"])}
    assert dialled == {*shard_names(jobset), learner_name(jobset), "rewind-checkpoint"}
    assert dialled <= names, sorted(dialled - names)
    # So does the cert-manager Certificate the reference shows instead.
    [certificate] = [d for block in re.findall(r"```yaml\n(.*?)```", page("reference/deploy.md"), re.S)
                     for d in yaml.safe_load_all(block) if isinstance(d, dict) and d.get("kind") == "Certificate"]
    assert dialled <= set(certificate["spec"]["dnsNames"]), sorted(dialled - set(certificate["spec"]["dnsNames"]))


# -- tokens and secrets ------------------------------------------------------------------


def projected(spec: dict) -> dict[str, tuple[str, ...]]:
    """{Secret: its keys} of the pod's secrets volume, checked to be mounted read-only where the files are
    looked for, readable by the pod's group alone, and required."""
    [c] = spec["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == SECRETS_DIR]
    assert mount["readOnly"] is True
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["projected"]["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 10001
    sources = [s["secret"] for s in volume["projected"]["sources"]]
    assert not any(s.get("optional") for s in sources)
    for s in sources:
        assert all(i["key"] == i["path"] for i in s["items"]), s
    return {s["name"]: tuple(i["key"] for i in s["items"]) for s in sources}


def test_the_servers_take_the_collectors_token_and_the_collectors_hold_it_alone(docs, jobset):
    servers = {"replay": replicated_job(jobset, "replay")["template"]["spec"]["template"]["spec"],
               "learner": replicated_job(jobset, "learner")["template"]["spec"]["template"]["spec"],
               "checkpoint": pod_spec(find(docs, "Deployment", "rewind-checkpoint"))}
    for role, spec in servers.items():
        assert projected(spec) == {"rewind-tokens": ("read.token", "write.token", "collector.token"),
                                   "rewind-tls": ("tls.crt", "tls.key", "ca.crt")}, role
        env = container_env(docs, spec["containers"][0])
        assert env["REWIND_COLLECTOR_TOKENS_FILE"] == f"{SECRETS_DIR}/collector.token", role
        assert env["REWIND_TOKEN_FILE"] == f"{SECRETS_DIR}/write.token", role
        assert env["REWIND_TLS_CERT_FILE"] == f"{SECRETS_DIR}/tls.crt", role
    # A collector may add episodes, GetWeights and read checkpoints, no more: it has no read or write
    # token and no key, only its own token and the CA.
    collectors = replicated_job(jobset, "collectors")["template"]["spec"]["template"]["spec"]
    assert projected(collectors) == {"rewind-tokens": ("collector.token",), "rewind-tls": ("ca.crt",)}
    env = env_of(docs, jobset, "collectors")
    assert (env["REWIND_TOKEN_FILE"], env["REWIND_TLS_CA_FILE"]) == (f"{SECRETS_DIR}/collector.token",
                                                                   f"{SECRETS_DIR}/ca.crt")
    assert not {k for k in env if k.endswith("TOKENS_FILE") or k.startswith("REWIND_TLS_CERT")}, env


def test_each_collector_has_its_own_id_and_seed_from_its_jobs_index_and_a_state_folder(docs, jobset):
    count = replicated_job(jobset, "collectors")["replicas"]
    collectors = [settings_of(container(jobset, "collectors")["args"], env_of(docs, jobset, "collectors", i))
                  for i in range(count)]
    assert [c.collector_id for c in collectors] == [f"collector-{i}" for i in range(count)]
    seeds = [c.seed for c in collectors]
    learner_seed = int(env_of(docs, jobset, "learner")["REWIND_SEED"])
    assert len(set(seeds)) == count and learner_seed not in seeds, seeds
    # The index comes from the annotation JobSet puts on each pod; any Job's ("10" then the index: never twice).
    [index] = [v for v in container(jobset, "collectors")["env"] if "valueFrom" in v]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{JOB_INDEX}']"
    assert len({int(f"10{i}") for i in range(1024)}) == 1024
    spec = replicated_job(jobset, "collectors")["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {c.state_dir for c in collectors} == {"/var/lib/rewind/collectors"}
    assert "emptyDir" in volumes[mounts["/var/lib/rewind/collectors"]]
    assert {c.device for c in collectors} == {"cpu"} and not {c.run_id for c in collectors} - {"k8s-scale"}


def test_only_the_learner_asks_for_a_gpu(jobset):
    for role in ROLES:
        spec = replicated_job(jobset, role)["template"]["spec"]["template"]["spec"]
        gpus = spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        if role == "learner":
            assert gpus == 1 and spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert gpus is None and "nodeSelector" not in spec, role


# -- network policies --------------------------------------------------------------------------


def test_each_role_reaches_exactly_the_services_it_calls(docs, jobset):
    roles = {"replay": labels_of(jobset, "replay"), "learner": labels_of(jobset, "learner"),
             "collector": labels_of(jobset, "collectors"),
             "checkpoint": find(docs, "Deployment", "rewind-checkpoint")["spec"]["template"]["metadata"]["labels"]}
    wanted = {("learner", "replay", 50051), ("collector", "replay", 50051), ("checkpoint", "replay", 50051),
              ("learner", "checkpoint", 50052), ("collector", "checkpoint", 50052), ("collector", "learner", 50053)}
    ports = [*PORTS.values(), *HEALTH_PORTS.values(), *HTTP_PORTS.values()]
    for src_name, src in roles.items():
        for dst_name, dst in roles.items():
            for port in ports:
                assert allowed(docs, src, dst, port) == ((src_name, dst_name, port) in wanted), \
                    (src_name, dst_name, port)
    # Besides default-deny, a policy of each role's own says what it takes in and sends out; the
    # collectors' lets nothing in.
    for name, pod in roles.items():
        for direction in ("Ingress", "Egress"):
            assert any(p["kind"] == "NetworkPolicy" and direction in p["spec"]["policyTypes"]
                       and selects(p["spec"]["podSelector"], pod) and p["metadata"]["name"] != "default-deny"
                       for p in docs), (name, direction)
    [own] = [p for p in docs if p["kind"] == "NetworkPolicy" and p["metadata"]["name"] == "rewind-collector"]
    assert "Ingress" in own["spec"]["policyTypes"] and not own["spec"].get("ingress")


def test_the_store_is_for_the_servers_and_prometheus_scrapes_them_not_the_collectors(docs, jobset):
    replay, learner, collector = (labels_of(jobset, r) for r in ROLES)
    ckpt = find(docs, "Deployment", "rewind-checkpoint")["spec"]["template"]["metadata"]["labels"]
    for pod in (replay, learner, ckpt):  # uploads to presigned URLs, the checkpoint service's own calls
        assert all(allowed(docs, pod, address, 443) for address in PUBLIC)
    for pod in (replay, learner, ckpt, collector):
        assert not any(allowed(docs, pod, address, port) for address in PRIVATE for port in (80, 443))
    assert not any(allowed(docs, collector, address, port) for address in PUBLIC for port in (80, 443))
    for pod, port in ((replay, HTTP_PORTS["replay"]), (learner, HTTP_PORTS["learner"])):
        assert direction_allows(docs, pod, PROMETHEUS, port, "Ingress"), port
        assert not direction_allows(docs, pod, PROMETHEUS, port - 20, "Ingress"), port  # the gRPC port
    assert not any(direction_allows(docs, collector, PROMETHEUS, port, "Ingress")
                   for port in (*PORTS.values(), *HTTP_PORTS.values()))
    # The JobSet's pods keep the prometheus.io annotations of the services they are.
    for role, port in (("replay", 50071), ("learner", 50073)):
        annotations = replicated_job(jobset, role)["template"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                               "prometheus.io/scheme": "https", "prometheus.io/path": "/metrics"}, role
