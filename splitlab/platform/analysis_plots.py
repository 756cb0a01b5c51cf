"""Plots of the split-point analysis: a heatmap and line plots per channel, and the best k."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_grid(grid: dict, out: Path) -> list[Path]:
    """Write heatmap_<channel>.png and lines_<channel>.png for every channel, best_k.png, and
acc_<task>_<channel>.png for every accuracy task measured."""
    from splitlab.envs.quality_grid import QualityGrid

    files: list[Path] = []
    sweeps = list(dict.fromkeys(r["channel"] for r in grid["rows"]))
    fig_best, ax_best = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.2), squeeze=False)
    for i, sweep in enumerate(sweeps):
        g = QualityGrid.from_dict(grid, sweep)
        rel = np.log(g.ppl / g.ppl_clean)  # [K, V] log perplexity ratio
        fig, ax = plt.subplots(figsize=(7, 4))
        im = ax.imshow(rel.T, aspect="auto", origin="lower", cmap="magma_r",
                       extent=(g.ks[0] - 0.5, g.ks[-1] + 0.5, -0.5, len(g.values) - 0.5))
        ax.set_yticks(range(len(g.values)), [f"{v:g}" for v in g.values])
        ax.set_xlabel("split point k (layers on the UE)")
        ax.set_ylabel(g.param)
        ax.set_title(f"{grid['model']}: log(PPL / PPL_clean), {sweep} channel")
        fig.colorbar(im, ax=ax)
        files.append(_save(fig, out / f"heatmap_{sweep}.png"))

        fig, ax = plt.subplots(figsize=(7, 4))
        colors = plt.cm.viridis(np.linspace(0, 1, len(g.values)))
        for j, value in enumerate(g.values):
            ax.errorbar(g.ks, g.ppl[:, j], yerr=g.ppl_ci95[:, j], color=colors[j], marker=".", capsize=2,
                        label=f"{g.param}={value:g}")
        ax.axhline(g.ppl_clean, color="k", ls="--", lw=1, label="clean")
        ax.set_yscale("log")
        ax.set_xlabel("split point k (layers on the UE)")
        ax.set_ylabel(f"perplexity ({grid['corpus']}, {grid['tokens']} tokens)")
        ax.set_title(f"{grid['model']}: perplexity vs split, {sweep} channel")
        ax.legend(fontsize=7, ncol=2)
        files.append(_save(fig, out / f"lines_{sweep}.png"))

        best = g.ks[np.argmin(g.ppl, axis=0)]
        ax_best[0, i].plot(g.values, best, marker="o")
        ax_best[0, i].set_xlabel(g.param)
        ax_best[0, i].set_ylabel("k with the lowest perplexity")
        ax_best[0, i].set_title(sweep)
    fig_best.tight_layout()
    files.append(_save(fig_best, out / "best_k.png"))
    for task, info in grid.get("tasks", {}).items():
        files += [_plot_accuracy(grid, task, info, sweep, out) for sweep in sweeps]
    return files


def _plot_accuracy(grid: dict, task: str, info: dict, sweep: str, out: Path) -> Path:
    """acc_<task>_<sweep>.png: accuracy vs k, a line per channel setting, the clean accuracy dashed."""
    rows = [r for r in grid["rows"] if r["channel"] == sweep]
    values = sorted({r["value"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 1, len(values)))
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, value in zip(colors, values):
        line = sorted((r for r in rows if r["value"] == value), key=lambda r: r["k"])
        ax.errorbar([r["k"] for r in line], [r[f"acc_{task}_mean"] for r in line],
                    yerr=[r[f"acc_{task}_ci95"] for r in line], color=color, marker=".", capsize=2,
                    label=f"{rows[0]['param']}={value:g}")
    ax.axhline(info["acc_clean"], color="k", ls="--", lw=1, label="clean")
    top = max([info["acc_clean"]] + [r[f"acc_{task}_mean"] + r[f"acc_{task}_ci95"] for r in rows])
    ax.set_ylim(0, min(1.0, 1.2 * top + 0.02))
    ax.set_xlabel("split point k (layers on the UE)")
    ax.set_ylabel(f"{task} accuracy ({info['items']} items)")
    ax.set_title(f"{grid['model']}: {task} accuracy vs split, {sweep} channel")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / f"acc_{task}_{sweep}.png")


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel().startswith("split point"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_privacy(rows: list[dict], out: Path, title: str, tokens: int) -> Path:
    """Two panels: token recovery vs k per (attack, channel), and the privacy-utility frontier.

    ``rows``: one dict per (k, channel label) with ``k``, ``channel``, ``ppl`` and, per attack in
    ``nn`` / ``learned``, ``leak_<attack>_top1`` with ``_lo`` / ``_hi`` (95% CI).
    """
    channels = list(dict.fromkeys(r["channel"] for r in rows))
    fig, (ax_k, ax_f) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"nn": ("o", "--", "nearest neighbour"), "learned": ("s", "-", "learned (ridge)")}
    colors = dict(zip(channels, plt.cm.tab10(np.arange(len(channels)))))
    k_lo, k_hi = min(r["k"] for r in rows), max(r["k"] for r in rows)  # one colour scale for every series
    for channel in channels:
        line = sorted((r for r in rows if r["channel"] == channel), key=lambda r: r["k"])
        ks = np.array([r["k"] for r in line])
        for attack, (marker, ls, label) in styles.items():
            if f"leak_{attack}_top1" not in line[0]:
                continue
            y = np.array([r[f"leak_{attack}_top1"] for r in line])
            lo = np.array([r[f"leak_{attack}_top1_lo"] for r in line])
            hi = np.array([r[f"leak_{attack}_top1_hi"] for r in line])
            ax_k.plot(ks, y, ls=ls, marker=marker, ms=3, color=colors[channel], label=f"{label}, {channel}")
            ax_k.fill_between(ks, lo, hi, color=colors[channel], alpha=0.2)
            sc = ax_f.scatter([r["ppl"] for r in line], y, c=ks, cmap="viridis", marker=marker, vmin=k_lo,
                              vmax=k_hi, edgecolors=colors[channel], linewidths=1.0, s=28)
            ax_f.errorbar([r["ppl"] for r in line], y, yerr=[y - lo, hi - y], fmt="none", ecolor=colors[channel],
                          alpha=0.4, lw=0.8)
    ax_k.set_xlabel("split point k (layers on the UE)")
    ax_k.set_ylabel(f"top-1 token recovery ({tokens} held-out tokens, 95% CI)")
    ax_k.set_ylim(-0.02, 1.02)
    ax_k.legend(fontsize=7)
    ax_k.set_title(f"{title}: what the edge recovers")
    ax_f.set_xlabel("perplexity at the edge")
    ax_f.set_ylabel("top-1 token recovery")
    ax_f.set_ylim(-0.02, 1.02)
    ax_f.set_title("privacy-utility frontier\n(colour: k; circle nn, square learned; outline: channel)", fontsize=9)
    fig.colorbar(sc, ax=ax_f, label="k")
    return _save(fig, out)
