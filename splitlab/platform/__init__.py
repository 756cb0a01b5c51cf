"""Experiments: analysis, specs, runners (local or cluster), Tune + MLflow, reports."""
