"""The suite's table, ranks and paired tests, written as ``suite.json``, ``suite.csv`` and ``suite.html``.

- table: one line per (entry, backbone, metric) with estimate and 95 % CI;
- ranks: per entry, backbones ranked by the primary metric (1 = best; equal estimates share the average
  rank); ``tied_with_best``: the backbones whose paired difference to the best is not significant
  (p >= 0.05); summary per backbone: "first in N of M tasks" (rank 1, shared included), "significantly
  first" (best and p < 0.05 against every other backbone) and the average rank;
- paired: per entry and pair of backbones, the difference of the primary metric on the same images with a
  patient-clustered paired bootstrap CI and p (``evaluation.stats.paired_bootstrap``).
"""

from __future__ import annotations

import html
import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.evaluation.report import REPORT_CSS

__all__ = ["build_report", "paired_difference", "write_report"]

ALPHA = 0.05
CSS = REPORT_CSS + ".best{font-weight:700;background:#e6f4ea}\n"  # report.html's style, plus the best cell


def _metric_fn(paired: dict):
    """``(y, a) -> value`` for ``evaluation.stats.paired_bootstrap`` and the arrays it resamples."""
    if "values" in paired:
        return (lambda y, a: float(np.mean(a)) if len(a) else float("nan")), None
    if "score" in paired:
        from mammolens.suite.tasks import auc_score

        return (lambda y, a: auc_score(y, a)), None
    if "dets" in paired:
        return None, "dets"
    return None, None


def paired_difference(pa: dict, pb: dict, n_boot: int = 200, seed: int = 0) -> dict[str, float] | None:
    """Primary metric of ``a`` minus ``b`` on the images both scored (aligned by ``keys``), with a paired
    patient-bootstrap CI and p; None when the entries hold nothing to pair."""
    from mammolens.evaluation.dense import froc
    from mammolens.evaluation.stats import paired_bootstrap

    ka, kb = [str(k) for k in pa["keys"]], [str(k) for k in pb["keys"]]
    common = sorted(set(ka) & set(kb))
    if len(common) < 2:
        return None
    ia, ib = {k: i for i, k in enumerate(ka)}, {k: i for i, k in enumerate(kb)}
    sa, sb = [ia[k] for k in common], [ib[k] for k in common]
    groups = np.asarray(pa["groups"], dtype=object)[sa]
    fn, special = _metric_fn(pa)
    if special == "dets":
        gt = [pa["gt"][i] for i in sa]
        da, db = [pa["dets"][i] for i in sa], [pb["dets"][i] for i in sb]
        n = len(common)
        every = da + db  # index < n: backbone a, >= n: backbone b

        def det_fn(y, a):
            return froc([gt[int(i) % n] for i in a], [every[int(i)] for i in a])["mean_sensitivity"]

        return paired_bootstrap(det_fn, np.zeros(n), np.arange(n), np.arange(n) + n, groups, n_boot, seed)
    if fn is None:
        return None
    if "values" in pa:
        y = np.zeros(len(common))
        a, b = np.asarray(pa["values"], float)[sa], np.asarray(pb["values"], float)[sb]
    else:
        y = np.asarray(pa["y"])[sa]
        a, b = np.asarray(pa["score"], float)[sa], np.asarray(pb["score"], float)[sb]
    return paired_bootstrap(fn, y, a, b, groups, n_boot, seed)


def _ranks(values: dict[str, float]) -> dict[str, float]:
    """1 = best (highest); equal values share the average rank; NaN is unranked."""
    ok = {k: v for k, v in values.items() if np.isfinite(v)}
    s = pd.Series(ok, dtype=float)
    r = s.rank(ascending=False, method="average")
    return {k: float(r[k]) if k in r else float("nan") for k in values}


