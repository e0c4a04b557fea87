"""compose.yaml and the image definition, checked without a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

from packaging.utils import canonicalize_name

from tests.support.deploy import COMPOSE, compose, compose_env, dockerfile, pinned, repo_path
from tests.support.packages import constraint_pins, project_requirements

REWIND_SERVICES = {"buffer": 50051, "checkpoint": 50052, "trainer": 50053}
GPU_SERVICES = {"buffer-gpu": 50051, "trainer-gpu": 50053}
# HTTP: /metrics on every service, the training-history pages on the checkpoint service.
HTTP_PORTS = {"buffer": 50071, "checkpoint": 50072, "trainer": 50073, "buffer-gpu": 50071, "trainer-gpu": 50073}
SECRETS_DIR = "/var/lib/rewind/secrets"
# Serving (tokens, certificate) and calling (token, CA): each variable and the file it names.
SECURITY_ENV = {"REWIND_READ_TOKENS_FILE": "read.token", "REWIND_WRITE_TOKENS_FILE": "write.token",
                "REWIND_TLS_CERT_FILE": "tls.crt", "REWIND_TLS_KEY_FILE": "tls.key",
                "REWIND_TOKEN_FILE": "write.token", "REWIND_TLS_CA_FILE": "ca.crt"}


def test_compose_file_validates_against_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_are_pinned_and_minio_has_its_ready_check_and_a_bucket_job():
    services = compose()["services"]
    for name, svc in services.items():
        image = svc["image"]
        assert pinned(image), f"{name}: pin {image}"
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", services["minio"]["image"])
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    bucket = services["create-bucket"]
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.[0-9TZ-]+", bucket["image"])
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert "mc mb --ignore-existing" in bucket["command"][0]
    assert bucket["restart"] == "no"


def test_services_start_in_order_with_health_checks_and_the_trainer_resumes_from_latest():
    services = compose()["services"]
    for name in (*REWIND_SERVICES, *GPU_SERVICES):
        assert services[name]["healthcheck"]["test"] == ["CMD", "rewind", "health", "--timeout", "4"], name
        assert compose_env(services[name])["REWIND_PORT"] == str({**REWIND_SERVICES, **GPU_SERVICES}[name])
    secrets = {"secrets": {"condition": "service_completed_successfully"}}
    assert services["checkpoint"]["depends_on"] == {**secrets,
                                                    "create-bucket": {"condition": "service_completed_successfully"}}
    assert services["trainer"]["depends_on"] == {**secrets, "buffer": {"condition": "service_healthy"},
                                                 "checkpoint": {"condition": "service_healthy"}}
    assert services["trainer-gpu"]["depends_on"] == {**secrets, "buffer-gpu": {"condition": "service_healthy"},
                                                     "checkpoint": {"condition": "service_healthy"}}
    for name in ("trainer", "trainer-gpu"):
        env = compose_env(services[name])
        assert env["REWIND_RESUME_FROM_CHECKPOINT"] == "latest"
        assert env["REWIND_BUFFER_ADDRESS"] == f"{list(services[name]['depends_on'])[1]}:50051"
        assert env["REWIND_CHECKPOINT_ADDRESS"] == "checkpoint:50052"
        # docker compose down: SIGTERM, then the checkpoint must commit before the kill.
        assert int(services[name]["stop_grace_period"].rstrip("s")) > 20 + 30
        assert services[name]["restart"] == "on-failure"  # a finished run stays finished
    env = compose_env(services["checkpoint"])
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["REWIND_STORE"] == "s3://rewind/checkpoints"
    assert env["AWS_ACCESS_KEY_ID"] == compose_env(services["minio"])["MINIO_ROOT_USER"]


def test_ports_are_published_on_loopback_by_default_on_the_documented_numbers_and_volumes_are_named():
    spec = compose()
    services = spec["services"]
    for name, port in {**REWIND_SERVICES, **GPU_SERVICES}.items():
        http = HTTP_PORTS[name]
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}", f"127.0.0.1:{http}:{http}"], name
        assert compose_env(services[name])["REWIND_HTTP_PORT"] == str(http), name
    assert services["minio"]["ports"] == ["127.0.0.1:9000:9000", "127.0.0.1:9001:9001"]
    # One variable publishes them all elsewhere; nothing else is published.
    text = COMPOSE.read_text()
    assert text.count("${REWIND_PUBLISH_HOST:-127.0.0.1}:") == 12
    assert {name for name, svc in services.items() if svc.get("ports")} == {"minio", *REWIND_SERVICES,
                                                                             *GPU_SERVICES}
    assert set(spec["volumes"]) == {"minio-data", "trainer-runs", "rewind-secrets"}
    assert "minio-data:/data" in services["minio"]["volumes"]
    assert "trainer-runs:/var/lib/rewind/runs" in services["trainer"]["volumes"]


def test_a_one_shot_job_makes_the_secrets_and_every_rewind_service_serves_tls_with_tokens():
    services = compose()["services"]
    secrets = services["secrets"]
    command = secrets["command"]
    assert command[:4] == ["secrets", "init", "--dir", SECRETS_DIR] and "--force" not in command  # kept on re-up
    assert secrets["volumes"] == [f"rewind-secrets:{SECRETS_DIR}"]  # the only writer
    assert secrets["restart"] == "no" and secrets["network_mode"] == "none"
    assert secrets["healthcheck"] == {"disable": True}
    assert "profiles" not in secrets  # the gpu profile needs it too
    hosts = set(command[command.index("--hosts") + 1].split(","))
    for name in (*REWIND_SERVICES, *GPU_SERVICES):
        svc = services[name]
        env = compose_env(svc)
        assert f"rewind-secrets:{SECRETS_DIR}:ro" in svc["volumes"], name
        assert svc["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}, name
        for variable, file in SECURITY_ENV.items():
            assert env[variable] == f"{SECRETS_DIR}/{file}", (name, variable)
        assert "REWIND_ALLOW_UNAUTHENTICATED" not in env and "REWIND_HOST" not in env, name
        # The certificate must name every host a service dials: its peers, and itself for the health check.
        dialled = {"127.0.0.1"}
        for variable in ("REWIND_BUFFER_ADDRESS", "REWIND_CHECKPOINT_ADDRESS"):
            if variable in env:
                dialled.add(env[variable].rsplit(":", 1)[0])
        assert dialled <= hosts, (name, dialled - hosts)
    # The checkpoint service dials exactly the trainers' buffers, which the certificate names.
    allowed = compose_env(services["checkpoint"])["REWIND_BUFFER_ADDRESSES"].split(",")
    assert sorted(allowed) == sorted(compose_env(services[t])["REWIND_BUFFER_ADDRESS"]
                                     for t in ("trainer", "trainer-gpu"))
    assert {a.rsplit(":", 1)[0] for a in allowed} <= hosts
    # The buffer services (blocks) and the trainers (trainer.pt) upload to MinIO, where presigned URLs point.
    store = compose_env(services["checkpoint"])["AWS_ENDPOINT_URL"].split("://", 1)[1]
    for name in ("buffer", "buffer-gpu", "trainer", "trainer-gpu"):
        assert compose_env(services[name])["REWIND_STORE_ENDPOINTS"].split(",") == [store], name
    # The other services (MinIO, the bucket job) never see the secrets.
    for name in ("minio", "create-bucket"):
        assert not any("rewind-secrets" in v for v in services[name].get("volumes", [])), name


def test_every_folder_a_volume_is_mounted_on_is_made_by_the_image_for_the_service_user():
    """A named volume takes its owner from the image's folder; a missing one would be root's (a crash loop)."""
    services = compose()["services"]
    made = [path for paths in re.findall(r"install -d -o 10001 -g 10001 -m \d+ ([^\n\\]+)", dockerfile())
            for path in paths.split()]
    assert "/var/lib/rewind/secrets" in made
    assert re.search(r"install -d -o 10001 -g 10001 -m 0700 /var/lib/rewind/secrets$", dockerfile(), re.M), \
        "the secrets folder is the service user's alone"
    for name, svc in services.items():
        if "build" not in svc:
            continue  # MinIO's own image
        for volume in svc.get("volumes", []):
            assert volume.split(":")[1] in made, (name, volume)
    assert "# syntax=" not in dockerfile()  # a BuildKit frontend would be pulled from Docker Hub


def test_the_gpu_profile_reserves_nvidia_devices_and_uses_the_cuda_image():
    services = compose()["services"]
    for name in GPU_SERVICES:
        svc = services[name]
        assert svc["profiles"] == ["gpu"]
        assert svc["build"]["args"]["VARIANT"] == "cuda"
        [device] = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert compose_env(services["trainer-gpu"])["REWIND_DEVICE"] == "cuda"
    for name in ("minio", "create-bucket", "secrets", *REWIND_SERVICES):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"
        assert "deploy" not in services[name]


# -- the image -----------------------------------------------------------------


def test_the_image_is_multi_stage_non_root_with_a_health_check_and_no_credentials():
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)
    assert [name for _, name in stages] == ["build", "runtime"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert 'cpu) index="$TORCH_INDEX_CPU"' in text and 'cuda) index="$TORCH_INDEX_CUDA"' in text
    runtime = text.split(" AS runtime", 1)[1]
    [user] = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user.split(":")[0] not in ("0", "root") and int(user.split(":")[0]) >= 1000
    assert re.search(r'^HEALTHCHECK .* CMD \["rewind", "health"', runtime, re.M)
    assert re.search(r'^ENTRYPOINT \["rewind"\]', runtime, re.M)
    assert "COPY --from=build /opt/rewind /opt/rewind" in runtime
    for line in re.findall(r"^(?:ENV|ARG)\s.*$", text, re.M):
        assert not re.search(r"SECRET|PASSWORD|ACCESS_KEY|TOKEN", line), line
    assert "--constraint constraints.txt" in text


def test_the_constraints_pin_every_dependency_the_image_installs_within_the_project_ranges():
    pins = constraint_pins()
    # The image installs `.[services,dmc]` under the constraints.
    for req in project_requirements("services", "dmc"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in deploy/docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_the_package_builds_from_exactly_the_files_the_docker_context_admits(tmp_path):
    lines = [line for line in repo_path(".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*", "the context is an allow-list"
    admitted = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    context = tmp_path / "context"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for path in admitted:
        src, dst = repo_path(path), context / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=ignore) if src.is_dir() else shutil.copy(src, dst)
    # The Dockerfile copies these and nothing else from the context.
    copied = re.findall(r"^COPY (?!--from)(\S+)", dockerfile(), re.M)
    assert {c.rstrip("/") for c in copied} <= set(admitted)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("rewind-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("rewind_cli/main.py", "rewind_runtime/host.py", "rewind/buffer/v1/buffer_pb2.py",
                   "rewind/trainer/v1/trainer_pb2_grpc.py", "rewind_buffer/server.py", "rewind_checkpoint/server.py",
                   "rewind_trainer/run.py"):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "train = rewind_trainer.api:train" in zipfile.ZipFile(wheel).read(entry_points).decode()
