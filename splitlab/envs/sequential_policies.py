"""Oracles and reference policies for the decode-phase problem, for one user or a cell of users.

Every policy maps a :class:`~splitlab.envs.cell.Cell` (its state at the current step) to actions [n];
each reads only what its name says it may:

- :class:`ClairvoyantPolicy`: replays a plan from :func:`clairvoyant_plan`, dynamic programming over the
  whole true SNR trace with the switching costs. Exact for one user on an idle edge. In a loaded cell it
  is a per-user DP that takes the queue's realised wait as given (the wait of the previous plan, a few
  damped rounds, the best kept): an achievable return, not an upper bound on the cell's optimum.
- :class:`InfoMatchedPolicy`: sees what a deployed policy sees (the noisy SNR estimates so far, the last
  edge wait) with the true quality and costs, and plans over the rest of the generation by DP on the
  Gauss-Markov forecast of the SNR (certainty equivalence: an approximation of the information-matched
  optimum, which is a POMDP).
- :class:`GreedyPolicy`: the best action per step with the true SNR and quality, ignoring the switching
  cost and the queue (``myopic``); variants that see the last wait (``queue``) or also price the switch
  from the previous k (``switch``) show which part of the gap needs lookahead.
- greedy on a surrogate (a :class:`GreedyPolicy` on a DecodeModel whose quality comes from a learned
  reward model, with the estimated SNR), each fixed k, random.

A policy trained in the single-user gymnasium env (:class:`~splitlab.envs.sequential.SequentialSplitEnv`,
e.g. by RLlib) is scored on the oracles' own traces with :func:`env_returns` next to :func:`idle_cell`,
the one-user cell whose episodes are the env's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from splitlab.envs.cell import Cell, CellConfig
from splitlab.envs.sequential import DecodeModel, SequentialSplitEnv


class CellPolicy(Protocol):
    def reset(self, cell: Cell) -> None: ...

    def act(self, cell: Cell) -> np.ndarray: ...


def _stage(model: DecodeModel, tokens, snr, budget, extra, edge_scale: float, first: bool, price=None):
    """Rewards and next-holds of every (prev action, holds, action) for n users: each [n, A, 2, A].

    ``price`` [n]: reward charged per second of edge work the user adds (the delay it causes others)."""
    n, n_act = snr.shape[0], len(model.ks)
    a = np.arange(n_act)[None, None, None, :]
    p = np.full((1, 1, 1, 1), -1) if first else np.arange(n_act)[None, :, None, None]
    h = np.array([False, True])[None, None, :, None]
    col = (slice(None), None, None, None)
    r = model.step(a, p, h, np.asarray(tokens, dtype=np.float64)[col], snr[col], budget[col],
                   np.asarray(extra, dtype=np.float64)[col], edge_scale)
    shape = (n, n_act, 2, n_act)
    reward = r.reward if price is None else r.reward - np.asarray(price)[col] * r.edge_work_s
    return np.broadcast_to(reward, shape), np.broadcast_to(r.holds, shape)


def solve_dp(model: DecodeModel, snr: np.ndarray, tokens: np.ndarray, budget: np.ndarray, extra: np.ndarray,
             edge_scale: float, prev0: np.ndarray, holds0: np.ndarray, price: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Optimal actions [S, n] and values [n] over S stages for n users, from state (prev0, holds0).

    ``snr``, ``tokens``, ``extra`` are [S, n] (the stage's SNR, context and edge wait); ``prev0`` < 0
    means the first step of a generation (nothing to migrate); ``price`` [S, n] charges edge work. The state is (previous action, whether
    the UE holds its boundary states): the migration cost depends on both, and nothing else carries over.
    """
    steps, n = snr.shape
    n_act = len(model.ks)
    users = np.arange(n)[:, None, None, None]
    value = np.zeros((n, n_act, 2))
    q_tables, holds_tables = [], []
    for s in range(steps - 1, -1, -1):
        p_s = None if price is None else price[s]
        reward, holds_next = _stage(model, tokens[s], snr[s], budget, extra[s], edge_scale, False, p_s)
        a_idx = np.arange(n_act)[None, None, None, :]
        q = reward + value[users, a_idx, holds_next.astype(np.int64)]  # [n, A, 2, A]
        if s == 0:
            r_first, h_first = _stage(model, tokens[0], snr[0], budget, extra[0], edge_scale, True, p_s)
            q_first = r_first + value[users, a_idx, h_first.astype(np.int64)]
            first = (prev0 < 0)[:, None, None, None]
            q = np.where(first, q_first, q)
            holds_next = np.where(first, h_first, holds_next)
        q_tables.append(q)
        holds_tables.append(holds_next)
        value = q.max(axis=-1)
    q_tables.reverse()
    holds_tables.reverse()
    actions = np.empty((steps, n), dtype=np.int64)
    rows = np.arange(n)
    p, h = np.maximum(prev0, 0), holds0.astype(np.int64)
    total = q_tables[0][rows, p, h].max(axis=-1)
    for s in range(steps):
        a = q_tables[s][rows, p, h].argmax(axis=-1)
        actions[s] = a
        h = holds_tables[s][rows, p, h, a].astype(np.int64)
        p = a
    return actions, total


