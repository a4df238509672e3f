"""The main job end to end on a reduced world (the real run is `make demo`): `cafe demo` runs the training
pipeline through `dvc repro`, and on a passing gate registers with the monitor reference, promotes to the serving
alias, serves the version on 127.0.0.1 (embedding + caption answered), generates a traffic window and monitors
it; a failing gate stops it with exit 1 and nothing new registered."""

from __future__ import annotations

import json

import pytest
import yaml

from cafe.registry import Registry
from cafe.serving.traffic import TrafficLog
from tiny_project import cafe, project

pytestmark = pytest.mark.slow


def test_demo_registers_promotes_serves_and_monitors_then_stops_at_a_failed_gate(tmp_path):
    root = project(tmp_path / "demo", dvc=True)
    first = cafe(root, "demo")
    text = first.stdout + first.stderr
    assert "base model vs CAFe" in text and "i2t_R@1" in text
    assert "gate passed against file metrics/base/metrics.json" in text
    assert "registered cafe v1" in text and "promoted cafe v1 to production" in text
    assert "monitor decision for cafe v1:" in text

    registry = Registry(root / "registry")
    (record,) = registry.list("cafe")
    assert registry.aliases("cafe") == {"candidate": 1, "production": 1}
    assert {"per_item.npz", "monitor/reference.json", "monitor/reference.npz"} <= set(record["files"])
    window = TrafficLog(root / "runs/demo/traffic").read_window().records
    kinds = {r.get("kind") for r in window}
    assert {"search", "image", "generate"} <= kinds  # the smoke test's requests and the generated window
    assert {r.get("model_version") for r in window if r.get("model_version")} == {"cafe-v1"}
    summary = json.loads((root / "runs/demo/monitor" / "summary.json").read_text())
    assert summary["decision"] in ("ok", "warn", "retrain") and summary["decision"] in text
    assert summary["window"]["feedback"] >= 10 and summary["model_version"] == "cafe-v1"
    assert "| i2t_R@1 |" in (root / "reports" / "demo.md").read_text()

    # an impossible floor: the gate fails, the demo says so with exit 1, the registry keeps one version
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"]["floors"] = {"i2t_R@1": 1.01}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    second = cafe(root, "demo", check=False)
    text = second.stdout + second.stderr
    assert second.returncode == 1, text
    assert "gate FAILED (i2t_R@1 (floor))" in text and "not registered: the gate failed" in text
    assert "pretrain" not in [line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage")]
    assert len(registry.list("cafe")) == 1
