"""Aggregating samples over rounds, the comparison table, and the charts."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (scenario, metric substring, mode or None) -> (goal text, test(ours, ref) -> met)
Goal = tuple[str, str, str | None, str, Callable[[float, float | None], bool | None]]


def _ratio_at_least(k: float) -> Callable[[float, float | None], bool | None]:
    return lambda ours, ref: None if not ref else ours / ref >= k


def _abs(test: Callable[[float], bool]) -> Callable[[float, float | None], bool | None]:
    return lambda ours, ref: test(ours)


GOALS: list[Goal] = [
    ("appends", "", "memory", ">= 1.0x ref", _ratio_at_least(1.0)),
    ("appends", "", "durable", ">= 10x ref", _ratio_at_least(10.0)),
    ("batched", "", "durable", ">= 240k msg/s", _abs(lambda v: v >= 240_000)),
    ("large", "", "memory", ">= 1.0x ref, >= 200 MB/s",
     lambda o, r: (r is None or o >= r) and o >= 200),
    ("large", "", "durable", ">= 1.0x ref", _ratio_at_least(1.0)),
    ("catchup", "from -1", None, ">= 500 MB/s", _abs(lambda v: v >= 500)),
    ("latency", "p50", None, "< 2 ms", _abs(lambda v: v < 2)),
    ("latency", "p99", None, "< 15 ms", _abs(lambda v: v < 15)),
    ("fanout", "errors", None, "0", _abs(lambda v: v == 0)),
    ("proxy", "added per token p50", None, "< 2 ms", _abs(lambda v: v < 2)),
    ("proxy", "added per token p99", None, "< 10 ms", _abs(lambda v: v < 10)),
    ("proxy", "streams completed", None, "all", _abs(lambda v: v in (200, 1000))),
    ("yjs", "delivery p99", None, "< 50 ms", _abs(lambda v: v < 50)),
    ("crossnode", "p50", None, "< 5 ms", _abs(lambda v: v < 5)),
    ("crossnode", "p99", None, "< 25 ms", _abs(lambda v: v < 25)),
    ("cdn", "origin GETs per append", None, "<= 3", _abs(lambda v: v <= 3)),
    ("cdn", "errors", None, "0", _abs(lambda v: v == 0)),
]


def goal_for(scenario: str, metric: str,
             mode: str) -> tuple[str, Callable[..., bool | None]] | None:
    for sc, sub, m, text, test in GOALS:
        if sc == scenario and sub in metric and (m is None or m == mode):
            return text, test
    return None


def aggregate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds of each (scenario, metric, target); info from the median round."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["scenario"], s["metric"], s["target"]), []).append(s)
    out = []
    for (scenario, metric, target), rows in groups.items():
        values = [r["value"] for r in rows if r["value"] is not None]
        median = statistics.median(values) if values else None
        info: dict[str, Any] = {}
        if values:
            closest = min((r for r in rows if r["value"] is not None),
                          key=lambda r: abs(r["value"] - median))
            info = {k: v for k, v in closest["info"].items() if k != "samples_ms"}
        else:
            info = {k: v for k, v in rows[-1]["info"].items() if k != "samples_ms"}
        out.append({"scenario": scenario, "metric": metric, "unit": rows[0]["unit"],
                    "higher_is_better": rows[0]["higher_is_better"], "target": target,
                    "kind": rows[0]["kind"], "mode": rows[0]["mode"], "value": median,
                    "rounds": [r["value"] for r in rows], "info": info})
    return out


def comparisons(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (metric, non-reference target), paired with the reference in its mode."""
    refs = {(a["scenario"], a["metric"], a["mode"]): a for a in agg if a["kind"] == "reference"}
    rows = []
    seen_ref: set[tuple[str, str, str]] = set()
    for a in agg:
        if a["kind"] == "reference":
            continue
        key = (a["scenario"], a["metric"], a["mode"])
        ref = refs.get(key)
        seen_ref.add(key)
        rows.append(_row(a, ref))
    for key, ref in refs.items():  # a reference without anything of ours to compare
        if key not in seen_ref:
            rows.append(_row(None, ref))
    return rows