class FixedPolicy:
    """Always candidate index ``a``."""

    def __init__(self, a: int) -> None:
        self.a = a

    def reset(self, cell: Cell) -> None:
        pass

    def act(self, cell: Cell) -> np.ndarray:
        return np.full(cell.n, self.a, dtype=np.int64)


class RandomPolicy:
    """A uniform candidate per user and step (its own seeded generator)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def reset(self, cell: Cell) -> None:
        self.rng = np.random.default_rng(self.seed)

    def act(self, cell: Cell) -> np.ndarray:
        return self.rng.integers(0, len(cell.model.ks), cell.n)


class GreedyPolicy:
    """Best immediate reward per user.

    ``sees``: ``myopic`` (true SNR, idle edge, no switching cost), ``queue`` (also the last per-token
    wait), ``switch`` (also the migration from the previous k). ``estimated=True`` uses the SNR estimate;
    ``model`` swaps the quality (e.g. a DecodeModel on a surrogate reward model).
    """

    def __init__(self, sees: str = "myopic", estimated: bool = False, model: DecodeModel | None = None) -> None:
        if sees not in ("myopic", "queue", "switch"):
            raise ValueError(f"sees must be 'myopic', 'queue' or 'switch', got {sees!r}")
        self.sees, self.estimated, self.model = sees, estimated, model

    def reset(self, cell: Cell) -> None:
        pass

    def act(self, cell: Cell) -> np.ndarray:
        m = self.model or cell.model
        snr = cell.snr_est() if self.estimated else cell.snr()
        a = np.arange(len(m.ks))[None, :]
        prev = cell.prev[:, None] if self.sees == "switch" else -1
        wait = _others_wait(cell)[:, None] if self.sees in ("queue", "switch") else 0.0
        r = m.step(a, prev, cell.holds[:, None], m.tokens_before(cell.steps_in())[:, None], snr[:, None],
                   cell.budget[:, None], wait, cell.edge_scale)
        return np.asarray(r.reward).argmax(axis=1)


def _others_wait(cell: Cell) -> np.ndarray:
    """Last step's per-token edge wait beyond the user's own work [n] (what it expects to meet again)."""
    return cell.others_wait_s


class InfoMatchedPolicy:
    """Plans by DP over the rest of the generation from what the UE knows (see the module docstring).

    ``horizon``: plan at most this many steps ahead (None: to the end of the generation)."""

    def __init__(self, horizon: int | None = None) -> None:
        self.horizon = horizon

    def reset(self, cell: Cell) -> None:
        pass

    def act(self, cell: Cell) -> np.ndarray:
        m, cfg = cell.model, cell.config.decode
        left = int(cfg.episode_len - cell.steps_in().min())
        steps = max(left if self.horizon is None else min(left, self.horizon), 1)
        est = cell.snr_est()
        j = np.arange(steps)[:, None]
        forecast = cell.mean + cfg.snr_corr**j * (est - cell.mean)  # [S, n] AR(1) mean forecast
        tokens = m.tokens_before(cell.steps_in() + j)
        extra = np.broadcast_to(_others_wait(cell), forecast.shape)
        actions, _ = solve_dp(m, forecast, tokens, cell.budget, extra, cell.edge_scale, cell.prev, cell.holds)
        return actions[0]


class ClairvoyantPolicy:
    """Replays a plan [T, n] computed with the whole future known (:func:`clairvoyant_plan`)."""

    def __init__(self, plan: np.ndarray) -> None:
        self.plan = plan

    def reset(self, cell: Cell) -> None:
        pass

    def act(self, cell: Cell) -> np.ndarray:
        return self.plan[cell.t]


def run_cell(cell: Cell, policy: CellPolicy, seed: int, record_wait: bool = False):
    """One episode of a fixed population (every user from step 0 to episode_len); per-user returns [n].

    With ``record_wait`` also the realised others' per-token wait [T, n] each user met and whether work
    carried over to the next step [T].
    """
    cfg = cell.config
    if cfg.join_prob or cfg.leave_prob or (cfg.initial_users not in (None, cfg.num_users)):
        raise ValueError("run_cell scores a fixed population: join_prob = leave_prob = 0 and every slot filled")
    cell.reset(seed)
    policy.reset(cell)
    steps = cfg.decode.episode_len
    returns = np.zeros(cell.n)
    waits = np.zeros((steps, cell.n))
    carry = np.zeros(steps, dtype=bool)
    for t in range(steps):
        r, *_ = cell.step(policy.act(cell))
        returns += r
        waits[t] = cell.others_wait_s
        carry[t] = cell.queue.backlog_s > 0
    return (returns, waits, carry) if record_wait else returns


def congestion_price(cell: Cell, carry: np.ndarray) -> np.ndarray:
    """Reward lost by the other users per second of edge work a user adds in each step [T] (fixed population).

    The work delays every other user's tokens by work / block_tokens in its step (batched decoding); when
    work carries over, it delays everyone again in each following step until the backlog clears.
    """
    m, n = cell.model, cell.n
    steps = len(carry)
    run = np.zeros(steps)
    for t in range(steps - 2, -1, -1):  # steps after t that still wait behind t's leftover work
        run[t] = (1.0 + run[t + 1]) if carry[t] else 0.0
    return cell.config.decode.w_l / (m.latency_ref_s * cell.block) * ((n - 1) + n * run)


def clairvoyant_plan(cell: Cell, seed: int, rounds: int = 4, damping: float = 0.5
                     ) -> tuple[np.ndarray, float, dict[str, float]]:
    """A plan [T, n] for a fixed population that knows every user's whole SNR trace.

    Candidates: every fixed k for all users, and rounds of per-user DP (exact switching costs) against
    the wait realised by the previous candidate, each user charged the delay its edge work causes the
    others (:func:`congestion_price`); from round 2 a random ``damping`` share of users adopts its new
    plan. Every candidate is run in the cell and the best is kept, so the figure is achievable: a lower
    bound on the clairvoyant optimum of the cell (on an idle edge the first DP round is exact).
    Returns (plan, its mean return per user, the mean return of every candidate).
    """
    m, cfg = cell.model, cell.config.decode
    steps = cfg.episode_len
    cell.reset(seed)
    exo = cell.exo  # the episode's draws (after a run the cell has rolled on to the next block)
    snr = exo.snr_db
    tokens = np.broadcast_to(m.tokens_before(np.arange(steps))[:, None], snr.shape)
    prev0, holds0 = np.full(cell.n, -1), np.ones(cell.n, dtype=bool)
    rng = np.random.default_rng(seed)
    scores: dict[str, float] = {}
    best_plan, best, start = None, -np.inf, None
    for a in range(len(m.ks)):
        plan = np.full((steps, cell.n), a)
        returns, waits, carry = run_cell(cell, ClairvoyantPolicy(plan), seed, record_wait=True)
        scores[f"fixed_{m.ks[a]}"] = float(returns.mean())
        if scores[f"fixed_{m.ks[a]}"] > best:
            best, best_plan, start = scores[f"fixed_{m.ks[a]}"], plan, (waits, carry)
    waits, carry = start
    plan = None
    for i in range(rounds):
        price = np.broadcast_to(congestion_price(cell, carry)[:, None], snr.shape)
        new, _ = solve_dp(m, snr, tokens, exo.budget, waits, cell.edge_scale, prev0, holds0, price)
        plan = new if plan is None else np.where((rng.random(cell.n) < damping)[None, :], new, plan)
        returns, waits, carry = run_cell(cell, ClairvoyantPolicy(plan), seed, record_wait=True)
        scores[f"dp_round_{i}"] = float(returns.mean())
        if scores[f"dp_round_{i}"] > best:
            best, best_plan = scores[f"dp_round_{i}"], plan.copy()
    return best_plan, best, scores


def policy_suite(model: DecodeModel, surrogate_model: DecodeModel | None, seed: int = 0
                 ) -> dict[str, Callable[[], CellPolicy]]:
    """Reference policies by name (factories), the oracles aside."""
    suite: dict[str, Callable[[], CellPolicy]] = {
        "info_matched": InfoMatchedPolicy,
        "greedy_myopic": lambda: GreedyPolicy("myopic"),
        "greedy_queue": lambda: GreedyPolicy("queue"),
        "greedy_switch_queue": lambda: GreedyPolicy("switch"),
        "random": lambda: RandomPolicy(seed),
    }
    if surrogate_model is not None:
        suite["greedy_surrogate"] = lambda: GreedyPolicy("myopic", estimated=True, model=surrogate_model)
    return suite


def idle_cell(env: SequentialSplitEnv) -> Cell:
    """The one-user cell whose episodes are ``env``'s: the same decode model, the same draws for a seed,
    and an edge at the env's own speed (the load that makes ``edge_scale`` 1) that never builds a backlog.

    So the oracles and reference policies, which act on a :class:`Cell`, meet exactly the episodes a
    policy acting in ``env`` meets (checked per seed by :func:`env_returns`).
    """
    m = env.model
    load = float(m.costs.edge_s_per_token[0]) / m.token_period_s  # one user at k = 0 asks for this share
    cell = Cell(CellConfig(num_users=1, queue={"load": load}, decode=env.config), model=m)
    if not np.isclose(cell.edge_scale, 1.0, rtol=1e-12):
        raise RuntimeError(f"the one-user cell's edge runs at {cell.edge_scale} x the env's speed, expected 1")
    return cell


def env_returns(env: SequentialSplitEnv, act: Callable[[np.ndarray], int], seeds: Sequence[int],
                cell: Cell | None = None) -> np.ndarray:
    """Returns [len(seeds)] of the policy ``act`` (observation -> action index) in ``env``, episode i
    starting from ``env.reset(seed=seeds[i])``.

    With ``cell`` (:func:`idle_cell` of ``env``): before each episode, checks that its draws (SNR
    deviations, estimation noise, mean SNR, UE budget) are the cell's for the same seed, i.e. that the
    policy meets the traces the oracles are scored on; raises RuntimeError where they differ.
    """
    out = np.zeros(len(seeds))
    for i, seed in enumerate(seeds):
        obs, _ = env.reset(seed=int(seed))
        if cell is not None:
            cell.reset(int(seed))
            for name in ("deviation_db", "est_noise_db", "mean_db", "budget"):
                if not np.array_equal(getattr(env.exo, name), getattr(cell.exo, name)):
                    raise RuntimeError(f"seed {seed}: the env's {name} differs from the cell's: not the oracles' trace")
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            out[i] += reward
            done = terminated or truncated
    return out
