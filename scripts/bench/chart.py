#!/usr/bin/python3
"""Chart of a tern benchmark: downtime medians with min..max error bars.

    /usr/bin/python3 scripts/bench/chart.py ROWS.json OUT.png

ROWS.json is what `scripts/bench.sh --json FILE` writes (one object per run
with method, workload, link, downtime_ms). One panel per link, one group of
bars per workload, one bar per method; above each tern bar its downtime as a
fraction of the manual procedure's (medians). Needs Debian's
python3-matplotlib (scripts/bench.sh installs it); run with /usr/bin/python3,
not a pyenv or venv python that lacks Debian's packages.
"""
import json
import re
import statistics
import sys

try:
    import matplotlib
except ImportError:
    sys.exit("chart.py: matplotlib is missing: apt-get install python3-matplotlib, "
             "and run this with /usr/bin/python3")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ["manual", "podman-floor", "stop-and-copy", "pre-copy", "hash-pre-copy"]
COLORS = {"manual": "#7f7f7f", "podman-floor": "#d9d9d9", "stop-and-copy": "#1f77b4", "pre-copy": "#2ca02c",
          "hash-pre-copy": "#ff7f0e"}
LINKS = ["unlimited", "1gbit", "100mbit"]
SIZED = re.compile(r"^(\d+)(MiB|GiB)@(\d+)MiB/s$")


def rank(order):
    return lambda x: (order.index(x) if x in order else len(order), x)


def workload_rank(w):
    """idle first, then by memory size, then by dirty rate."""
    m = SIZED.match(w)
    if not m:
        return (0 if w == "idle" else 2, 0, 0, w)
    return (1, int(m.group(1)) * (1024 if m.group(2) == "GiB" else 1), int(m.group(3)), w)


def main(src, out):
    with open(src) as f:
        rows = json.load(f)
    if not rows:
        sys.exit("chart.py: no rows")
    links = sorted({r["link"] for r in rows}, key=rank(LINKS))
    methods = sorted({r["method"] for r in rows}, key=rank(METHODS))
    runs = max(r.get("run", 0) for r in rows) + 1
    nwl = max(len({r["workload"] for r in rows if r["link"] == l}) for l in links)
    width = max(7.5, 1.2 + nwl * (0.55 + 0.42 * len(methods)))
    fig, axes = plt.subplots(len(links), 1, figsize=(width, 1.0 + 3.4 * len(links)), squeeze=False)
    bar = 0.8 / len(methods)
    for ax, link in zip(axes[:, 0], links):
        wls = sorted({r["workload"] for r in rows if r["link"] == link}, key=workload_rank)
        top = 0.0
        for mi, m in enumerate(methods):
            xs, meds, lo, hi, mans = [], [], [], [], []
            for wi, w in enumerate(wls):
                v = [r["downtime_ms"] / 1000 for r in rows if r["link"] == link and r["workload"] == w
                     and r["method"] == m and r.get("downtime_ms") is not None]
                if not v:
                    continue
                med = statistics.median(v)
                xs.append(wi - 0.4 + bar * (mi + 0.5))
                meds.append(med)
                lo.append(med - min(v))
                hi.append(max(v) - med)
                top = max(top, max(v))
                man = [r["downtime_ms"] / 1000 for r in rows if r["link"] == link and r["workload"] == w
                       and r["method"] == "manual" and r.get("downtime_ms") is not None]
                mans.append(statistics.median(man) if man else None)
            if not xs:
                continue
            ax.bar(xs, meds, bar * 0.92, color=COLORS.get(m, None), label=m, zorder=2,
                   edgecolor="#7f7f7f" if m == "podman-floor" else None, hatch="//" if m == "podman-floor" else None)
            ax.errorbar(xs, meds, yerr=[lo, hi], fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
            for x, med, h, man in zip(xs, meds, hi, mans):
                label = f"{med:.2f} s"
                if m != "manual" and man:
                    label += f"\n{med / man:.2f}×"
                ax.annotate(label, (x, med + h), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(range(len(wls)))
        ax.set_xticklabels(wls)
        ax.set_xlim(-0.6, len(wls) - 0.4)
        ax.set_ylim(0, top * 1.3 if top else 1)
        ax.set_ylabel("downtime (s)")
        ax.set_title(f"link: {link}", fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.set_axisbelow(True)
    # Title, then the legend on its own line, then the panels.
    height = fig.get_figheight()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"tern vs the manual procedure: downtime (median, bars min..max of {runs} run(s))\n"
                 "× under a tern bar's value: its median / the manual procedure's median",
                 x=0.01, y=1 - 0.06 / height, ha="left", va="top", fontsize=9.5)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.45 / height), ncol=len(methods),
               fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    main(sys.argv[1], sys.argv[2])
