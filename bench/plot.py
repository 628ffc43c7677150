#!/usr/bin/env python3
"""Draws the scale benchmarks' CSVs (target/bench/*.csv) as PNGs in bench/plots/.

    python3 bench/plot.py [csv dir] [png dir]     (defaults target/bench and bench/plots)

Installs matplotlib (PyPI, pinned) when it is missing. Each plot is drawn only when its CSV
exists: run bench/overlay-scale.sh, bench/pods-per-node.sh, bench/csi-scale.sh and
bench/overlay.sh first.
"""

import csv
import glob
import os
import re
import subprocess
import sys

MATPLOTLIB = "matplotlib==3.11.2"

try:
    import matplotlib
except ImportError:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", MATPLOTLIB],
        check=True,
    )
    import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path, header=True):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if header:
            next(reader, None)
        return [r for r in reader if r]


def rolling_median(values, window=25):
    out = []
    for i in range(len(values)):
        chunk = sorted(values[max(0, i - window + 1): i + 1])
        out.append(chunk[len(chunk) // 2])
    return out


def finish(ax, fig, png_dir, name):
    """Grid, legend, layout, the PNG written."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(png_dir, name), dpi=110)
    plt.close(fig)


def overlay(csv_dir, png_dir):
    files = sorted(
        glob.glob(os.path.join(csv_dir, "overlay-scale-*.csv")),
        key=lambda p: ("-etcd-" in p, int(re.search(r"(\d+)\.csv$", p).group(1))),
    )
    if not files:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in files:
        nodes = re.search(r"(\d+)\.csv$", path).group(1)
        store = "etcd" if "-etcd-" in path else "Kubernetes API"
        lat = sorted(float(r[2]) for r in rows(path) if r[2] != "timeout")
        if lat:
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=f"{nodes} nodes, {store}")
    ax.set_xscale("log")
    ax.set_xlabel("API write to kernel entry (ms, log scale)")
    ax.set_ylabel("fraction of changes")
    ax.set_title("tether-overlayd: one Node change while the cluster churns")
    finish(ax, fig, png_dir, "overlay-scale.png")


def pods_per_node(csv_dir, png_dir):
    path = os.path.join(csv_dir, "pods-per-node.csv")
    if not os.path.exists(path):
        return
    data = {}
    for impl, command, before, ms in rows(path):
        data.setdefault((impl, command), {}).setdefault(int(before), []).append(float(ms))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, command in zip(axes, ["ADD", "DEL"]):
        for impl in ["tether", "reference"]:
            per = data.get((impl, command), {})
            xs = sorted(per)
            medians = [sorted(per[x])[len(per[x]) // 2] for x in xs]
            ax.plot(xs, rolling_median(medians), label=impl)
        ax.set_title(f"{command} (rolling median of 25)")
        ax.set_xlabel("pods on the node before the call" if command == "ADD" else "pods left after the call")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("ms")
    fig.suptitle("Pods per node: cni-bridge + cni-ipam vs bridge + host-local, /23")
    fig.tight_layout()
    fig.savefig(os.path.join(png_dir, "pods-per-node.png"), dpi=110)
    plt.close(fig)


def csi(csv_dir, png_dir):
    files = sorted(
        glob.glob(os.path.join(csv_dir, "csi-scale-*.csv")),
        key=lambda p: int(re.search(r"(\d+)\.csv$", p).group(1)),
    )
    if not files:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in files:
        count = re.search(r"(\d+)\.csv$", path).group(1)
        for op in ["create", "delete"]:
            points = sorted((int(r[1]), float(r[2])) for r in rows(path, header=False) if r[0] == op)
            if points:
                ax.plot(
                    [p[0] for p in points],
                    rolling_median([p[1] for p in points], 101),
                    label=f"{op}, {count} volumes",
                )
    ax.set_xlabel("volumes on the share")
    ax.set_ylabel("ms (rolling median of 101, 16 clients)")
    ax.set_title("tether-csi controller: CreateVolume / DeleteVolume as one share fills")
    finish(ax, fig, png_dir, "csi-scale.png")


def throughput(csv_dir, png_dir):
    """bench/overlay.sh's medians per path, one bar per run, one panel per segment."""
    path = os.path.join(csv_dir, "overlay-throughput.csv")
    if not os.path.exists(path):
        return
    data = {}
    runs = []
    for run, segment, what, gbit in rows(path):
        data.setdefault(segment, {}).setdefault(what, {})[run] = float(gbit)
        if run not in runs:
            runs.append(run)
    segments = [s for s in ("one L2", "across a router") if s in data]
    fig, axes = plt.subplots(
        1, len(segments), figsize=(6 * len(segments), 4.5), sharey=True, squeeze=False
    )
    width = 0.8 / max(len(runs), 1)
    for ax, segment in zip(axes[0], segments):
        paths = list(data[segment])
        for k, run in enumerate(runs):
            ax.bar(
                [i + k * width for i in range(len(paths))],
                [data[segment][p].get(run, 0) for p in paths],
                width,
                label=f"run {k + 1}",
            )
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(paths))])
        ax.set_xticklabels(paths, rotation=25, ha="right", fontsize=8)
        ax.set_title(segment)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("iperf3 TCP, Gbit/s (median of each run)")
    fig.suptitle("Pod to pod across two nodes, per path (bench/overlay.sh)")
    fig.tight_layout()
    fig.savefig(os.path.join(png_dir, "overlay-throughput.png"), dpi=110)
    plt.close(fig)


def main():
    csv_dir = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    png_dir = sys.argv[2] if len(sys.argv) > 2 else "bench/plots"
    os.makedirs(png_dir, exist_ok=True)
    for draw in (overlay, pods_per_node, csi, throughput):
        draw(csv_dir, png_dir)
    print("plots in", png_dir, ":", ", ".join(sorted(os.listdir(png_dir))))


if __name__ == "__main__":
    main()
