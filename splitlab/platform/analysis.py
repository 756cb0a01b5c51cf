"""The split-point analysis: how split point k and channel change quality and link cost.

For every batch of token windows the clean hidden states after every layer come from one pass
(``SplitModel.layer_states``); each (k, channel setting, seed) point only reruns the tail. Results:
``grid.json`` / ``grid.csv`` (mean perplexity over seeds with a 95% confidence interval),
``link_cost.csv``, a heatmap and line plots per channel, and one MLflow run holding all of it. With
``tasks`` the same points also get LAMBADA / HellaSwag accuracy (``acc_<task>_mean`` and ``_ci95`` in
every row), again with one clean pass per sequence. With ``privacy`` every point also gets the token
recovery of the inversion attacks in ``splitlab.privacy`` (``leak_<attack>_top1`` / ``_top5`` with a
bootstrap 95% interval ``_lo`` / ``_hi``), scored on the perplexity text and fitted on the text after it,
plus ``privacy.csv`` (clean leakage per k) and a leakage / frontier plot per channel.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from splitlab.channel import Channel, ChannelConfig, link_cost
from splitlab.config import Bool, ConfigModel, Float, Int, NonNegativeInt, PositiveInt, Str
from splitlab.llm.evaluation import TASKS
from splitlab.platform.statistics import ci95
from splitlab.progress import progress_bar

# Named sweeps: which ChannelConfig they start from and which field they vary.
SWEEPS: dict[str, tuple[dict, str]] = {
    "erasure": ({"kind": "erasure"}, "rho"),
    "awgn": ({"kind": "awgn"}, "snr_db"),
    "awgn-per-channel": ({"kind": "awgn", "per_channel": True}, "snr_db"),
    "digital": ({"kind": "digital", "quant": "fp16", "modulation": "qpsk", "on_packet_error": "erase"}, "snr_db"),
}
DEFAULT_RHO = (0.02, 0.05, 0.1, 0.2, 0.3)
DEFAULT_SNR_DB = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)


class AnalysisConfig(ConfigModel):
    """What ``splitlab analyze`` computes."""

    model: Annotated[Str, Field(min_length=1)] = "smollm2"
    """Model spec: smollm2, tiny-llama, tiny-gpt2, or a local checkpoint."""
    corpus: Literal["wiki", "lambada"] = "wiki"
    """Perplexity corpus: wiki or lambada."""
    tokens: Annotated[Int, Field(ge=2)] = 1024
    """Tokens evaluated per point."""
    window: Annotated[Int, Field(ge=2)] = 128
    """Tokens per window."""
    splits: list[NonNegativeInt] | None = None
    """Split points k; None = every k in 0..L."""
    channels: Annotated[list[Literal[tuple(SWEEPS)]], Field(min_length=1)] = \
        ["erasure", "awgn", "awgn-per-channel", "digital"]
    """Named sweeps: erasure, awgn, awgn-per-channel, digital."""
    rho: Annotated[list[Annotated[Float, Field(ge=0.0, le=1.0)]], Field(min_length=1)] = list(DEFAULT_RHO)
    """Erasure probabilities for the erasure sweep."""
    snr_db: Annotated[list[Float], Field(min_length=1)] = list(DEFAULT_SNR_DB)
    """Mean SNRs (dB) for the AWGN and digital sweeps."""
    channel_settings: dict[str, Any] = Field(default_factory=dict)
    """ChannelConfig fields applied to every sweep (e.g. fading: rayleigh, quant: int8)."""
    tasks: list[Literal[tuple(TASKS)]] = Field(default_factory=list)
    """Accuracy tasks measured at every point too: lambada, hellaswag (slow: one tail per item and point)."""
    task_items: PositiveInt = 50
    """Items per task (the first ones of the test / validation split)."""
    privacy: Bool = False
    """Measure token leakage (nearest-neighbour and learned inversion) at every point too."""
    privacy_fit_tokens: Annotated[Int, Field(ge=2)] = 4096
    """Tokens the learned attack is fitted on: the corpus text right after the evaluated tokens."""
    seeds: PositiveInt = 3
    """Noise seeds averaged per point."""
    seed: NonNegativeInt = 0
    """Base seed."""
    batch_size: PositiveInt = 8
    """Windows per forward pass."""
    out: Annotated[Str, Field(min_length=1)] = "runs/analysis"
    """Output folder."""
    tracking_uri: Str | None = None
    """MLflow tracking URI (default: sqlite:///mlflow.db in the working directory)."""
    experiment: Annotated[Str, Field(min_length=1)] = "splitlab-analysis"
    """MLflow experiment name."""

    @model_validator(mode="after")
    def _channels_valid(self) -> AnalysisConfig:
        if self.privacy and self.privacy_fit_tokens < self.window:
            raise ValueError(f"privacy_fit_tokens must be >= window ({self.window}), got {self.privacy_fit_tokens}")
        for c in self.channels:  # every channel setting validated before any model loads
            for value in self._values(c):
                try:
                    self.channel_config(c, value)
                except ValueError as err:
                    raise ValueError(f"channel_settings: {err}") from None
        return self

    def _values(self, sweep: str) -> list[float]:
        return list(self.rho if SWEEPS[sweep][1] == "rho" else self.snr_db)

    def channel_config(self, sweep: str, value: float) -> ChannelConfig:
        base, param = SWEEPS[sweep]
        return ChannelConfig.from_dict({**self.channel_settings, **base, param: value})

    def points(self) -> list[tuple[str, str, float]]:
        """(sweep, param, value) for every channel setting."""
        return [(c, SWEEPS[c][1], v) for c in self.channels for v in self._values(c)]


def compute_grid(cfg: AnalysisConfig, progress: bool = True) -> dict:
    """Run the grid; returns the ``grid.json`` dict (see ``splitlab.envs.quality_grid``)."""
    from splitlab.llm import SplitModel
    from splitlab.llm.corpora import token_windows
    from splitlab.llm.evaluation import accuracy_grid, perplexity, perplexity_grid

    start = time.perf_counter()
    model = SplitModel.load(cfg.model)
    splits = cfg.splits if cfg.splits is not None else list(range(model.num_layers + 1))
    bad = [k for k in splits if not 0 <= k <= model.num_layers]
    if bad:
        raise ValueError(f"splits must lie in 0..{model.num_layers} for {cfg.model}, got {bad}")
    fit_windows = None
    if cfg.privacy:  # the attack's training text follows the evaluated text, so the two never overlap
        from splitlab.privacy import split_windows

        n_eval = cfg.tokens // cfg.window
        windows, fit_windows = split_windows(token_windows(
            model.tokenizer, cfg.corpus, n_eval * cfg.window + cfg.privacy_fit_tokens, cfg.window), n_eval)
    else:
        windows = token_windows(model.tokenizer, cfg.corpus, cfg.tokens, cfg.window)
    ppl_clean = perplexity(model, windows, 0, batch_size=cfg.batch_size)
    points = {}
    for ci, (sweep, param, value) in enumerate(cfg.points()):
        channel = Channel(cfg.channel_config(sweep, value))
        for k in splits:
            for s in range(cfg.seeds):
                rng = np.random.default_rng([cfg.seed, s, ci, k])
                points[sweep, value, k, s] = (k, channel.as_corruption(rng))
    n_batches = -(-windows.shape[0] // cfg.batch_size)
    with progress_bar(len(points) * n_batches, "analysis (k x channel x seed)", "tail", progress) as bar:
        ppl = perplexity_grid(model, windows, points, cfg.batch_size, on_point=bar.update)
    acc, tasks = {}, {}
    for task in cfg.tasks:
        items = task_items(task)[:cfg.task_items]
        with progress_bar(len(items), f"{task} accuracy ({len(points)} points per item)", "item", progress) as bar:
            acc[task] = accuracy_grid(model, task, items, {**points, "clean": (0, None)}, on_item=bar.update)
        tasks[task] = {"items": len(items), "acc_clean": acc[task]["clean"]}
    leak = _leakage(cfg, model, windows, fit_windows, splits, progress) if cfg.privacy else None
    rows = []
    n_tokens = windows.numel()
    for sweep, param, value in cfg.points():
        ccfg = cfg.channel_config(sweep, value)
        cost = link_cost(n_tokens, model.hidden_size, ccfg, snr_db=value if param == "snr_db" else None)
        for k in splits:
            samples = np.array([ppl[sweep, value, k, s] for s in range(cfg.seeds)])
            row = {"k": k, "channel": sweep, "param": param, "value": float(value),
                   "ppl_mean": float(samples.mean()), "ppl_ci95": ci95(samples), "seeds": cfg.seeds,
                   "payload_bytes": cost.payload_bytes, "tx_time_s": cost.tx_time_s}
            for task, by_point in acc.items():
                hits = np.array([by_point[sweep, value, k, s] for s in range(cfg.seeds)])
                row.update({f"acc_{task}_mean": float(hits.mean()), f"acc_{task}_ci95": ci95(hits)})
            if leak is not None:
                row.update(leak["points"][sweep, value, k])
            rows.append(row)
    privacy = None if leak is None else {k: v for k, v in leak.items() if k != "points"}
    return {"model": cfg.model, "num_layers": model.num_layers, "hidden_size": model.hidden_size,
            "corpus": cfg.corpus, "tokens": n_tokens, "ppl_clean": ppl_clean, "splits": splits, "tasks": tasks,
            "config": cfg.to_dict(), "wall_time_s": time.perf_counter() - start, "rows": rows,
            **({"privacy": privacy} if privacy else {})}


def _leakage(cfg: AnalysisConfig, model, windows, fit_windows, splits: list[int], progress: bool) -> dict:
    """Leakage at every (sweep, value, k), pooled over seeds, and clean per k (``privacy.csv``).

    Each attacker sees its own noise draws (generators apart from the perplexity ones): one for the
    scored text and one for the text the learned attack is fitted on.
    """
    from splitlab.privacy import ATTACKS, leakage_grid, pooled

    points = {("clean", k): (k, None, None) for k in splits}
    for ci, (sweep, _, value) in enumerate(cfg.points()):
        channel = Channel(cfg.channel_config(sweep, value))
        for k in splits:
            for s in range(cfg.seeds):
                points[sweep, value, k, s] = (k, channel.as_corruption(np.random.default_rng([cfg.seed, s, ci, k, 1])),
                                              channel.as_corruption(np.random.default_rng([cfg.seed, s, ci, k, 2])))
    with progress_bar(len(points), "privacy (k x channel x seed)", "point", progress) as bar:
        hits = leakage_grid(model, windows, fit_windows, points, batch_size=cfg.batch_size, on_point=bar.update)

    def row(keys: list) -> dict:
        out = {}
        for attack in ATTACKS:
            out.update(pooled([hits[key][attack] for key in keys], seed=cfg.seed).as_row(f"leak_{attack}"))
        return out

    by_point = {(sweep, value, k): row([(sweep, value, k, s) for s in range(cfg.seeds)])
                for sweep, _, value in cfg.points() for k in splits}
    return {"tokens_eval": int(windows.numel()), "tokens_fit": int(fit_windows.numel()),
            "ci95": "percentile bootstrap over windows (2000 resamples), seeds averaged within a window",
            "clean": [{"k": k, **row([("clean", k)])} for k in splits], "points": by_point}


def task_items(task: str) -> tuple:
    """The items of an accuracy task, in the corpus's order."""
    from splitlab.llm.corpora import hellaswag, lambada

    return {"lambada": lambada, "hellaswag": hellaswag}[task]()


def summarise(grid: dict) -> list[dict]:
    """Per (channel, value): the most robust k, its perplexity, and the paper reward's best k."""
    from splitlab.envs.quality_grid import QualityGrid
    from splitlab.envs.rewards import paper_k_max, paper_reward

    out = []
    k_max = paper_k_max(grid["num_layers"])
    for sweep in dict.fromkeys(r["channel"] for r in grid["rows"]):
        g = QualityGrid.from_dict(grid, sweep)
        allowed = (g.ks >= 1) & (g.ks <= k_max)
        for j, value in enumerate(g.values):
            col = g.ppl[:, j]
            best = int(g.ks[np.argmin(col)])
            reward = paper_reward(col, g.ppl_clean, g.ks, k_max).total
            paper_k = int(g.ks[allowed][np.argmax(reward[allowed])]) if allowed.any() else None
            out.append({"channel": sweep, "param": g.param, "value": float(value), "best_k": best,
                        "best_ppl": float(col.min()), "worst_k": int(g.ks[np.argmax(col)]),
                        "worst_ppl": float(col.max()), "paper_reward_best_k": paper_k,
                        **_task_summary(grid, sweep, float(value))})
    return out


def _task_summary(grid: dict, sweep: str, value: float) -> dict:
    """Per accuracy task: the k with the highest accuracy at one channel setting (smallest k on ties)."""
    rows = sorted((r for r in grid["rows"] if r["channel"] == sweep and r["value"] == value), key=lambda r: r["k"])
    out = {}
    for task in grid.get("tasks", {}):
        best = max(rows, key=lambda r: r[f"acc_{task}_mean"])  # max keeps the first of equals
        out.update({f"{task}_best_k": best["k"], f"{task}_best_acc": best[f"acc_{task}_mean"],
                    f"{task}_worst_acc": min(r[f"acc_{task}_mean"] for r in rows)})
    return out


def write_outputs(grid: dict, out: Path) -> list[Path]:
    """Write grid.json, grid.csv, link_cost.csv, summary.csv and the plots; returns the files."""
    from splitlab.platform.analysis_plots import plot_grid

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "grid.json", out / "grid.csv", out / "summary.csv", out / "link_cost.csv"]
    files[0].write_text(json.dumps(grid, indent=1) + "\n")
    _write_csv(files[1], grid["rows"])
    _write_csv(files[2], summarise(grid))
    # Transmission time varies with SNR, not with rho: tabulate it over an SNR sweep where there is one.
    sweeps = list(dict.fromkeys(r["channel"] for r in grid["rows"]))
    by_snr = next((s for s in sweeps if any(r["channel"] == s and r["param"] == "snr_db" for r in grid["rows"])),
                  sweeps[0])
    bits = {r["value"]: r for r in grid["rows"] if r["channel"] == by_snr}
    _write_csv(files[3], [{"k": k, "ue_layers": k, "edge_layers": grid["num_layers"] - k,
                           "payload_bytes_per_token": next(iter(bits.values()))["payload_bytes"] / grid["tokens"],
                           **{f"tx_time_s_at_{r['param']}={v:g}": r["tx_time_s"] / grid["tokens"]
                              for v, r in bits.items()}} for k in grid["splits"]])
    files += plot_grid(grid, out)
    if grid.get("privacy"):
        files += _write_privacy(grid, out)
    return files


def _write_privacy(grid: dict, out: Path) -> list[Path]:
    """privacy.csv (clean leakage per k) and privacy_<channel>.png (leakage vs k, frontier) per sweep."""
    from splitlab.platform.analysis_plots import plot_privacy

    path = out / "privacy.csv"
    _write_csv(path, grid["privacy"]["clean"])
    files = [path]
    clean = [{"channel": "clean", "ppl": grid["ppl_clean"], **r} for r in grid["privacy"]["clean"]]
    for sweep in dict.fromkeys(r["channel"] for r in grid["rows"]):
        rows = [{**r, "channel": f"{r['param']}={r['value']:g}", "ppl": r["ppl_mean"]}
                for r in grid["rows"] if r["channel"] == sweep]
        files.append(plot_privacy(clean + rows, out / f"privacy_{sweep}.png", f"{grid['model']}, {sweep}",
                                  grid["privacy"]["tokens_eval"]))
    return files


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def log_to_mlflow(cfg: AnalysisConfig, grid: dict, files: list[Path]) -> str:
    """One MLflow run with the settings, headline metrics and every output file; returns its id."""
    import mlflow

    from splitlab.platform.tracking import provenance_tags, use_tracking

    use_tracking(cfg.tracking_uri, cfg.experiment)
    # nested under an open run of this process: the demo's parent run
    with mlflow.start_run(run_name=f"analyze-{cfg.model}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**provenance_tags(), "splitlab.kind": "analysis"})
        mlflow.log_params({"model": cfg.model, "corpus": cfg.corpus, "tokens": grid["tokens"],
                           "window": cfg.window, "seeds": cfg.seeds, "channels": ",".join(cfg.channels),
                           "tasks": ",".join(cfg.tasks) or "none", "task_items": cfg.task_items,
                           "privacy": cfg.privacy,
                           "splits": ",".join(map(str, grid["splits"])),
                           **{f"channel.{k}": v for k, v in cfg.channel_settings.items()}})
        mlflow.log_metric("quality/ppl_clean", grid["ppl_clean"])
        for task, info in grid.get("tasks", {}).items():
            mlflow.log_metric(f"quality/acc_clean/{task}", info["acc_clean"])
        mlflow.log_metric("time/wall_s", grid["wall_time_s"])
        for r in grid.get("privacy", {}).get("clean", []):
            for attack in ("nn", "learned"):
                mlflow.log_metric(f"privacy/leak_{attack}_top1_clean", r[f"leak_{attack}_top1"], step=r["k"])
        for s in summarise(grid):
            tag = f"{s['channel']}_{s['param']}_{s['value']:g}".replace(".", "p")
            mlflow.log_metric(f"quality/best_ppl/{tag}", s["best_ppl"])
            mlflow.log_metric(f"quality/best_k/{tag}", s["best_k"])
            for task in grid.get("tasks", {}):
                mlflow.log_metric(f"quality/best_acc/{task}/{tag}", s[f"{task}_best_acc"])
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id


def run_analysis(cfg: AnalysisConfig, progress: bool = True, log: bool = True) -> tuple[dict, list[Path], str | None]:
    """Compute the grid, write the outputs to ``cfg.out``, log them to MLflow."""
    grid = compute_grid(cfg, progress)
    files = write_outputs(grid, Path(cfg.out))
    run_id = log_to_mlflow(cfg, grid, files) if log else None
    return grid, files, run_id