def build_report(results: dict[str, dict[str, dict]], backbones: list[str], *, seed: int = 0,
                 n_boot: int = 200) -> dict[str, Any]:
    """``{"table", "ranks", "summary", "paired", "notes", "backbones"}`` from ``{backbone: {task: result}}``."""
    table, paired_out, ranks, notes = [], {}, {}, {}
    entries: dict[str, dict[str, dict]] = {}
    for b in backbones:
        for task, res in results.get(b, {}).items():
            suffix = task.split("@", 1)[1] if "@" in task else ""
            for n in res.get("notes", []):
                notes.setdefault(task, set()).add(n)
            for name, e in res.get("entries", {}).items():
                key = f"{name}@{suffix}" if suffix else name
                entries.setdefault(key, {})[b] = e
                for metric, v in e["metrics"].items():
                    table.append({"entry": key, "backbone": b, "metric": metric, "primary": metric == e["primary"],
                                  "estimate": v.get("estimate"), "lo": v.get("lo"), "hi": v.get("hi"), "n": v.get("n")})
    for key, by_b in entries.items():
        primary = next(iter(by_b.values()))["primary"]
        est = {b: float(by_b[b]["metrics"][primary]["estimate"]) for b in by_b}
        r = _ranks(est)
        pairs = {}
        for a, c in combinations(by_b, 2):
            d = paired_difference(by_b[a]["paired"], by_b[c]["paired"], n_boot, seed)
            if d is not None:
                pairs[f"{a} vs {c}"] = d
        paired_out[key] = pairs
        best = [b for b in r if r[b] == min(r.values())] if any(np.isfinite(list(r.values()))) else []
        tied = set(best)
        for b in by_b:
            for bb in best:
                d = pairs.get(f"{b} vs {bb}") or pairs.get(f"{bb} vs {b}")
                if b not in best and d is not None and not (d["p"] < ALPHA):
                    tied.add(b)
        sig_first = [bb for bb in best if len(best) == 1 and all(
            (pairs.get(f"{bb} vs {o}") or pairs.get(f"{o} vs {bb}") or {"p": 1.0})["p"] < ALPHA for o in by_b if o != bb)]
        ranks[key] = {"metric": primary, "estimates": est, "rank": r, "best": best, "tied_with_best": sorted(tied),
                      "significantly_first": sig_first}
    m = len(ranks)
    summary = []
    for b in backbones:
        rs = [ranks[k]["rank"][b] for k in ranks if b in ranks[k]["rank"] and np.isfinite(ranks[k]["rank"][b])]
        first = sum(1 for k in ranks if b in ranks[k]["best"])
        sig = sum(1 for k in ranks if b in ranks[k]["significantly_first"])
        summary.append({"backbone": b, "first": first, "significantly_first": sig, "of": m,
                        "average_rank": float(np.mean(rs)) if rs else float("nan"),
                        "text": f"first in {first} of {m} tasks ({sig} significantly), average rank "
                                f"{np.mean(rs) if rs else float('nan'):.2f}"})
    return {"backbones": list(backbones), "table": table, "ranks": ranks, "summary": summary, "paired": paired_out,
            "notes": {k: sorted(v) for k, v in notes.items()}}


def _fmt(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return "–" if not np.isfinite(f) else f"{f:.3f}"


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``suite.json``, ``suite.csv`` (the table, ``csvsafe.write_csv``) and ``suite.html`` (self-contained)."""
    from mammolens.csvsafe import write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "suite.json", "csv": out / "suite.csv", "html": out / "suite.html"}
    paths["json"].write_text(json.dumps(report, indent=1, default=float))
    write_csv(pd.DataFrame(report["table"], columns=["entry", "backbone", "metric", "primary", "estimate", "lo", "hi",
                                                     "n"]), paths["csv"])
    bs = report["backbones"]
    head = "".join(f"<th>{html.escape(b)}</th>" for b in bs)
    rows = []
    for key, r in report["ranks"].items():
        cells = []
        for b in bs:
            line = next((t for t in report["table"] if t["entry"] == key and t["backbone"] == b and t["primary"]), None)
            if line is None:
                cells.append("<td>–</td>")
                continue
            cls = ' class="best"' if b in r["best"] else ""
            rank = r["rank"].get(b, float("nan"))
            cells.append(f"<td{cls}>{_fmt(line['estimate'])} [{_fmt(line['lo'])}, {_fmt(line['hi'])}]"
                         f" <span class=note>#{_fmt(rank)[:4]}</span></td>")
        rows.append(f"<tr><td>{html.escape(key)} <span class=note>{html.escape(r['metric'])}</span></td>{''.join(cells)}</tr>")
    summ = "".join(f"<tr><td>{html.escape(s['backbone'])}</td><td>{s['first']} / {s['of']}</td>"
                   f"<td>{s['significantly_first']}</td><td>{_fmt(s['average_rank'])}</td></tr>" for s in report["summary"])
    pair_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(p)}</td><td>{_fmt(d['diff'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}]</td>"
        f"<td>{_fmt(d['p'])}</td></tr>" for k, ps in report["paired"].items() for p, d in ps.items())
    notes = "".join(f"<li>{html.escape(k)}: {html.escape('; '.join(v))}</li>" for k, v in report.get("notes", {}).items())
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>mammolens suite</title><style>{CSS}</style></head>"
            f"<body><h1>mammolens suite: backbones × tasks</h1>"
            "<p class=note>Frozen features; out-of-fold estimates over patient-grouped folds with 95 % patient-bootstrap "
            "CIs; #rank per task (1 = best). Bold: best.</p>"
            f"<h2>Table (primary metric per task)</h2><table><thead><tr><th>task</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            "<h2>Rank summary</h2><table><thead><tr><th>backbone</th><th>first in</th><th>significantly first</th>"
            f"<th>average rank</th></tr></thead><tbody>{summ}</tbody></table>"
            "<h2>Paired tests (clustered by patient)</h2><table><thead><tr><th>task</th><th>pair</th>"
            f"<th>difference [95 % CI]</th><th>p</th></tr></thead><tbody>{pair_rows}</tbody></table>"
            f"<h2>Notes</h2><ul>{notes}</ul></body></html>")
    paths["html"].write_text(page, encoding="utf-8")
    return paths
