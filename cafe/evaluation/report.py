"""The human report of an evaluation: Markdown and one self-contained HTML file (no network; plots and
thumbnails embedded as base64 PNG), comparing a model with its base and, where given, other models.

The page reads top down: the gate's verdict, the headline (retrieval, generation, hallucination,
understanding: first → last run with the last one's 95% interval, each card coloured by the gate's verdict
on it), example retrievals (caption → the 5 nearest images, the right one framed), example replies (each
beside a thumbnail of its image), then every table and plot. Each run is an evaluation folder
(``metrics.json``, optional ``details.json`` with ``retrieval_examples`` and ``reply_images``,
``replies.jsonl``, ``per_item.npz``, ``plots/*.png``, ``gate.json``). The last run is the model the report
is about; the change is last minus first."""

from __future__ import annotations

import base64
import html
import io
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


def _example_replies(replies: list[dict], per_part: int = 2) -> list[dict]:
    """A few replies of each generative part: wrong ones first, then right ones."""
    picked = []
    for part in dict.fromkeys(r["part"] for r in replies):
        mine = [r for r in replies if r["part"] == part]
        picked += [r for r in mine if not r["correct"]][:per_part] + [r for r in mine if r["correct"]][:per_part]
    return picked


def _example_rows(examples: list[dict]) -> list[list[str]]:
    return [[r["part"], str(r["image"]), r["prompt"].split("\n")[0][:60], r["reply"][:80] or "(empty)",
             json.dumps(r["parsed"])[:60], "right" if r["correct"] else "wrong"] for r in examples]


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


def _thumbnail(path: str, size: int = 72) -> str | None:
    """A small PNG of the image as a data URI (the page stays one self-contained file); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _retrieval_examples(runs: dict[str, dict]) -> list[dict]:
    """The subject's example retrievals (details.json), each with the first run's rank of the same query."""
    names = list(runs)
    mine = runs[names[-1]]["details"].get("retrieval_examples", [])
    before = {e["query"]: e["rank"] for e in runs[names[0]]["details"].get("retrieval_examples", [])} \
        if len(names) > 1 else {}
    return [{**e, "before": before.get(e["query"])} for e in mine]


def _retrieval_rows(examples: list[dict]) -> list[list[str]]:
    rows = []
    for e in examples:
        rank = str(e["rank"] + 1) if e.get("before") is None else f"{e['before'] + 1} → {e['rank'] + 1}"
        rows.append([e["query"][:70], Path(e["answer"]).name, rank,
                     ", ".join(("**" + Path(t["image"]).name + "**") if t["image"] == e["answer"]
                               else Path(t["image"]).name for t in e["top"])])
    return rows


def _headline_html(rows: list[list[str]], verdicts: list[str], two: bool) -> str:
    """The headline as cards: per metric, first → last value, the last one's interval, the change and the
    gate's verdict, the card coloured by that verdict."""
    cards = []
    for row, verdict in zip(rows, verdicts):
        area, metric = row[0], row[1]
        value, _, ci = row[3 if two else 2].partition(" [")
        before = row[2] if two else None
        change = row[4] if two else ""
        gate = row[-1]
        better = (change.startswith("-") if lower_is_better(metric) else change.startswith("+")) and change.strip("+-0.")
        worse = (change.startswith("+") if lower_is_better(metric) else change.startswith("-")) and change.strip("+-0.")
        direction = "better" if better else ("worse" if worse else "same")
        flow = (f"<span class='before'>{html.escape(before)}</span> → " if before else "") + \
            f"<span class='value'>{html.escape(value)}</span>"
        cards.append(
            f"<div class='card {verdict or 'none'}'><div class='area'>{html.escape(area)}</div>"
            f"<div class='metric'>{html.escape(metric)}</div><div class='flow'>{flow}</div>"
            f"<div class='ci'>{'95% CI [' + html.escape(ci) if ci else 'no interval'}</div>"
            f"<div class='change {direction}'>{html.escape(change)}</div>"
            f"<div class='verdict'>gate: {html.escape(gate)}</div></div>")
    return f"<section id='headline'>{''.join(cards)}</section>"


