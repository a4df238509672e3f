"""The gate's and compare's console tables in an 80-column terminal: one line per row, nothing cut."""

from rich.console import Console

from cafe.evaluation.gate import print_gate
from cafe.report import print_table

CHECKS = [
    {"metric": "i2t_R@1", "kind": "floor", "value": 0.7123, "ci": [0.65, 0.77], "threshold": 0.3, "passed": True,
     "message": "0.7123 >= 0.3 required"},
    {"metric": "mmstar_accuracy", "kind": "regression", "value": 0.41, "ci": [0.35, 0.47], "threshold": 0.05,
     "passed": False, "message": "change -0.2900 (CI upper -0.2100, paired bootstrap); a worsening beyond 0.05 fails"},
    {"metric": "image_effective_rank", "kind": "regression", "value": None, "ci": None, "threshold": 0.05,
     "passed": False, "message": "image_effective_rank is missing"},
    {"metric": "pope_invalid_rate", "kind": "ceiling", "value": 0.01, "ci": [0.0, 0.02], "threshold": 0.05,
     "passed": True, "message": "0.0100 <= 0.05 required"},
]


def render(draw) -> list[str]:
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    draw(console)
    return console.export_text().splitlines()


def test_the_gate_table_fits_80_columns_one_line_per_check():
    lines = render(lambda c: print_gate({"passed": False, "checks": CHECKS}, c))
    assert all(len(line) <= 80 for line in lines)
    for check in CHECKS:  # the row holds the whole metric name, the value and its interval, uncut
        value = "—" if check["value"] is None else f"{check['value']:.3f}"
        row = next(line for line in lines if line.strip().startswith(check["metric"] + " "))
        assert value in row and ("FAIL" if not check["passed"] else "pass") in row
        if check["ci"]:
            assert f"[{check['ci'][0]:.3f}, {check['ci'][1]:.3f}]" in row
    text = " ".join(lines)
    assert "mmstar_accuracy (regression): change -0.2900" in text and "…" not in text


def test_the_comparison_fits_80_columns_for_three_runs():
    runs = {name: {"i2t_R@1": v, "throne_cls_f0.5": v / 2, "image_effective_rank": 10 * v}
            for name, v in (("base", 0.1), ("cafe-replay", 0.7), ("cafe-pairs", 0.6))}
    lines = render(lambda c: print_table(runs, "comparison", c))
    assert all(len(line) <= 80 for line in lines) and "…" not in "".join(lines)
    row = next(line for line in lines if "image_effective_rank" in line)
    assert row.split() == ["image_effective_rank", "1.000", "7.000", "6.000", "+5.000"]
