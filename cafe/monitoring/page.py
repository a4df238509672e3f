"""The monitor's page for a person: ``decision.html`` beside ``summary.json``, one self-contained file with the
decision (ok / warn / retrain) and its reasons first, what was not judged, every signal against its
reference and threshold, the modality gap over time, and links to the Evidently reports of the same run.
Where the reports are not beside it (the KFP step's outputs), the page names where each one is instead."""

from __future__ import annotations

import html
from collections.abc import Mapping

COLOURS = {"ok": ("#e3f6e3", "#185c18"), "warn": ("#fff3d6", "#7a5200"), "retrain": ("#fbe0e0", "#8a1c1c")}
REPORT_TITLES = {"text": "text queries", "image": "query images"}


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def signal_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(signal, value, reference / threshold, state) for every signal of the summary."""
    sig, cfg = summary["signals"], summary.get("thresholds", {})
    rows = []
    for name, d in sig.get("embedding_drift", {}).items():
        if d.get("judged"):
            rows.append((f"{name} embedding drift ({d.get('method', '')})", _num(d.get("score")),
                         f"threshold {_num(d.get('threshold'))}", "drifted" if d.get("drifted") else "no drift"))
        else:
            rows.append((f"{name} embedding drift", f"n={d.get('n', 0)}", f"needs {cfg.get('min_requests')}",
                         "not judged"))
    top1 = sig.get("top1_drift", {})
    p_value = top1.get("p_value")
    rows.append(("top-1 similarity (K-S p)", f"{p_value:.2g}" if top1.get("judged") and p_value is not None
                 else f"n={top1.get('n', 0)}",
                 f"p < {cfg.get('similarity_p_value')} shifts",
                 ("shifted" if top1.get("drifted") else "same") if top1.get("judged") else "not judged"))
    fb = sig.get("feedback", {})
    k = cfg.get("recall_k", "K")
    rows.append((f"feedback R@{k}", f"{_num(fb.get('recall'))} (upper {_num(fb.get('upper'))}, n={fb.get('n', 0)})"
                 if fb.get("n") else "no feedback", f"reference {_num(fb.get('reference'))}, allowed drop "
                 f"{cfg.get('max_feedback_drop')}", _feedback_state(fb, cfg)))
    probe = sig.get("probe")
    if probe:
        rows.append((f"probe R@{k}", _num(probe.get("recall")), f"reference {_num(probe.get('reference'))}, "
                     f"allowed drop {cfg.get('max_probe_drop')}", f"drop {_num(probe.get('drop'))}"))
    gap = sig.get("modality_gap", {})
    rows.append(("modality gap", _num(gap.get("value")), f"reference {_num(gap.get('reference'))}, allowed move "
                 f"{cfg.get('max_gap_change')}", "—" if gap.get("change") is None else f"moved {gap['change']:+.3f}"))
    inv = sig.get("invalid", {})
    rows.append(("NaN / missing embeddings", f"{inv.get('count', 0)} of {inv.get('total', 0)}",
                 f"at most {cfg.get('max_invalid_fraction')} of them", f"{inv.get('fraction', 0.0):.1%}"))
    return rows


def _feedback_state(fb: dict, cfg: dict) -> str:
    if not fb.get("judged"):
        return "not judged"
    if fb.get("reference") is None:
        return "no reference"
    return "surely below" if fb["upper"] < fb["reference"] - cfg.get("max_feedback_drop", 0.0) else "within"


def _history_svg(points: list[dict], width: int = 480, height: int = 120) -> str:
    """The modality gap over the monitor's runs as an inline SVG line (no script, no network)."""
    values = [p["modality_gap"] for p in points if p.get("modality_gap") is not None]
    if len(values) < 2:
        return "<p>Modality gap history: " + ("one run so far" if values else "none yet") + ".</p>"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    xy = [(10 + i * (width - 20) / (len(values) - 1), height - 15 - (v - lo) / span * (height - 30))
          for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    return (f"<figure><svg id='gap-history' width='{width}' height='{height}' role='img' "
            f"aria-label='modality gap over the last {len(values)} runs'><polyline fill='none' stroke='#1565c0' "
            f"stroke-width='2' points='{line}'/><text x='10' y='12' font-size='11'>{hi:.3f}</text>"
            f"<text x='10' y='{height - 2}' font-size='11'>{lo:.3f}</text></svg>"
            f"<figcaption>modality gap, last {len(values)} runs</figcaption></figure>")


def _report_items(summary: dict, where: Mapping[str, str] | None) -> str:
    """The page's list of reports: relative links to the files beside it, or for a file ``where`` names, that
    place in words (a KFP output: the UI shows each HTML artifact alone, so a relative link goes nowhere)."""
    def item(title: str, key: str, note: str = "") -> str:
        if where and key in where:
            return f"<li>{html.escape(title)}{note}: {html.escape(where[key])}</li>"
        named = f" ({html.escape(key)})" if key != title else ""
        return f"<li><a href='{html.escape(key)}'>{html.escape(title)}</a>{named}{note}</li>"

    reports = summary.get("reports")
    if reports is None:
        items = "<li>no Evidently report: monitor.report is off</li>"
    else:
        items = "".join(item(f"Evidently report: {REPORT_TITLES.get(name, name)}", key)
                        for name, key in reports.items()) or \
            "<li>no Evidently report: the window was too small to judge drift</li>"
    return items + item("summary.json", "summary.json", " (every number)")


def decision_page(summary: dict, where: Mapping[str, str] | None = None) -> str:
    """The HTML page of one monitor run. Links to the Evidently reports and summary.json are relative (they sit
    beside it); ``where`` (file name -> where it is, in words) names another place for those it holds."""
    decision = summary["decision"]
    bg, fg = COLOURS.get(decision, ("#eee", "#333"))
    window = summary.get("window", {})
    reasons = summary.get("reasons") or []
    items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons) or \
        "<li>no signal crossed its threshold</li>"
    not_judged = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("not_judged", []))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in signal_rows(summary))
    facts = (f"model version {summary.get('model_version') or '—'}, window {window.get('start') or '…'} → "
             f"{window.get('end') or '…'}: {window.get('records', 0)} records, {window.get('searches', 0)} searches, "
             f"{window.get('images', 0)} image requests, {window.get('feedback', 0)} with feedback")
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;padding:0 1em;color:#222}"
             f"#decision{{background:{bg};color:{fg};padding:.8em 1.2em;border-radius:8px;font-size:20px}}"
             "#decision b{font-size:28px;text-transform:uppercase;margin-right:.4em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}")
    body = (f"<h1>Monitor run {html.escape(summary.get('at', ''))}</h1>"
            f"<div id='decision' class='{html.escape(decision)}'><b>{html.escape(decision)}</b>"
            f"{len(reasons)} reason{'s' if len(reasons) != 1 else ''}</div>"
            f"<p>{html.escape(facts)}</p><h2>Why</h2><ul id='reasons'>{items}</ul>"
            + (f"<h2>Not judged</h2><ul id='not-judged'>{not_judged}</ul>" if not_judged else "")
            + "<h2>Signals</h2><table><thead><tr><th>signal</th><th>value</th><th>reference / threshold</th>"
            f"<th>state</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<h2>Reports</h2><ul id='reports'>{_report_items(summary, where)}</ul>"
            + _history_svg(summary.get("modality_gap_history", [])))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>monitor: {html.escape(decision)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")
