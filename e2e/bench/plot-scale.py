"""Draws apply->Ready and spec-change convergence against fleet size from the
CSV that `make bench-scale` writes (target/bench-scale.csv), as the PNG that
docs/benchmarks.md shows. Usage: plot-scale.py CSV PNG"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    members = [int(float(r["members"])) for r in rows]
    series = [
        ("apply → Ready", "apply_to_ready_s", "o-"),
        ("spec change, all healthy", "spec_change_s", "s--"),
        ("spec change, one member hung", "spec_change_one_hung_s", "^:"),
    ]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, key, style in series:
        ax.plot(members, [float(r[key]) for r in rows], style, label=label)
    targets = {10: 2, 25: 4, 50: 8}
    ax.plot(
        list(targets),
        list(targets.values()),
        "x",
        color="grey",
        label="apply → Ready target",
    )
    ax.set_xlabel("members (N×(N−1) remote secrets)")
    ax.set_ylabel("seconds")
    ax.set_xticks(members)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("meshfed convergence vs fleet size (2 cores, release operator)")
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
