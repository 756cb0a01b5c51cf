"""``splitlab report SWEEP``: a sweep's trials read back from MLflow, as a table and comparison plots.

A sweep is found by its tag ``splitlab.sweep`` (the name; the newest sweep id with that name when the
name was reused) or ``splitlab.sweep_id``. The swept params split into the network condition (every
swept param outside the algorithm sections: mean SNR, fading, bandwidth, users, reward weights) and
the method (algorithm, surrogate and training settings, a ``sweep.methods`` name). When a seed is swept
(``--aggregate seed``, the default then) it prints the mean and 95% t-interval over seeds per condition
and method, and draws learning curves with 95% bands over seeds (``seed_curves.png``, from each trial's
per-iteration history); otherwise (``--aggregate best``) it names the best trial per condition (highest
policy return), its return against the oracle's, how many real LLM evaluations it spent and which split
it chose. It writes ``trials.csv``, ``best_per_condition.csv``, ``seed_aggregate.csv``,
``seed_curves.csv`` and the plots, and logs the tables and plots to the sweep's MLflow parent run.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitlab.platform.tracking import TAG_SWEEP, TAG_SWEEP_ID

METHOD_SECTIONS = ("algorithm", "surrogate", "mbrl", "training", "train", "dyna", "ppo", "dqn", "seed", "mode", "method")
"""Top-level spec sections whose swept params describe the method, not the network condition."""
RETURN_KEYS = ("policy/return", "eval/return", "policy/eval_return")
ORACLE_KEYS = ("oracle/return", "baseline/oracle_return", "eval/oracle_return", "policy/oracle_return")
FRACTION_KEYS = ("policy/return_vs_oracle", "eval/return_vs_oracle")
"""Score on the random-to-oracle scale: random = 0, oracle = 1 (what the training logs)."""
RATIO_KEYS = ("policy/return_ratio",)
"""Plain return / oracle return."""
EVALS_KEYS = ("mbrl/real_evals", "mbrl/real_evaluations")
K_KEYS = ("policy/mean_k", "cost/ue_layers", "policy/k_mean")
"""Metric names looked up in order (the first one a run has is used)."""
CURVE_KEYS = ("policy/return_vs_oracle", "policy/return", "policy/train_return")
"""Per-iteration metrics drawn as learning curves over seeds: the first one the trials log at 2+ steps."""


@dataclass
class TrialRow:
    """One trial as the report sees it."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    condition: tuple = ()
    method: tuple = ()
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Per-iteration values of CURVE_KEYS and the real-evaluation count: metric -> [(step, value)]."""

    def first(self, keys: Sequence[str]) -> float | None:
        for k in keys:
            if k in self.metrics and math.isfinite(self.metrics[k]):
                return float(self.metrics[k])
        return None

    @property
    def ret(self) -> float | None:
        return self.first(RETURN_KEYS)

    @property
    def oracle(self) -> float | None:
        return self.first(ORACLE_KEYS)

    @property
    def fraction(self) -> float | None:
        return self.first(FRACTION_KEYS)

    @property
    def ratio(self) -> float | None:
        ratio = self.first(RATIO_KEYS)
        if ratio is None and self.ret is not None and self.oracle not in (None, 0.0):
            ratio = self.ret / self.oracle
        return ratio

    @property
    def real_evals(self) -> float | None:
        return self.first(EVALS_KEYS)

    @property
    def mean_k(self) -> float | None:
        return self.first(K_KEYS)


@dataclass
class SweepReport:
    """Everything ``splitlab report`` prints and writes."""

    sweep: str
    sweep_id: str
    condition_keys: list[str]
    method_keys: list[str]
    trials: list[TrialRow] = field(default_factory=list)

    @property
    def seed_keys(self) -> list[str]:
        """Swept params that are seeds (last name ``seed``): repetitions, not methods."""
        return [k for k in self.method_keys if _short_key(k) == "seed"]

    def aggregate_by_seed(self) -> list[dict[str, Any]]:
        """Per (condition, method without the seed): n finished seeds, mean and 95% t-interval half-width of
        the score, the return and the real evaluations, in sorted order."""
        from splitlab.platform.statistics import ci95

        keep = [i for i, k in enumerate(self.method_keys) if k not in self.seed_keys]
        groups: dict[tuple, list[TrialRow]] = {}
        for t in self.trials:
            if t.status == "FINISHED" and t.ret is not None:
                groups.setdefault((t.condition, tuple(t.method[i] for i in keep)), []).append(t)
        rows = []
        for (condition, method), ts in sorted(groups.items(), key=lambda kv: (_sort_key(kv[0][0]), _sort_key(kv[0][1]))):
            row: dict[str, Any] = {"condition": condition, "method": method, "n": len(ts),
                                   "seeds": sorted(str(t.method[i]) for t in ts for i, k in enumerate(self.method_keys)
                                                   if k in self.seed_keys)}
            for name, values in (("score", [_score(t) for t in ts]), ("return", [t.ret for t in ts]),
                                 ("real_evals", [t.real_evals for t in ts if t.real_evals is not None])):
                row[f"{name}_mean"] = float(sum(values) / len(values)) if values else None
                row[f"{name}_ci95"] = ci95(values) if values else None
            rows.append(row)
        return rows

    def curve_key(self) -> str | None:
        """The learning-curve metric: the first of CURVE_KEYS that some finished trial logged at 2+ steps."""
        for key in CURVE_KEYS:
            if any(len(t.history.get(key, ())) >= 2 for t in self.trials if t.status == "FINISHED"):
                return key
        return None

    def aggregate_curves(self) -> list[dict[str, Any]]:
        """Learning curves per (condition, method without the seed): at every step any seed logged, the mean
        and 95% t-interval half-width of ``curve_key()`` over the seeds that logged it (``n`` of them), and
        the mean real evaluations spent by then (None where no trial logs them)."""
        from splitlab.platform.statistics import ci95

        key = self.curve_key()
        if key is None:
            return []
        keep = [i for i, k in enumerate(self.method_keys) if k not in self.seed_keys]
        groups: dict[tuple, list[TrialRow]] = {}
        for t in self.trials:
            if t.status == "FINISHED" and t.history.get(key):
                groups.setdefault((t.condition, tuple(t.method[i] for i in keep)), []).append(t)
        out = []
        for (condition, method), ts in sorted(groups.items(), key=lambda kv: (_sort_key(kv[0][0]), _sort_key(kv[0][1]))):
            per_step: dict[int, list[float]] = {}
            evals: dict[int, list[float]] = {}
            for t in ts:
                for step, value in t.history[key]:
                    per_step.setdefault(int(step), []).append(float(value))
                for step, value in t.history.get(EVALS_KEYS[0], ()):
                    evals.setdefault(int(step), []).append(float(value))
            steps = sorted(per_step)
            out.append({"condition": condition, "method": method, "metric": key, "step": steps,
                        "n": [len(per_step[s]) for s in steps],
                        "mean": [float(sum(per_step[s]) / len(per_step[s])) for s in steps],
                        "ci95": [ci95(per_step[s]) for s in steps],
                        "real_evals_mean": [float(sum(evals[s]) / len(evals[s])) if s in evals else None
                                            for s in steps]})
        return out

    def best_per_condition(self) -> list[TrialRow]:
        """The highest-return finished trial for each network condition, conditions in sorted order."""
        groups: dict[tuple, list[TrialRow]] = {}
        for t in self.trials:
            if t.status == "FINISHED" and t.ret is not None:
                groups.setdefault(t.condition, []).append(t)
        return [max(groups[c], key=lambda t: t.ret) for c in sorted(groups, key=_sort_key)]


def _sort_key(values: tuple) -> tuple:
    return tuple((0, float(v), "") if _numeric(v) else (1, 0.0, str(v)) for v in values)


def _numeric(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def find_runs(sweep: str, tracking_uri: str | None = None, all_ids: bool = False):
    """MLflow runs of a sweep (by name, newest sweep id unless ``all_ids``, or by sweep id)."""
    from mlflow.tracking import MlflowClient

    from splitlab.platform.tracking import tracking_uri as resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = []
    for tag in (TAG_SWEEP_ID, TAG_SWEEP):
        runs = _search_all(client, experiments, f"tags.`{tag}` = '{sweep}'")
        if runs:
            break
    if not runs:
        raise ValueError(f"no MLflow runs tagged {TAG_SWEEP} or {TAG_SWEEP_ID} = {sweep!r} in {client.tracking_uri}; "
                         "check the name (sweep.name in the spec) and --tracking-uri")
    ids = {r.data.tags.get(TAG_SWEEP_ID) for r in runs}
    if len(ids) > 1 and not all_ids:
        newest = max(runs, key=lambda r: r.info.start_time or 0).data.tags.get(TAG_SWEEP_ID)
        runs = [r for r in runs if r.data.tags.get(TAG_SWEEP_ID) == newest]
    return runs


def _search_all(client, experiments: list[str], filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs(experiments, filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def build_report(sweep: str, tracking_uri: str | None = None, by: Sequence[str] | None = None,
                 all_ids: bool = False) -> SweepReport:
    """Read the sweep's runs and split their params into network condition and method."""
    runs = find_runs(sweep, tracking_uri, all_ids)
    swept = sorted({k for r in runs for k in r.data.params})
    varying = [k for k in swept if len({r.data.params.get(k) for r in runs}) > 1] or swept
    if by:
        unknown = [k for k in by if k.replace(".", "/") not in swept]
        if unknown:
            raise ValueError(f"--by {unknown} are not swept params of {sweep!r}; swept: "
                             f"{[k.replace('/', '.') for k in swept]}")
        condition_keys = [k.replace(".", "/") for k in by]
    else:
        condition_keys = [k for k in varying if k.split("/", 1)[0] not in METHOD_SECTIONS]
    method_keys = [k for k in varying if k not in condition_keys]
    trials = []
    for r in runs:
        params = dict(r.data.params)
        trials.append(TrialRow(run_id=r.info.run_id, run_name=r.info.run_name or r.info.run_id,
                               status=r.info.status, params=params, metrics=dict(r.data.metrics),
                               condition=tuple(_typed(params.get(k)) for k in condition_keys),
                               method=tuple(_typed(params.get(k)) for k in method_keys)))
    trials.sort(key=lambda t: (_sort_key(t.condition), _sort_key(t.method)))
    tags = runs[0].data.tags
    report = SweepReport(sweep=tags.get(TAG_SWEEP, sweep), sweep_id=tags.get(TAG_SWEEP_ID, "?"),
                         condition_keys=condition_keys, method_keys=method_keys, trials=trials)
    if report.seed_keys:  # learning curves over seeds: each trial's per-iteration history
        from mlflow.tracking import MlflowClient

        from splitlab.platform.tracking import tracking_uri as resolve_uri

        client = MlflowClient(tracking_uri=resolve_uri(tracking_uri))
        for t in trials:
            for key in (*CURVE_KEYS, EVALS_KEYS[0]):
                if key in t.metrics:
                    t.history[key] = sorted((m.step, m.value) for m in client.get_metric_history(t.run_id, key))
    return report


