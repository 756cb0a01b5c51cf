"""What the edge can learn of the input from the activation it receives: inversion attacks and leakage per split."""

from splitlab.privacy.inversion import NearestNeighbourInverter, RidgeInverter, input_embeddings, recovered
from splitlab.privacy.leakage import (ATTACKS, Hits, Leakage, attack_hits, layer_states_at, leakage_grid,
                                      mean_ci, pooled, received, split_windows)

__all__ = ["ATTACKS", "Hits", "Leakage", "NearestNeighbourInverter", "RidgeInverter", "attack_hits", "mean_ci",
           "input_embeddings", "layer_states_at", "leakage_grid", "pooled", "received", "recovered", "split_windows"]
