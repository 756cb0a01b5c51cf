"""Score trained and reference policies on held-out channel traces with the true reward.

Every policy of a run is evaluated on the same episodes: the same held-out SNR traces (wireless
preset, drawn by ``splitlab.envs.held_out_traces`` from a seed apart from training's) or reset seeds
(paper preset, multi-user env), and the same true reward model (the real quality, never the
surrogate). :func:`score_vs_oracle` puts a return on the scale random = 0, oracle = 1.

The multi-user env has no reference policies of its own; here the oracle is a best-response search
per step on the true rewards (each UE in turn switches to its best split given the others', twice),
which is an upper reference rather than a proven optimum.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitlab.envs import SplitEnv, held_out_traces, reference_policies, rollout


@dataclass
class PolicyResult:
    """One policy over the held-out episodes."""

    name: str
    returns: list[float]
    channel: list[float] = field(default_factory=list)
    """Channel value at every step (true SNR in dB, or rho)."""
    ks: list[int] = field(default_factory=list)
    """Split chosen at every step."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def mean_k(self) -> float:
        return float(np.mean(self.ks)) if self.ks else float("nan")

    def summary(self) -> dict[str, float]:
        return {"return": self.mean, "return_std": float(np.std(self.returns)), "mean_k": self.mean_k,
                "episodes": float(len(self.returns))}


def score_vs_oracle(value: float, oracle: float, random: float) -> float:
    """``(value - random) / (oracle - random)``: 1 at the oracle, 0 at random (returns may be negative)."""
    gap = oracle - random
    return float((value - random) / gap) if abs(gap) > 1e-12 else float("nan")


def return_ratio(value: float, oracle: float) -> float:
    """The plain fraction of the oracle's return, oriented so that 1 is the oracle and less is worse:
    ``value / oracle`` for positive returns, ``oracle / value`` for negative ones (costs)."""
    if oracle > 0 and value > 0:
        return float(value / oracle)
    if oracle < 0 and value < 0:
        return float(oracle / value)
    return float("nan")


# -- single-user SplitEnv --------------------------------------------------------------------------
def evaluate_split_env(env: SplitEnv, policies: Mapping[str, Any], episodes: int, seed: int,
                       on_episode: Callable[[], None] | None = None) -> dict[str, PolicyResult]:
    """Each policy (a Policy or ``obs -> action``) on ``episodes`` held-out episodes of ``env``;
    ``on_episode`` is called after each (a progress bar)."""
    wireless = env.config.preset == "wireless"
    traces = held_out_traces(env.config, episodes, seed=seed) if wireless else None
    seeds = [int(seed) + i for i in range(episodes)]
    key = "channel/snr_db" if wireless else "channel/rho"
    out = {}
    for name, policy in policies.items():
        res = PolicyResult(name, [])
        for i, s in enumerate(seeds):
            ep = rollout(env, policy, seed=s, options={"trace": traces[i]} if wireless else None, keep_infos=True)
            res.returns.append(ep.return_)
            res.channel.extend(float(info[key]) for info in ep.infos)
            res.ks.extend(int(info["cost/k"]) for info in ep.infos)
            if on_episode:
                on_episode()
        out[name] = res
    return out


def split_env_baselines(env: SplitEnv, seed: int = 0) -> dict[str, Any]:
    """Every fixed k, random and the oracle (``splitlab.envs.reference_policies``)."""
    return reference_policies(env, seed=seed)


# -- multi-user env --------------------------------------------------------------------------------
MultiAct = Callable[[dict[str, np.ndarray], Any], dict[str, int]]


def multi_user_baselines(env: Any, seed: int = 0) -> dict[str, MultiAct]:
    """Fixed k for every UE (each candidate), random, and the best-response oracle."""
    rng = np.random.default_rng(seed)
    out: dict[str, MultiAct] = {}
    for i, k in enumerate(env.candidate_ks):
        out[f"fixed_k={k}"] = (lambda i: lambda obs, env: {aid: i for aid in obs})(i)
    out["random"] = lambda obs, env: {aid: int(rng.integers(len(env.candidate_ks))) for aid in obs}
    out["oracle"] = best_response_oracle
    return out


