#!/usr/bin/env python3
"""Draws the soak's curves (bench/soak.sh): RSS of every process and DNS answer latency (p50,
p99 per sample) over time, each fault a vertical line. Run: python3 bench/soak_plot.py DIR OUT.png
where DIR holds benches/soak.rs's proc.csv, load.csv and faults.csv."""
import csv, os, sys

import matplotlib
matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt

d, out = sys.argv[1], sys.argv[2]
rows = lambda name: list(csv.DictReader(open(os.path.join(d, name))))
procs, load, faults = rows("proc.csv"), rows("load.csv"), rows("faults.csv")
parts = sorted({int(r["part"]) for r in load})
titles = {1: "part 1: one server, --data-dir, kill -9", 2: "part 2: 3 nodes on 3 etcd members"}

fig, axes = plt.subplots(2, len(parts), figsize=(7 * len(parts), 7), squeeze=False)
for col, part in enumerate(parts):
    rss_ax, lat_ax = axes[0][col], axes[1][col]
    t0 = 0.0  # seconds since the soak began, as in the CSVs
    mine = [r for r in procs if int(r["part"]) == part]
    for name in dict.fromkeys(r["process"] for r in mine):
        pts = [(float(r["t_s"]) - t0, int(r["rss_kib"]) / 1024) for r in mine if r["process"] == name]
        rss_ax.plot(*zip(*pts), label=name, linewidth=1)
    rss_ax.set_ylabel("RSS (MiB)")
    rss_ax.set_title(titles.get(part, f"part {part}"))
    pts = [(float(r["t_s"]) - t0, float(r["p50_ms"]), float(r["p99_ms"]))
           for r in load if int(r["part"]) == part and r["p50_ms"] != "NaN"]
    if pts:
        t, p50, p99 = zip(*pts)
        lat_ax.plot(t, p50, label="p50", linewidth=1)
        lat_ax.plot(t, p99, label="p99", linewidth=1)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("DNS answer latency (ms)")
    lat_ax.set_xlabel("seconds since the soak began")
    lat_ax.legend(fontsize=7)
    for f in faults:
        if int(f["part"]) == part:
            for ax in (rss_ax, lat_ax):
                ax.axvline(float(f["t_s"]) - t0, color="red", alpha=0.4, linewidth=0.8)
    rss_ax.legend(fontsize=7, ncol=2)
fig.suptitle("beacon soak (red lines: faults)")
fig.tight_layout()
fig.savefig(out, dpi=90)
