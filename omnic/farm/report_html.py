"""report.html: one self-contained page (inline CSS and SVG; no script, font or stylesheet is
fetched, so it opens offline) with the cells' table and a bar chart of artifact size and KL
divergence per cell and target."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from omnic.farm import report_format as rp

COLORS = {"onnx": "#4e79a7", "gguf": "#f28e2b", "executorch": "#59a14f", "coreml": "#e15759",
          "tvm": "#b07aa1"}
OTHER_COLOR = "#9c755f"
# chart geometry, px
LABEL_W, PANEL_W, GAP, ROW_H, GROUP_GAP, TOP, BOTTOM = 330, 380, 60, 18, 8, 56, 34
BAR_SHARE = 0.72  # of a panel's width; the rest holds the value printed after the bar
KLD_FLOOR = -12  # the KLD axis starts at 1e-12 at the lowest
MAX_TICKS = 8

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; } td.id { white-space: nowrap; }
.passed { color: #17702f; font-weight: 600; } .failed { color: #b3261e; font-weight: 600; }
.not_run { color: #8a6d00; } pre { background: #f7f7f7; padding: 8px; white-space: pre-wrap; }
svg text { font: 11px system-ui, sans-serif; fill: #222; } svg .title { font-size: 13px;
  font-weight: 600; } svg .muted { fill: #777; } svg .bad { fill: #b3261e; }
"""


def _color(target: str | None) -> str:
    return COLORS.get(target or "", OTHER_COLOR)


def _chart_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """(cell, target) rows in report order, each with its y; a cell's rows form a group."""
    out, y = [], TOP
    for cell in report["cells"]:
        for i, r in enumerate(rp.rows(cell)):
            out.append({"cell": cell, "row": r, "first": i == 0, "y": y})
            y += ROW_H
        y += GROUP_GAP
    return out


def _log_range(values: list[float]) -> tuple[int, int]:
    """Decades [lo, hi] around the positive values, one decade of room below the smallest;
    not below KLD_FLOOR (an fp32 artifact's KLD is float roundoff: its bar is a sliver)."""
    lo = max(math.floor(math.log10(min(values))) - 1, KLD_FLOOR)
    hi = math.ceil(math.log10(max(values)))
    return lo, max(hi, lo + 1)