def _multi_rewards(env: Any, actions: Mapping[str, int]) -> float:
    """Sum of true rewards this step if the active UEs took ``actions`` (no env state changes)."""
    ks = {aid: env.candidate_ks[a] for aid, a in actions.items()}
    bandwidth = env.model.link.bandwidth_hz / len(ks)
    tail = float(sum(env.num_layers - k for k in ks.values()))
    return float(sum(env.model.outcome(env.users[aid], env.t, k, bandwidth, tail)[0].total for aid, k in ks.items()))


def best_response_oracle(obs: Mapping[str, np.ndarray], env: Any, rounds: int = 2) -> dict[str, int]:
    """Start from each UE's best split alone at the true SNR, then let each UE in turn switch to its best
    response given the others' splits (``rounds`` sweeps) on the summed true reward."""
    actions = {aid: int(np.argmax(env.model.action_rewards(env.users[aid], env.t))) for aid in env.users}
    for _ in range(rounds):
        changed = False
        for aid in list(actions):
            best, best_a = -np.inf, actions[aid]
            for a in range(len(env.candidate_ks)):
                value = _multi_rewards(env, {**actions, aid: a})
                if value > best + 1e-12:
                    best, best_a = value, a
            changed |= best_a != actions[aid]
            actions[aid] = best_a
        if not changed:
            break
    return {aid: actions[aid] for aid in obs}


def evaluate_multi_user(env: Any, policies: Mapping[str, MultiAct], episodes: int,
                        seed: int, on_episode: Callable[[], None] | None = None) -> dict[str, PolicyResult]:
    """Each policy ``(obs dict, env) -> action dict`` on the same reset seeds; return = summed reward of
    all UEs per episode; ``on_episode`` is called after each (a progress bar)."""
    out = {}
    for name, act in policies.items():
        res = PolicyResult(name, [])
        for i in range(episodes):
            obs, _ = env.reset(seed=int(seed) + i)
            total, done = 0.0, False
            while not done:
                actions = act({aid: o for aid, o in obs.items() if aid in env.users}, env)
                obs, rewards, terms, truncs, infos = env.step(actions)
                total += float(sum(rewards.values()))
                for aid, info in infos.items():
                    if "cost/k" in info:
                        res.channel.append(float(info["channel/snr_db"]))
                        res.ks.append(int(info["cost/k"]))
                done = terms.get("__all__", False) or truncs.get("__all__", False)
            res.returns.append(total)
            if on_episode:
                on_episode()
        out[name] = res
    return out


def module_multi_act(module: Any) -> MultiAct:
    """A trained shared module as a multi-user policy (greedy, one batch for all active UEs)."""
    from splitlab.mbrl.agents import greedy_actions

    def act(obs: Mapping[str, np.ndarray], env: Any) -> dict[str, int]:
        ids = list(obs)
        acts = greedy_actions(module, np.stack([obs[a] for a in ids]))
        return {aid: int(a) for aid, a in zip(ids, acts)}

    return act


# -- the k-vs-channel plot ---------------------------------------------------------------------------
def plot_k_vs_channel(results: Mapping[str, PolicyResult], path: str | Path, param: str = "snr_db",
                      title: str = "", names: tuple[str, ...] = ("policy", "oracle")) -> Path:
    """Chosen split against the channel: every step as a dot, the mean per channel bin as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"policy": "tab:blue", "oracle": "tab:orange"}
    for name in names:
        res = results.get(name)
        if res is None or not res.ks:
            continue
        x, y = np.asarray(res.channel), np.asarray(res.ks, float)
        ax.scatter(x, y + np.random.default_rng(0).uniform(-0.25, 0.25, y.size), s=4, alpha=0.25,
                   color=colors.get(name))
        edges = np.linspace(x.min(), x.max(), 13)
        idx = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
        centres, means = [], []
        for b in range(len(edges) - 1):
            if (idx == b).sum() >= 3:
                centres.append((edges[b] + edges[b + 1]) / 2)
                means.append(y[idx == b].mean())
        ax.plot(centres, means, marker="o", color=colors.get(name), label=f"{name} (mean per bin)")
    ax.set_xlabel("true SNR (dB)" if param == "snr_db" else "erasure probability rho")
    ax.set_ylabel("split point k (layers on the UE)")
    ax.set_title(title or "chosen split vs channel quality")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