def _retrievals_html(examples: list[dict]) -> str:
    blocks = []
    for e in examples:
        rank = f"right image at rank {e['rank'] + 1}" + (
            f" (was {e['before'] + 1})" if e.get("before") is not None else "")
        figures = []
        shown = [t["image"] for t in e["top"]]
        for n, t in enumerate(e["top"], 1):
            right = t["image"] == e["answer"]
            figures.append(_thumb_figure(t["image"], f"{n}. {t['score']:.2f}" + (" ✓" if right else ""), right))
        if e["answer"] not in shown:
            figures.append(_thumb_figure(e["answer"], f"right: {e['rank'] + 1}", True, missed=True))
        blocks.append(f"<div class='query'><p><q>{html.escape(e['query'])}</q> — {html.escape(rank)}</p>"
                      f"<div class='thumbs'>{''.join(figures)}</div></div>")
    return f"<section id='retrievals'>{''.join(blocks)}</section>"


def _replies_html(examples: list[dict], folders: dict[str, str]) -> str:
    """Each example reply beside a thumbnail of its image (``folders``: part -> the folder of its images, from
    details.json), framed green when right and red when wrong."""
    blocks = []
    for r in examples:
        result = "right" if r["correct"] else "wrong"
        path = str(Path(folders.get(r["part"]) or "") / str(r["image"]))
        said = (f"<div class='said'><div class='part'>{html.escape(r['part'])} · {result}</div>"
                f"<p class='prompt'>{html.escape(r['prompt'][:300])}</p>"
                f"<p class='text'>{html.escape(r['reply'][:300]) or '(empty)'}</p>"
                f"<p class='parsed'>parsed: {html.escape(json.dumps(r['parsed'])[:120])}</p></div>")
        blocks.append(f"<div class='reply {result}'>{_thumb_figure(path, Path(str(r['image'])).name, r['correct'])}"
                      f"{said}</div>")
    return f"<section id='replies'>{''.join(blocks)}</section>"


