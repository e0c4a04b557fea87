"""A real S3-protocol server for the tests: moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3

ACCESS_KEY = "rewind-test"
SECRET_KEY = "rewind-test-secret"
REGION = "us-east-1"


class MotoServer:
    """`moto_server -H 127.0.0.1 -p 0` in a subprocess; its log goes to log_dir/moto.log.

    `pause()`/`resume()` (SIGSTOP/SIGCONT) make the store hang and come back
    with its contents intact: a store outage the tests can end.
    """

    def __init__(self, log_dir: Path, timeout: float = 60.0) -> None:
        self.log_path = log_dir / "moto.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", "0"], stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while not (m := re.search(rb"Running on http://127\.0\.0\.1:(\d+)", self.log_path.read_bytes())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start; see {self.log_path}")
            time.sleep(0.05)  # the server announces its port only in its log
        self.endpoint = f"http://127.0.0.1:{int(m.group(1))}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def client(self):
        """A plain boto3 S3 client for this server (for checks behind the service's back)."""
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self) -> str:
        name = f"rewind-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def s3_environment(endpoint: str, work: Path) -> tuple[dict[str, str], MotoServer | None]:
    """The AWS_* variables of an S3 server for the benchmarks: `endpoint` when given (with the test
    credentials), else a moto server started in `work` (returned, for the caller to stop)."""
    if endpoint:
        return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION}, None
    moto = MotoServer(work)
    return moto.env, moto