def _typed(v: str | None) -> Any:
    if v is None:
        return "-"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _short_key(k: str) -> str:
    return k.rsplit("/", 1)[-1]


AGGREGATES = ("seed", "best")
"""``--aggregate``: mean +- 95% CI over seeds per condition and method, or the best trial per condition."""


def default_aggregate(report: SweepReport) -> str:
    """``seed`` when the sweep swept a seed, else ``best``."""
    return "seed" if report.seed_keys else "best"


def format_seed_table(report: SweepReport) -> list[str]:
    """Mean +- 95% CI (Student t over seeds) of the score and return per condition and method."""
    cond = [_short_key(k) for k in report.condition_keys]
    meth = [_short_key(k) for k in report.method_keys if k not in report.seed_keys]
    head = cond + meth + ["n seeds", "score", "+-95%", "return", "+-95%", "real evals"]
    rows = [[_fmt(v) for v in r["condition"] + r["method"]] + [
        str(r["n"]), _fmt(r["score_mean"], ".3f"), _fmt(r["score_ci95"], ".3f"), _fmt(r["return_mean"]),
        _fmt(r["return_ci95"]), _fmt(r["real_evals_mean"], ".0f")] for r in report.aggregate_by_seed()]
    return ["", f"mean over seeds per network condition and method ({', '.join(report.seed_keys)}; "
                "+-95%: Student-t interval half-width)", *_table(head, rows)]


