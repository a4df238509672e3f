"""A minimal Kubernetes API server for custom resources on 127.0.0.1, so the real clients (kubeflow
TrainingClient, kubernetes CustomObjectsApi) can be exercised without a cluster.

It stores created objects, rejects bodies that fail the CRD schema (like the real API server, with 422),
advances each object's status through a scripted list of conditions, one per GET, and deletes."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from kube_schemas import crd_errors

PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
                  r"(?:/(?P<name>[^/?]+))?")


@dataclass
class FakeCluster:
    url: str = ""
    kubeconfig: str = ""
    objects: dict = field(default_factory=dict)  # (plural, ns, name) -> object
    script: list = field(default_factory=list)  # [(type, message)] revealed one per GET
    log: list = field(default_factory=list)  # (method, path)
    _gets: dict = field(default_factory=dict)


def _handler(cluster: FakeCluster):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            cluster.log.append((self.command, self.path))
            m = PATH.match(self.path)
            if not m:
                self._send(404, {"kind": "Status", "code": 404})
                return None
            return m

        def do_POST(self):
            if not (m := self._route()):
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            errors = crd_errors(body)
            if errors:
                self._send(422, {"kind": "Status", "code": 422, "message": "; ".join(errors)})
                return
            key = (m["plural"], m["ns"], body["metadata"]["name"])
            if key in cluster.objects:
                self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                return
            cluster.objects[key] = body
            self._send(201, body)

        def do_GET(self):
            if not (m := self._route()):
                return
            key = (m["plural"], m["ns"], m["name"])
            if key not in cluster.objects:
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                return
            n = cluster._gets[key] = cluster._gets.get(key, 0) + 1
            conditions = [{"type": t, "status": "True", "message": msg, "reason": t,
                           "lastTransitionTime": f"2026-01-01T00:00:{i:02d}Z"}
                          for i, (t, msg) in enumerate(cluster.script[:n])]
            self._send(200, {**cluster.objects[key], "status": {"conditions": conditions}})

        def do_DELETE(self):
            if not (m := self._route()):
                return
            key = (m["plural"], m["ns"], m["name"])
            if cluster.objects.pop(key, None) is None:
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                return
            self._send(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture()
def kube_api(tmp_path: Path):
    """A FakeCluster served on 127.0.0.1 with a kubeconfig pointing at it; stopped after the test."""
    cluster = FakeCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
              "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    cluster.kubeconfig = str(path)
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