def _thumb_figure(path: str, caption: str, right: bool, missed: bool = False) -> str:
    uri = _thumbnail(path)
    image = f"<img class='thumb' alt='{html.escape(Path(path).name)}' src='{uri}'>" if uri else \
        f"<div class='thumb missing'>{html.escape(Path(path).name)}</div>"
    kind = "right" if right else "other"
    return (f"<figure class='{kind}{' missed' if missed else ''}' title='{html.escape(path)}'>{image}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "tr.pass td{background:#e3f6e3}tr.fail td{background:#fbe0e0}"
    ".banner{padding:.6em 1em;border-radius:6px;font-weight:600;display:inline-block}"
    ".banner.pass{background:#e3f6e3;color:#185c18}.banner.fail{background:#fbe0e0;color:#8a1c1c}"
    ".banner.none{background:#eee;color:#444}"
    "#headline{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;margin:1em 0}"
    ".card{border-radius:8px;padding:10px 12px;border:2px solid #ccc;background:#fafafa}"
    ".card.pass{border-color:#4caf50;background:#eef9ee}.card.fail{border-color:#e53935;background:#fdeeee}"
    ".card .area{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#666}"
    ".card .metric{font-family:monospace;font-size:13px}.card .flow{font-size:22px;margin:4px 0}"
    ".card .before{color:#777;font-size:16px}.card .value{font-weight:700}"
    ".card .ci,.card .change{font-size:13px;color:#444}.card .verdict{font-size:13px;font-weight:600;margin-top:4px}"
    ".card.fail .verdict{color:#b71c1c}.card.pass .verdict{color:#2e7d32}"
    ".change.better{color:#2e7d32}.change.worse{color:#b71c1c}"
    ".query{margin:.8em 0}.query p{margin:.2em 0}.thumbs{display:flex;gap:8px;flex-wrap:wrap}"
    "figure{display:inline-block;margin:0.5em}.thumbs figure{margin:0;text-align:center;font-size:12px}"
    ".thumb{width:72px;height:72px;display:block;border:3px solid #ddd;border-radius:4px;image-rendering:pixelated}"
    "figure.right .thumb{border-color:#2e7d32}figure.missed{margin-left:16px}figure.missed .thumb{border-style:dashed}"
    "div.thumb.missing{font-size:10px;overflow:hidden;background:#eee}"
    "#replies{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:10px 20px;margin:1em 0}"
    ".reply{display:flex;gap:12px;align-items:flex-start}.reply figure{margin:0;font-size:12px;text-align:center}"
    ".reply.wrong .thumb{border-color:#c62828}.reply .said{flex:1;min-width:0;overflow-wrap:anywhere}"
    ".reply .said p{margin:.15em 0}"
    ".reply .part{font-size:12px;text-transform:uppercase;color:#666}.reply.wrong .part{color:#b71c1c}"
    ".reply .prompt{white-space:pre-line;color:#555;font-size:13px}.reply .parsed{font-family:monospace;font-size:12px}"
    "figure img.plot{max-width:520px}"
)


def render(runs: dict[str, dict], title: str) -> tuple[str, str]:
    """(Markdown, HTML) for runs loaded with their metrics, details, gate and plots: the headline (with the
    gate's verdict), example retrievals and replies, then every table and plot."""
    names = list(runs)
    subject = runs[names[-1]]
    header = ["metric", *names, "change"] if len(names) > 1 else ["metric", names[0]]
    rows = comparison({n: r["metrics"] for n, r in runs.items()})
    if len(names) == 1:
        rows = [r[:2] for r in rows]
    lower = sorted({r[0] for r in rows if lower_is_better(r[0])})
    note = f"Lower is better for {', '.join(lower)}; change = {names[-1]} − {names[0]}." if len(names) > 1 else ""
    sections = []  # (heading, header, rows, note, html replacing the table or None)
    headline, verdicts = _headline_rows(runs)
    if headline:
        head = ["area", "metric", names[0], f"{names[-1]} [95% CI]", "change", "gate"] if len(names) > 1 else \
            ["area", "metric", f"{names[0]} [95% CI]", "gate"]
        sections.append(("Headline", head, headline, "gate: the verdict of the gate's checks on the metric (— none).",
                         _headline_html(headline, verdicts, len(names) > 1)))
    examples = _retrieval_examples(runs)
    if examples:
        what = "rank of the right image" + (f" ({names[0]} → {names[-1]})" if len(names) > 1 else "")
        sections.append(("Example retrievals", ["caption query", "right image", what, "top 5 (right one in bold)"],
                         _retrieval_rows(examples),
                         "Caption → the 5 most similar images of the retrieval set; the right one framed in green "
                         "(dashed after the five when it ranked lower).", _retrievals_html(examples)))
    if subject["replies"]:
        replies = _example_replies(subject["replies"])
        sections.append(("Example replies", ["part", "image", "prompt", "reply", "parsed", "result"],
                         _example_rows(replies), "Wrong ones first; all of them are in replies.jsonl.",
                         _replies_html(replies, subject["details"].get("reply_images", {}))))
    if _invalid_rows(runs):
        sections.append(("Replies that are no answer", ["part", "metric", "invalid when", *names], _invalid_rows(runs),
                         "Share of the part's replies; lower is better. Every reply is in replies.jsonl.", None))
    sections.append(("Metrics", header, rows, note, None))
    if subject["gate"]:
        verdict = "PASSED" if subject["gate"].get("passed") else "FAILED"
        sections.append((f"Gate: {verdict}", GATE_HEADER, _gate_rows(subject["gate"]), "", None))
    if _class_rows(subject["details"]):
        sections.append(("THRONE class-wise", ["class", "precision", "recall", "F1", "F0.5", "support"],
                         _class_rows(subject["details"]), "", None))

    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    gate = subject["gate"]
    state = "none" if not gate else ("pass" if gate.get("passed") else "fail")
    banner = {"none": "No gate result for this evaluation", "pass": "Gate PASSED", "fail": "Gate FAILED"}[state]
    if gate:
        failed = [c["metric"] for c in gate.get("checks", []) if not c["passed"]]
        banner += f": {len(failed)} of {len(gate.get('checks', []))} checks failed" + (
            f" ({', '.join(dict.fromkeys(failed))})" if failed else "")
    md.append(f"**{banner}**\n\n")
    body.append(f"<p id='verdict' class='banner {state}'>{html.escape(banner)}</p>")
    for heading, columns, rows_, text, block in sections:
        md += [f"## {heading}\n", _md_table(columns, rows_), text + "\n" if text else ""]
        classes = verdicts if heading == "Headline" else None
        body += [f"<h2>{html.escape(heading)}</h2>", block or _html_table(columns, rows_, classes),
                 f"<p>{html.escape(text)}</p>" if text else ""]
    if headline:  # the headline's table too, after the cards: the numbers to copy
        body += ["<h2>Headline as a table</h2>", _html_table(head, headline, verdicts)]
    md.append("## Plots\n")
    body.append("<h2>Plots</h2>")
    for name, run in runs.items():
        for plot, png in run["plots"].items():
            md.append(f"- {name}: `plots/{plot}` (embedded in report.html)\n")
            b64 = base64.b64encode(png).decode()
            body.append(f"<figure><img class='plot' alt='{html.escape(plot)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{html.escape(name)}: {html.escape(plot)}</figcaption></figure>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
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