def format_tables(report: SweepReport, aggregate: str | None = None) -> str:
    """The seed aggregate (default when the sweep has seeds) or the best trial per condition, then every
    trial: plain text for the terminal."""
    aggregate = aggregate or default_aggregate(report)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
    if aggregate == "seed" and not report.seed_keys:
        raise ValueError(f"--aggregate seed needs a swept seed; {report.sweep!r} sweeps "
                         f"{[k.replace('/', '.') for k in report.condition_keys + report.method_keys]}")
    lines = [f"sweep {report.sweep} (id {report.sweep_id}): {len(report.trials)} trials, "
             f"{sum(t.status == 'FINISHED' for t in report.trials)} finished"]
    if aggregate == "seed":
        lines += format_seed_table(report)
    cond = [_short_key(k) for k in report.condition_keys]
    meth = [_short_key(k) for k in report.method_keys]
    head = cond + ["best method" if meth else "trial", "return", "oracle", "ret/oracle", "score", "real evals",
                   "mean k"]
    rows = []
    for t in report.best_per_condition():
        method = ",".join(f"{n}={_fmt(v)}" for n, v in zip(meth, t.method)) if meth else t.run_name
        rows.append([_fmt(v) for v in t.condition] + [method, _fmt(t.ret), _fmt(t.oracle), _fmt(t.ratio, ".3f"),
                                                      _fmt(t.fraction, ".3f"), _fmt(t.real_evals, ".0f"),
                                                      _fmt(t.mean_k, ".2f")])
    if aggregate == "best":
        lines += ["", "best split policy per network condition (highest held-out return)", *_table(head, rows)]
    head = cond + meth + ["status", "return", "ret/oracle", "score", "real evals", "mean k"]
    rows = [[_fmt(v) for v in t.condition + t.method] + [t.status, _fmt(t.ret), _fmt(t.ratio, ".3f"),
                                                          _fmt(t.fraction, ".3f"), _fmt(t.real_evals, ".0f"),
                                                          _fmt(t.mean_k, ".2f")]
            for t in report.trials]
    lines += ["", "all trials", *_table(head, rows),
              "", "score: held-out return on the random (0) to oracle (1) scale; ret/oracle: plain return ratio; "
                  "real evals: real LLM evaluations training used; mean k: the policy's mean split point"]
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]


