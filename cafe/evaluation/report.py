"""The human report of an evaluation: Markdown and one self-contained HTML file (no network; plots
embedded as base64 PNG), comparing a model with its base and, where given, other models.

Each run is an evaluation folder (``metrics.json``, optional ``details.json``, ``plots/*.png``,
``gate.json``). The last run is the model the report is about; the change column is last minus first."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from cafe.evaluation.per_item import lower_is_better
from cafe.report import comparison


def _load(folder: Path) -> dict:
    def read(name):
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None

    plots = {p.name: p.read_bytes() for p in sorted((folder / "plots").glob("*.png"))} if (folder / "plots").is_dir() else {}
    replies = folder / "replies.jsonl"
    return {"metrics": read("metrics.json") or {}, "details": read("details.json") or {}, "gate": read("gate.json"),
            "plots": plots, "folder": folder,
            "replies": [json.loads(line) for line in replies.read_text().splitlines()] if replies.is_file() else []}


# the headline block: (area, metric) the report opens with
HEADLINE = (("retrieval", "i2t_R@1"), ("retrieval", "t2i_R@1"), ("generation", "object_f1"),
            ("hallucination", "pope_avg_f1"), ("hallucination", "throne_f1"), ("understanding", "mmstar_accuracy"),
            ("no answer", "pope_invalid_rate"), ("no answer", "mmstar_invalid_rate"))


def _intervals(run: dict) -> dict:
    """95% intervals of the headline metrics: the gate's when it ran, else a bootstrap of the per-item results."""
    if run["gate"] and run["gate"].get("intervals"):
        return run["gate"]["intervals"]
    path = run["folder"] / "per_item.npz"
    if not path.is_file():
        return {}
    from cafe.evaluation.bootstrap import confidence_intervals
    from cafe.evaluation.per_item import PerItem

    items = PerItem.load(path)
    groups = {g for g, arrays in items.groups.items() if g != "geometry"}
    subset = PerItem({g: items.groups[g] for g in groups}, {g: items.meta[g] for g in groups})
    return confidence_intervals(subset, resamples=500)


def _headline_rows(runs: dict[str, dict]) -> tuple[list[list[str]], list[str]]:
    """Rows (area, metric, first run, last run with its 95% interval, change, gate) and each row's verdict
    class ("pass", "fail" or "")."""
    names = list(runs)
    first, last = runs[names[0]], runs[names[-1]]
    cis = _intervals(last)
    checks = (last["gate"] or {}).get("checks", [])
    rows, verdicts = [], []
    for area, metric in HEADLINE:
        if metric not in last["metrics"]:
            continue
        value, ci = last["metrics"][metric], cis.get(metric)
        cell = _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
        mine = [c for c in checks if c["metric"] == metric]
        verdict = ("pass" if all(c["passed"] for c in mine) else "FAIL") if mine else "—"
        row = [area, metric]
        if len(names) > 1:
            before = first["metrics"].get(metric)
            change = value - before if isinstance(before, (int, float)) else None
            row += [_fmt(before), cell, "—" if change is None else f"{change:+.3f}"]
        else:
            row.append(cell)
        rows.append(row + [verdict])
        verdicts.append({"pass": "pass", "FAIL": "fail"}.get(verdict, ""))
    return rows, verdicts


def _example_rows(replies: list[dict], per_part: int = 2) -> list[list[str]]:
    """A few replies of each generative part: wrong ones first, then right ones."""
    rows = []
    for part in dict.fromkeys(r["part"] for r in replies):
        mine = [r for r in replies if r["part"] == part]
        picked = [r for r in mine if not r["correct"]][:per_part] + [r for r in mine if r["correct"]][:per_part]
        for r in picked:
            prompt = r["prompt"].split("\n")[0]
            rows.append([part, str(r["image"]), prompt[:60], r["reply"][:80] or "(empty)",
                         json.dumps(r["parsed"])[:60], "right" if r["correct"] else "wrong"])
    return rows


GATE_HEADER = ["metric", "check", "value", "95% CI", "threshold", "result", "message"]


def gate_markdown(gate: dict) -> str:
    """The gate result alone as a Markdown table (the pipeline's gate step shows it)."""
    return f"# Gate: {'passed' if gate.get('passed') else 'FAILED'}\n\n" + _md_table(GATE_HEADER, _gate_rows(gate))