def _row(ours: dict[str, Any] | None, ref: dict[str, Any] | None) -> dict[str, Any]:
    base = ours or ref
    assert base is not None
    ov = ours["value"] if ours else None
    rv = ref["value"] if ref else None
    ratio = None
    if ov is not None and rv is not None and ov > 0 and rv > 0:
        ratio = ov / rv if base["higher_is_better"] else rv / ov
    goal = goal_for(base["scenario"], base["metric"], base["mode"])
    met = None
    if goal and ov is not None:
        met = goal[1](ov, rv)
    notes = []
    if ours:
        i = ours["info"]
        for key, label in (("client_cpu_pct", "client cpu"), ("server_cpu_pct", "server cpu")):
            if i.get(key) is not None:
                notes.append(f"{label} {i[key]:.0f}%")
        if i.get("errors"):
            notes.append(f"errors {i['errors']}")
        if i.get("error"):
            notes.append(" ".join(str(i["error"]).split())[:80])
    if ref and ref["info"].get("error"):
        notes.append("ref: " + " ".join(str(ref["info"]["error"]).split())[:60])
    return {"scenario": base["scenario"], "metric": base["metric"], "unit": base["unit"],
            "mode": base["mode"], "target": ours["target"] if ours else "-",
            "reference": ref["target"] if ref else "-", "ours": ov, "ref": rv, "ratio": ratio,
            "goal": goal[0] if goal else "", "met": met, "notes": ", ".join(notes)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["scenario", "metric", "unit", "mode", "ours", "value", "reference", "ref value",
            "ratio", "goal", "met", "notes"]
    body = []
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        body.append([r["scenario"], r["metric"], r["unit"], r["mode"], r["target"],
                     _fmt(r["ours"]), r["reference"], _fmt(r["ref"]), ratio, r["goal"], met,
                     r["notes"]])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'>' if i in (5, 7, 8) else '<'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in body]
    return "\n".join(lines)


# -- charts -------------------------------------------------------------------------------
_COLORS = {"duralog-memory": "#1f77b4", "duralog-sqlite": "#ff7f0e", "ref-memory": "#9ecae1",
           "ref-datadir": "#fdd0a2", "granian-memory": "#2ca02c", "granian-sqlite": "#d62728",
           "url": "#7f7f7f"}


def charts(agg: list[dict[str, Any]], samples: list[dict[str, Any]], out_dir: Path,
           title_suffix: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    scenarios = list(dict.fromkeys(a["scenario"] for a in agg))
    for scenario in scenarios:
        if scenario == "fanout":
            written.append(_fanout_chart(plt, [a for a in agg if a["scenario"] == "fanout"],
                                         out_dir, title_suffix))
            continue
        rows = [a for a in agg if a["scenario"] == scenario]
        metrics = list(dict.fromkeys(a["metric"] for a in rows))
        targets = list(dict.fromkeys(a["target"] for a in rows))
        cols = min(3, len(metrics))
        nrows = (len(metrics) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            vals = {a["target"]: a for a in rows if a["metric"] == metric}
            names = [t for t in targets if t in vals]
            heights = [vals[t]["value"] or 0 for t in names]
            bars = ax.bar(range(len(names)), heights,
                          color=[_COLORS.get(t, "#999999") for t in names])
            for b, t in zip(bars, names, strict=True):
                v = vals[t]["value"]
                ax.annotate("n/a" if v is None else _fmt(v),
                            (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
            unit = vals[names[0]]["unit"] if names else ""
            better = "higher" if (names and vals[names[0]]["higher_is_better"]) else "lower"
            ax.set_title(f"{metric}\n({unit}, {better} is better)", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        fig.suptitle(f"{scenario}{title_suffix}", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        path = out_dir / f"{scenario}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # Latency distributions (CDF) from the raw samples.
    lat = [s for s in samples if s["scenario"] == "latency" and s["info"].get("samples_ms")]
    if lat:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
        for ax, mode in zip(axes.flat, ("long-poll", "sse"), strict=True):
            pooled: dict[str, list[float]] = {}
            for s in lat:
                if s["metric"].startswith(mode):
                    pooled.setdefault(s["target"], []).extend(s["info"]["samples_ms"])
            for target, values in pooled.items():
                values.sort()
                n = len(values)
                ax.plot(values, [(i + 1) / n for i in range(n)], label=target,
                        color=_COLORS.get(target))
            ax.set_xscale("log")
            ax.set_xlabel("append -> delivered (ms, log)")
            ax.set_ylabel("fraction of appends")
            ax.set_title(f"{mode}: latency CDF", fontsize=9)
            ax.axvline(2, color="grey", ls=":", lw=1)
            ax.axvline(15, color="grey", ls="--", lw=1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "latency-cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _fanout_chart(plt: Any, rows: list[dict[str, Any]], out_dir: Path, suffix: str) -> Path:
    """Grouped bars: one group per case (sse x1000, ...), one bar per target."""
    cases = list(dict.fromkeys(a["metric"].split(":")[0] for a in rows))
    targets = list(dict.fromkeys(a["target"] for a in rows))
    panels = [("delivery p50", "ms", True), ("delivery p99", "ms", True),
              ("server RSS per reader", "KiB", False), ("errors", "count", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(1, len(targets))
    for ax, (what, unit, log) in zip(axes.flat, panels, strict=True):
        for k, target in enumerate(targets):
            values = []
            for case in cases:
                match = [a for a in rows if a["target"] == target
                         and a["metric"] == f"{case}: {what}"]
                values.append(match[0]["value"] if match and match[0]["value"] is not None
                              else 0)
            xs = [i + (k - (len(targets) - 1) / 2) * width for i in range(len(cases))]
            ax.bar(xs, values, width, label=target, color=_COLORS.get(target, "#999999"))
        ax.set_xticks(range(len(cases)), cases, rotation=15, fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{what} ({unit}{', log' if log else ''}, lower is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"fan-out: N live readers of one stream{suffix}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = out_dir / "fanout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