def write_outputs(report: SweepReport, out: Path) -> list[Path]:
    """trials.csv, best_per_condition.csv, seed_aggregate.csv (a sweep with seeds) and the comparison plots;
    returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "trials.csv", out / "best_per_condition.csv"]
    if report.seed_keys:
        files.append(out / "seed_aggregate.csv")
        rows = report.aggregate_by_seed()
        with files[-1].open("w", newline="") as f:
            writer = csv.writer(f)
            stats = ["n", "seeds", "score_mean", "score_ci95", "return_mean", "return_ci95", "real_evals_mean",
                     "real_evals_ci95"]
            writer.writerow([*report.condition_keys, *(k for k in report.method_keys if k not in report.seed_keys),
                             *stats])
            for r in rows:
                writer.writerow([*r["condition"], *r["method"], *(r[s] if s != "seeds" else " ".join(r[s])
                                                                  for s in stats)])
        curves = report.aggregate_curves()
        if curves:
            files.append(out / "seed_curves.csv")
            with files[-1].open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([*report.condition_keys, *(k for k in report.method_keys if k not in report.seed_keys),
                                 "metric", "step", "n", "mean", "ci95", "real_evals_mean"])
                for c in curves:
                    for i, step in enumerate(c["step"]):
                        writer.writerow([*c["condition"], *c["method"], c["metric"], step, c["n"][i], c["mean"][i],
                                         c["ci95"][i], c["real_evals_mean"][i]])
    metric_keys = sorted({k for t in report.trials for k in t.metrics})
    for path, trials in ((files[0], report.trials), (files[1], report.best_per_condition())):
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run_id", "run_name", "status", *report.condition_keys, *report.method_keys,
                             *metric_keys])
            for t in trials:
                writer.writerow([t.run_id, t.run_name, t.status, *t.condition, *t.method,
                                 *(t.metrics.get(k, "") for k in metric_keys)])
    return files + plot_report(report, out)


def log_to_parent(report: SweepReport, files: Sequence[Path], tracking_uri: str | None = None) -> str | None:
    """Log the report's tables (``mlflow.log_table``: trials and the seed aggregate) and files to the sweep's
    parent run (tag ``splitlab.sweep_parent``); returns its id, or None for a sweep from before parent runs."""
    from mlflow.tracking import MlflowClient

    from splitlab.platform.tracking import TAG_SWEEP_PARENT
    from splitlab.platform.tracking import tracking_uri as resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri))
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=f"tags.`{TAG_SWEEP_PARENT}` = '{report.sweep_id}'",
                               max_results=1)
    if not found:
        return None
    run_id = found[0].info.run_id
    trials = {"run_id": [t.run_id for t in report.trials], "status": [t.status for t in report.trials],
              **{k: [str(v) for v in col] for k, col in zip(report.condition_keys + report.method_keys,
                                                            zip(*[t.condition + t.method for t in report.trials]))},
              "return": [t.ret for t in report.trials], "score": [t.fraction for t in report.trials],
              "real_evals": [t.real_evals for t in report.trials]}
    client.log_table(run_id, trials, "report/trials.json")
    if report.seed_keys:
        rows = report.aggregate_by_seed()
        table = {k.replace("/", "."): [str(r["condition"][i]) for r in rows] for i, k in enumerate(report.condition_keys)}
        table.update({k.replace("/", "."): [str(r["method"][i]) for r in rows]
                      for i, k in enumerate(k for k in report.method_keys if k not in report.seed_keys)})
        table.update({s: [r[s] for r in rows] for s in ("n", "score_mean", "score_ci95", "return_mean", "return_ci95")})
        client.log_table(run_id, table, "report/seed_aggregate.json")
        curves = report.aggregate_curves()
        if curves:
            names = [k.replace("/", ".") for k in report.condition_keys + report.method_keys if k not in report.seed_keys]
            flat = [(c, i) for c in curves for i in range(len(c["step"]))]
            table = {n: [str((c["condition"] + c["method"])[j]) for c, _ in flat] for j, n in enumerate(names)}
            table.update({s: [c[s] if s == "metric" else c[s][i] for c, i in flat]
                          for s in ("metric", "step", "n", "mean", "ci95", "real_evals_mean")})
            client.log_table(run_id, table, "report/seed_curves.json")
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")
    return run_id


def _score(t: TrialRow) -> float:
    for v in (t.fraction, t.ratio, t.ret):
        if v is not None:
            return v
    return float("nan")


def _score_label(trials: Sequence[TrialRow]) -> str:
    if any(t.fraction is not None for t in trials):
        return "score (random 0, oracle 1)"
    return "return / oracle return" if any(t.ratio is not None for t in trials) else "return"


def plot_report(report: SweepReport, out: Path) -> list[Path]:
    """return_vs_oracle.png (best per condition), one line plot per numeric condition param, evals_vs_return.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    best = report.best_per_condition()
    if best:
        labels = [",".join(f"{_short_key(k)}={_fmt(v)}" for k, v in zip(report.condition_keys, t.condition)) or t.run_name
                  for t in best]
        values = [_score(t) for t in best]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(best) + 2), 3.6))
        ax.bar(range(len(best)), values, color="tab:blue")
        if _score_label(best) != "return":
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="oracle")
        ax.set_xticks(range(len(best)), labels, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(_score_label(best))
        ax.set_title(f"{report.sweep}: best policy per network condition")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
        fig.tight_layout()
        files.append(out / "return_vs_oracle.png")
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    finished = [t for t in report.trials if t.status == "FINISHED" and t.ret is not None]
    for i, key in enumerate(report.condition_keys):
        if not finished or not all(_numeric(t.condition[i]) for t in finished):
            continue
        others = [j for j in range(len(report.condition_keys)) if j != i]
        series: dict[tuple, list[TrialRow]] = {}
        for t in finished:
            series.setdefault(tuple(t.condition[j] for j in others) + t.method, []).append(t)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for label, ts in sorted(series.items(), key=lambda kv: _sort_key(kv[0])):
            ts = sorted(ts, key=lambda t: float(t.condition[i]))
            names = [_short_key(report.condition_keys[j]) for j in others] + [_short_key(k) for k in report.method_keys]
            ax.plot([float(t.condition[i]) for t in ts], [_score(t) for t in ts],
                    marker="o", label=",".join(f"{n}={_fmt(v)}" for n, v in zip(names, label)) or "trials")
        ax.set_xlabel(key.replace("/", "."))
        ax.set_ylabel(_score_label(finished))
        ax.set_title(f"{report.sweep}: policy vs {_short_key(key)}")
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(out / f"vs_{_short_key(key)}.png")
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    if report.seed_keys:
        files += plot_seed_aggregate(report, out)
    with_evals = [t for t in finished if t.real_evals is not None]
    if with_evals:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.scatter([t.real_evals for t in with_evals], [_score(t) for t in with_evals])
        ax.set_xlabel("real LLM evaluations")
        ax.set_ylabel(_score_label(with_evals))
        ax.set_title(f"{report.sweep}: evaluation cost vs return")
        if max(t.real_evals for t in with_evals) > 10 * max(1.0, min(t.real_evals for t in with_evals)):
            ax.set_xscale("symlog")
        fig.tight_layout()
        files.append(out / "evals_vs_return.png")
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    return files


def _group_label(report: SweepReport, condition: tuple, method: tuple) -> str:
    names = [_short_key(k) for k in report.condition_keys] + [_short_key(k) for k in report.method_keys
                                                              if k not in report.seed_keys]
    return ",".join(f"{n}={_fmt(v)}" for n, v in zip(names, condition + method)) or "trials"


def plot_seed_aggregate(report: SweepReport, out: Path) -> list[Path]:
    """seed_aggregate.png (score mean +- 95% CI per condition and method) and, when the trials log per
    iteration, seed_curves.png (mean curve with a 95% band over seeds, against iterations and, where
    logged, real LLM evaluations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    rows = report.aggregate_by_seed()
    if rows:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.8))
        ax.bar(range(len(rows)), [r["score_mean"] for r in rows], yerr=[r["score_ci95"] or 0.0 for r in rows],
               capsize=4, color="tab:blue")
        ax.set_xticks(range(len(rows)), [f"{_group_label(report, r['condition'], r['method'])}\n(n={r['n']})"
                                         for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(_score_label(report.trials) + ", mean +- 95% CI")
        ax.set_title(f"{report.sweep}: mean over seeds per method")
        fig.tight_layout()
        files.append(out / "seed_aggregate.png")
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    curves = report.aggregate_curves()
    if curves:
        with_evals = any(v is not None for c in curves for v in c["real_evals_mean"])
        fig, axes = plt.subplots(1, 2 if with_evals else 1, figsize=(11 if with_evals else 6, 3.8), squeeze=False)
        for c in curves:
            label = _group_label(report, c["condition"], c["method"])
            mean, band = [float(v) for v in c["mean"]], [float(v) for v in c["ci95"]]
            lo, hi = [m - b for m, b in zip(mean, band)], [m + b for m, b in zip(mean, band)]
            xs = [(c["step"], "training iteration")]
            if with_evals:
                xs.append(([v if v is not None else float("nan") for v in c["real_evals_mean"]],
                           "real LLM evaluations (mean over seeds)"))
            for ax, (x, xlabel) in zip(axes[0], xs):
                line, = ax.plot(x, mean, marker=".", label=label)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"{curves[0]['metric']} (95% band over seeds)")
        if with_evals and max((v or 0.0) for c in curves for v in c["real_evals_mean"]) > 100:
            axes[0][1].set_xscale("symlog")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{report.sweep}: learning curves, mean over seeds")
        fig.tight_layout()
        files.append(out / "seed_curves.png")
        fig.savefig(files[-1], dpi=120)
        plt.close(fig)
    return files
