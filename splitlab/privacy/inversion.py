"""Activation inversion: what an honest-but-curious edge recovers of the input tokens from what it receives.

The edge receives the hidden state after layer k, one vector per input token. Two attacks guess the
token at each position from its own vector:

- **nearest neighbour** (:class:`NearestNeighbourInverter`): the vocabulary rows of the model's input
  embedding matrix ranked by cosine similarity to the received vector. Exact at k = 0 when rows are
  distinct (the edge receives the embeddings themselves); it needs nothing but the public weights.
- **learned** (:class:`RidgeInverter`): a ridge regression from the received vector (standardised per
  channel, so a few huge activation channels do not dominate) to the token's input embedding, fitted
  on the attacker's own text pushed through the same split and channel, then the nearest neighbour of
  the prediction. The penalty is chosen on a held-out fifth of the fit text by mean squared error.
  Scored only on text it was not fitted on.

Both are linear, so they give a lower bound on what a stronger (non-linear) attacker could recover.
"""
from __future__ import annotations

import numpy as np
import torch

TOP = 5
"""Ranks each attack returns (top-1 and top-5 recovery)."""
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge penalties tried, relative to the mean eigenvalue of the standardised Gram matrix."""


def input_embeddings(model) -> torch.Tensor:
    """The model's input embedding matrix [V, H] (the vocabulary an attacker matches against)."""
    return model.model.get_input_embeddings().weight.detach().float()


class NearestNeighbourInverter:
    """Rank vocabulary rows by cosine similarity to each vector; ``embeddings`` [V, H]."""

    def __init__(self, embeddings: torch.Tensor, chunk: int = 1024):
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [vocab, hidden], got shape {tuple(embeddings.shape)}")
        self.embeddings = embeddings.float()  # [V, H]
        self.unit = torch.nn.functional.normalize(self.embeddings, dim=-1)  # [V, H]
        self.chunk = chunk

    @torch.no_grad()
    def top(self, vectors: torch.Tensor, n: int = TOP) -> torch.Tensor:
        """The ``n`` most similar token ids per vector: ``vectors`` [N, H] -> [N, n]."""
        if vectors.ndim != 2 or vectors.shape[1] != self.unit.shape[1]:
            raise ValueError(f"vectors must be [N, {self.unit.shape[1]}], got shape {tuple(vectors.shape)}")
        out = []
        for part in vectors.float().split(self.chunk):
            sims = torch.nn.functional.normalize(part, dim=-1) @ self.unit.T  # [chunk, V]
            out.append(sims.topk(n, dim=-1).indices)
        return torch.cat(out) if out else torch.empty((0, n), dtype=torch.long)


class RidgeInverter:
    """Linear map from received vectors [N, H] to input embeddings [N, H], then nearest neighbour.

    ``fit`` standardises the inputs with the fit set's statistics, picks the penalty from
    :data:`RIDGE_ALPHAS` on the last ``val_fraction`` of the rows, then refits on all of them.
    """

    def __init__(self, embeddings: torch.Tensor, alphas: tuple[float, ...] = RIDGE_ALPHAS, val_fraction: float = 0.2,
                 nn: NearestNeighbourInverter | None = None):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not alphas or min(alphas) <= 0:
            raise ValueError(f"alphas must be positive penalties, got {alphas}")
        self.embeddings = embeddings.float()
        self.nn = nn or NearestNeighbourInverter(self.embeddings)  # share one: the unit matrix is [V, H]
        self.alphas, self.val_fraction = tuple(alphas), val_fraction
        self.alpha: float | None = None

    @torch.no_grad()
    def fit(self, vectors: torch.Tensor, token_ids: torch.Tensor) -> "RidgeInverter":
        """Fit on received ``vectors`` [N, H] whose input tokens were ``token_ids`` [N]."""
        if vectors.ndim != 2 or token_ids.shape != vectors.shape[:1]:
            raise ValueError(f"need vectors [N, H] and token_ids [N], got {tuple(vectors.shape)} and "
                             f"{tuple(token_ids.shape)}")
        n_val = int(len(vectors) * self.val_fraction)
        if n_val < 1 or len(vectors) - n_val < 2:
            raise ValueError(f"need at least 3 fit vectors to hold out a validation part, got {len(vectors)}")
        x = vectors.double()
        y = self.embeddings[token_ids].double()  # [N, H] the targets
        best = min(self.alphas, key=lambda a: self._val_error(x, y, n_val, a))
        self.alpha = best
        self._solve(x, y, best)
        return self

    def _val_error(self, x, y, n_val, alpha) -> float:
        self._solve(x[:-n_val], y[:-n_val], alpha)
        return float(((self._predict(x[-n_val:]) - y[-n_val:]) ** 2).mean())

    def _solve(self, x: torch.Tensor, y: torch.Tensor, alpha: float) -> None:
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        self.y_mean = y.mean(0)
        xs = (x - self.mean) / self.std  # [N, H]
        gram = xs.T @ xs  # [H, H]
        penalty = alpha * float(torch.diagonal(gram).mean())  # scale-free: relative to the mean eigenvalue
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        self.weight = torch.linalg.solve(gram + penalty * eye, xs.T @ (y - self.y_mean))  # [H, H]

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight + self.y_mean

    @torch.no_grad()
    def top(self, vectors: torch.Tensor, n: int = TOP) -> torch.Tensor:
        """The ``n`` best token guesses per vector: ``vectors`` [N, H] -> [N, n]."""
        if self.alpha is None:
            raise RuntimeError("RidgeInverter.top needs fit() first")
        return self.nn.top(self._predict(vectors.double()).float(), n)


def recovered(guesses: torch.Tensor, token_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-5 hits [N] (bool) of ``guesses`` [N, >=5] against the true ``token_ids`` [N]."""
    hit = guesses == token_ids[:, None]  # [N, n]
    return hit[:, 0].numpy(), hit[:, :TOP].any(-1).numpy()
