"""What the edge can learn of the input from the activation it receives: inversion attacks and leakage per split."""

from splitlab.privacy.inversion import NearestNeighbourInverter, RidgeInverter, input_embeddings, recovered
from splitlab.privacy.leakage import ATTACKS, Hits, Leakage, bootstrap_ci95, leakage_grid, pooled, split_windows

__all__ = ["ATTACKS", "Hits", "Leakage", "NearestNeighbourInverter", "RidgeInverter", "bootstrap_ci95",
           "input_embeddings", "leakage_grid", "pooled", "recovered", "split_windows"]
