"""A real S3 server process for tests: moto's standalone server on 127.0.0.1, stopped by PID.

``s3_server`` (session) starts one process and points ``open_store("s3://...")`` at it through the
environment; ``s3_uri`` (per test) creates a fresh bucket and returns ``s3://<bucket>/<prefix>``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

ACCESS_KEY = "cafe-test"
SECRET_KEY = "cafe-test-secret"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int

    @property
    def env(self) -> dict[str, str]:
        return {"CAFE_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def client(self):
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=self.access_key, secret_key=self.secret_key,
                     region="us-east-1", secure=False)

    def make_bucket(self) -> str:
        name = f"cafe-{uuid.uuid4().hex[:12]}"
        self.client().make_bucket(name)
        return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_up(proc: subprocess.Popen, endpoint: str, log: Path, timeout: float = 60.0) -> None:
    http = urllib3.PoolManager(retries=False, timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if http.request("GET", f"{endpoint}/moto-api/").status < 500:
                return
        except urllib3.exceptions.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {endpoint} within {timeout:.0f}s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server process on a free 127.0.0.1 port, with the store environment pointing at it."""
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    for attempt in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with log.open("w") as out:
            proc = subprocess.Popen(_server_command(port), stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "MOTO_PORT": str(port)})
        try:
            _wait_until_up(proc, endpoint, log)
            break
        except RuntimeError:
            _stop(proc)
            if attempt == 2:
                raise
    server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, proc.pid)
    saved = {key: os.environ.get(key) for key in (*server.env, "AWS_ENDPOINT_URL")}
    os.environ.update(server.env)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _stop(proc)


@pytest.fixture()
def s3_uri(s3_server) -> str:
    """``s3://<fresh bucket>/store`` on the test server."""
    return f"s3://{s3_server.make_bucket()}/store"