def svg_chart(report: dict[str, Any]) -> str:
    """The bar chart: artifact bytes (linear) and KLD vs fp32 (log) per cell and target."""
    rows = _chart_rows(report)
    height = (rows[-1]["y"] + ROW_H if rows else TOP) + BOTTOM
    width = LABEL_W + 2 * PANEL_W + GAP + 20
    x_size, x_kld = LABEL_W, LABEL_W + PANEL_W + GAP
    bar_w = PANEL_W * BAR_SHARE
    sizes = [r["row"].get("bytes") or 0 for r in rows]
    max_bytes = max(sizes, default=0) or 1
    klds = [r["row"]["kld"] for r in rows if (r["row"].get("kld") or 0) > 0]
    lo, hi = _log_range(klds) if klds else (-6, 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="artifact size and KL '
           f'divergence per cell">']
    out.append(f'<text class="title" x="{x_size}" y="18">artifact size</text>')
    out.append(f'<text class="title" x="{x_kld}" y="18">KLD vs fp32 (log scale)</text>')
    targets = sorted({r["row"]["target"] for r in rows if r["row"]["target"]})
    for i, t in enumerate(targets):  # legend
        x = 10 + i * 90
        out.append(f'<rect x="{x}" y="30" width="12" height="12" fill="{_color(t)}"/>'
                   f'<text x="{x + 16}" y="40">{escape(t)}</text>')
    bottom = height - BOTTOM + 4
    for frac in (0, 0.5, 1):  # size axis
        x = x_size + frac * bar_w
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{bottom}" '
                   'stroke="#ddd"/>')
        out.append(f'<text class="muted" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
                   f'{escape(rp.fmt_bytes(int(frac * max_bytes)))}</text>')
    step = max(1, math.ceil((hi - lo) / MAX_TICKS))
    for d in range(lo, hi + 1, step):  # KLD axis, a tick per decade (or per few)
        x = x_kld + (d - lo) / (hi - lo) * bar_w
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{bottom}" '
                   'stroke="#ddd"/>')
        out.append(f'<text class="muted" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
                   f'1e{d}</text>')
    for r in rows:
        cell, row, y = r["cell"], r["row"], r["y"]
        mid = y + ROW_H * 0.7
        if r["first"]:
            cls = "" if cell["status"] == "passed" else ' class="bad"'
            mark = "" if cell["status"] == "passed" else " ✗"
            out.append(f'<text{cls} x="4" y="{mid:.1f}"><title>{escape(rp.label(cell))}</title>'
                       f'{escape(cell["id"])}{mark}</text>')
        target = row["target"]
        if target is None:
            reason = cell["failure"]["kind"] if cell["failure"] else "nothing built"
            out.append(f'<text class="bad" x="{x_size + 4}" y="{mid:.1f}">no artifacts: '
                       f'{escape(reason)}</text>')
            continue
        out.append(f'<text class="muted" x="{x_size - 6}" y="{mid:.1f}" text-anchor="end">'
                   f'{escape(target)}</text>')
        nbytes = row.get("bytes") or 0
        w = max(1.0, nbytes / max_bytes * bar_w)
        tip = escape(f"{cell['id']} {target}: {rp.fmt_bytes(nbytes)}, golden {row.get('golden')}")
        out.append(f'<rect x="{x_size}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" '
                   f'fill="{_color(target)}"><title>{tip}</title></rect>')
        out.append(f'<text x="{x_size + w + 4:.1f}" y="{mid:.1f}">'
                   f'{escape(rp.fmt_bytes(nbytes))}</text>')
        kld = row.get("kld")
        if kld is None or kld <= 0:
            out.append(f'<text class="muted" x="{x_kld + 4}" y="{mid:.1f}">'
                       f'{"n/a" if kld is None else "0"}</text>')
            continue
        w = max(1.0, (math.log10(kld) - lo) / (hi - lo) * bar_w)
        out.append(f'<rect x="{x_kld}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" '
                   f'fill="{_color(target)}" fill-opacity="0.75"><title>{escape(cell["id"])} '
                   f'{escape(target)}: KLD {rp.fmt_kld(kld)}</title></rect>')
        out.append(f'<text x="{x_kld + w + 4:.1f}" y="{mid:.1f}">{rp.fmt_kld(kld)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(report: dict[str, Any]) -> str:
    head = ["cell", "spec", "device", "quantization", "status", "fits the device", "target",
            "size", "golden", "KLD", "decode tok/s", "node", "seconds"]
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for c in report["cells"]:
        rows = rp.rows(c)
        span = f' rowspan="{len(rows)}"' if len(rows) > 1 else ""
        for i, r in enumerate(rows):
            cells = []
            if i == 0:
                seconds = "-" if c.get("seconds") is None else f"{c['seconds']:.1f}"
                first = [escape(c["id"]), escape(c["spec"]), escape(c["device"] or "-"),
                         escape(c["quantization"] or "(spec)"),
                         f'<span class="{c["status"]}">{escape(rp.status_text(c))}</span>',
                         escape(rp.fmt_fits(c))]
                cells += [f'<td{span} class="id">{first[0]}</td>']
                cells += [f"<td{span}>{x}</td>" for x in first[1:]]
            golden = r.get("golden") or "-"
            cells += [f"<td>{escape(r['target'] or '-')}</td>",
                      f'<td class="num">{escape(rp.fmt_bytes(r.get("bytes")))}</td>',
                      f'<td><span class="{escape(golden)}">{escape(golden)}</span></td>',
                      f'<td class="num">{escape(rp.fmt_kld(r.get("kld")))}</td>',
                      f'<td class="num">{escape(rp.fmt_rate(r.get("decode_tokens_per_s")))}'
                      "</td>"]
            if i == 0:
                cells += [f"<td{span}>{escape(c.get('node') or '-')}</td>",
                          f'<td{span} class="num">{seconds}</td>']
            out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(report: dict[str, Any]) -> str:
    """The whole page."""
    s = report["summary"]
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>omnic farm: {escape(report['matrix'])}</title>",
             f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>omnic farm: {escape(report['matrix'])}</h1>",
             f"<p>{s['cells']} cells: <span class=\"passed\">{s['passed']} passed</span>, "
             f"<span class=\"{'failed' if s['failed'] else 'passed'}\">{s['failed']} failed"
             "</span>.</p>"]
    cluster = report.get("cluster")
    if cluster:
        parts.append(f"<p>Ray at {escape(str(cluster.get('address')))}: {cluster.get('nodes')} "
                     f"node(s), {cluster.get('cpus'):g} CPUs, largest node "
                     f"{escape(rp.fmt_bytes(cluster.get('max_memory')))} of memory.</p>")
    parts += ["<h2>Size and KL divergence</h2>", svg_chart(report), "<h2>Cells</h2>",
              _table(report)]
    failed = [c for c in report["cells"] if c["failure"]]
    if failed:
        parts.append("<h2>Failures</h2>")
        for c in failed:
            parts.append(f"<h3>{escape(c['id'])}: {escape(c['failure']['kind'])}</h3>"
                         f"<pre>{escape(c['failure']['reason'])}</pre>")
            if c.get("log"):
                parts.append(f"<p>Log: <code>{escape(c['log'])}</code></p>")
    notes = [(c["id"], n) for c in report["cells"] for n in c["notes"]]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li>{escape(cid)}: {escape(n)}</li>" for cid, n in notes) + "</ul>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
