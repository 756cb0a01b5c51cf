"""`splitlab report`: the seed aggregate (mean +- 95% t-interval), the parent run it logs to, provenance tags."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from splitlab.platform.report import SweepReport, TrialRow, default_aggregate, format_tables, log_to_parent, write_outputs
from splitlab.platform.tracking import TAG_PARENT, TAG_SWEEP_PARENT, ensure_experiment, parent_run, provenance_tags


def _report(seeds=(0, 1, 2)) -> SweepReport:
    trials = []
    for snr in (0.0, 20.0):
        for lr in (0.001, 0.01):
            for seed in seeds:
                score = 0.1 * seed + (0.5 if snr else 0.2) + lr
                trials.append(TrialRow(f"r{snr}{lr}{seed}", "t", "FINISHED", {}, {
                    "policy/return": -1.0 + score, "policy/return_vs_oracle": score, "mbrl/real_evals": 10.0},
                    condition=(snr,), method=(lr, seed)))
    return SweepReport("s", "abc", ["env/dynamics/mean_db"], ["algorithm/lr", "seed"], trials)


def test_seed_aggregate_is_the_mean_and_t_interval_over_seeds(tmp_path):
    report = _report()
    assert report.seed_keys == ["seed"] and default_aggregate(report) == "seed"
    rows = report.aggregate_by_seed()
    assert len(rows) == 4 and all(r["n"] == 3 for r in rows)
    scores = np.array([0.1 * s + 0.2 + 0.001 for s in (0, 1, 2)])
    half = stats.t.ppf(0.975, 2) * scores.std(ddof=1) / np.sqrt(3)
    assert rows[0]["condition"] == (0.0,) and rows[0]["method"] == (0.001,)
    assert rows[0]["score_mean"] == pytest.approx(scores.mean()) and rows[0]["score_ci95"] == pytest.approx(half)
    text = format_tables(report)
    assert "mean over seeds" in text and "best split policy" not in text
    assert "best split policy" in format_tables(report, "best")
    files = write_outputs(report, tmp_path)
    assert (tmp_path / "seed_aggregate.csv").read_text().count("\n") == 5
    single = _report(seeds=(0,))
    single.method_keys = ["algorithm/lr"]
    single.trials = [TrialRow(t.run_id, t.run_name, t.status, {}, t.metrics, t.condition, t.method[:1])
                     for t in single.trials]
    assert default_aggregate(single) == "best"
    with pytest.raises(ValueError, match="needs a swept seed"):
        format_tables(single, "seed")
    assert files


def test_report_logs_tables_to_the_sweeps_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "e")
    parent = parent_run(uri, exp, "sweep", {TAG_SWEEP_PARENT: "abc"}, "s", {"source": "x.yaml"})
    assert parent_run(uri, exp, "sweep", {TAG_SWEEP_PARENT: "abc"}, "s") == parent  # found again on resume
    client = MlflowClient(tracking_uri=uri)
    child = client.create_run(exp, tags={TAG_PARENT: parent}).info.run_id
    tags = client.get_run(parent).data.tags
    assert tags["git.dirty"] in ("true", "false", "unknown") and tags["versions.mlflow"] == provenance_tags()["versions.mlflow"]
    assert {"versions.torch", "versions.ray", "versions.transformers", "git.commit"} <= set(tags)
    report = _report()
    files = write_outputs(report, tmp_path / "out")
    assert log_to_parent(report, files, uri) == parent
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/trials.json", "report/seed_aggregate.json", "report/seed_aggregate.csv"} <= logged
    assert client.get_run(child).data.tags[TAG_PARENT] == parent