def _gate_rows(gate: dict) -> list[list[str]]:
    rows = []
    for c in gate.get("checks", []):
        ci = c.get("ci")
        rows.append([c["metric"], c["kind"], _fmt(c.get("value")), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "—",
                     _fmt(c.get("threshold")), "pass" if c["passed"] else "FAIL", c.get("message", "")])
    return rows


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else ("—" if v is None else str(v))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join((f"<tr class='{c}'>" if c else "<tr>") + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>"
                   for r, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# the invalid-answer rates, per part: (metric, the part, what counts as invalid)
INVALID_METRICS = (
    ("caption_empty_rate", "brief captions", "empty reply"),
    ("pope_invalid_rate", "POPE", "neither yes nor no in POPE's words of the first sentence"),
    ("mmstar_invalid_rate", "MMStar-format", "no option letter and no option text (VLMEvalKit's can_infer)"),
    ("throne_empty_rate", "THRONE", "empty description"),
)


def _invalid_rows(runs: dict[str, dict]) -> list[list[str]]:
    """One row per invalid-answer rate any run has: part, rule, value per run."""
    rows = []
    for metric, part, rule in INVALID_METRICS:
        if any(metric in r["metrics"] for r in runs.values()):
            rows.append([part, metric, rule, *(_fmt(r["metrics"].get(metric)) for r in runs.values())])
    return rows


def _class_rows(details: dict) -> list[list[str]]:
    classes = details.get("throne_classes", {})
    return [[name, _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), _fmt(c["f0.5"]), str(c["support"])]
            for name, c in classes.items() if c["support"] or c["predicted"]]


def render(runs: dict[str, dict], title: str) -> tuple[str, str]:
    """(Markdown, HTML) for runs loaded with their metrics, details, gate and plots."""
    names = list(runs)
    subject = runs[names[-1]]
    header = ["metric", *names, "change"] if len(names) > 1 else ["metric", names[0]]
    rows = comparison({n: r["metrics"] for n, r in runs.items()})
    if len(names) == 1:
        rows = [r[:2] for r in rows]
    lower = sorted({r[0] for r in rows if lower_is_better(r[0])})
    note = f"Lower is better for {', '.join(lower)}; change = {names[-1]} − {names[0]}." if len(names) > 1 else ""
    sections = []
    headline, verdicts = _headline_rows(runs)
    if headline:
        head = ["area", "metric", names[0], f"{names[-1]} [95% CI]", "change", "gate"] if len(names) > 1 else \
            ["area", "metric", f"{names[0]} [95% CI]", "gate"]
        sections.append(("Headline", head, headline, "gate: the verdict of the gate's checks on the metric (— none)."))
    if _invalid_rows(runs):
        sections.append(("Replies that are no answer", ["part", "metric", "invalid when", *names], _invalid_rows(runs),
                         "Share of the part's replies; lower is better. Every reply is in replies.jsonl."))
    sections.append(("Metrics", header, rows, note))
    if subject["gate"]:
        verdict = "PASSED" if subject["gate"].get("passed") else "FAILED"
        sections.append((f"Gate: {verdict}", GATE_HEADER,
                         _gate_rows(subject["gate"]), ""))
    if subject["replies"]:
        sections.append(("Example replies", ["part", "image", "prompt", "reply", "parsed", "result"],
                         _example_rows(subject["replies"]), "Wrong ones first; all of them are in replies.jsonl."))
    if _class_rows(subject["details"]):
        sections.append(("THRONE class-wise", ["class", "precision", "recall", "F1", "F0.5", "support"],
                         _class_rows(subject["details"]), ""))

    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, head, rows_, text in sections:
        md += [f"## {heading}\n", _md_table(head, rows_), text + "\n" if text else ""]
        classes = verdicts if heading == "Headline" else None
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(head, rows_, classes),
                 f"<p>{html.escape(text)}</p>" if text else ""]
    md.append("## Plots\n")
    body.append("<h2>Plots</h2>")
    for name, run in runs.items():
        for plot, png in run["plots"].items():
            md.append(f"- {name}: `plots/{plot}` (embedded in report.html)\n")
            b64 = base64.b64encode(png).decode()
            body.append(f"<figure><img alt='{html.escape(plot)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{html.escape(name)}: {html.escape(plot)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "figure{display:inline-block;margin:0.5em}tr.pass td{background:#e3f6e3}tr.fail td{background:#fbe0e0}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return "".join(md), page


def write_report(runs: dict[str, str | Path], out_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for evaluation folders (name -> folder; the last is the subject)."""
    loaded = {}
    for name, folder in runs.items():
        if not (Path(folder) / "metrics.json").is_file():
            raise FileNotFoundError(f"{folder}: no metrics.json; run `cafe evaluate -o {folder}` first")
        loaded[name] = _load(Path(folder))
    names = list(loaded)
    title = title or (f"Evaluation of {names[-1]}" + (f" against {', '.join(names[:-1])}" if len(names) > 1 else ""))
    md, page = render(loaded, title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(page)
    return out / "report.md", out / "report.html"
