"""``SplitEnv``: choose where to split an LLM between a UE and an edge server, step by step."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from splitlab.envs.config import EPISODE_LEN, SplitEnvConfig
from splitlab.envs.reward_models import check_reward_model, make_reward_model
from splitlab.envs.rewards import RewardTerms, paper_k_max, paper_reward
from splitlab.envs.wireless import FEATURE_HIGH, FEATURE_LOW, UserState, WirelessModel


class SplitEnv(gym.Env):
    """Adaptive layer splitting of LLM inference over a wireless link.

    ## Description

    A UE runs the first k decoder layers of an L-layer LLM and sends the hidden state to an edge
    server over a noisy link; the edge runs the rest. Each step the agent picks the split for the
    next request. Two presets (``config.preset``):

    - ``paper``: the MDP of Chen et al. (arXiv 2406.02616) and its released code. The channel is an
      erasure channel with probability rho; moving the split drifts rho slightly (x(1 - 0.0005)
      deeper, x(1 + 0.0005) shallower); k stays in 1..K_max with K_max = round(10 / 32 * L).
    - ``wireless``: the SNR follows a trace from the channel dynamics (Gauss-Markov or path loss
      with mobility); the agent sees an estimate of it and trades perplexity against UE compute
      and end-to-end latency (UE compute + transmission + edge compute, see ``DeviceModel``).

    Perplexities come from the reward model (measured grid, live LLM, or a learned surrogate).

    ## Action Space

    - ``paper``, ``paper_actions="relative"``: ``Discrete(2 * max_move + 1)``; action a moves k by
      ``a - max_move`` (-4..+4 by default), clipped into 1..K_max.
    - ``paper``, ``paper_actions="absolute"``: ``Discrete(K_max)``; action a sets k = a + 1.
    - ``wireless``: ``Discrete(len(candidate_ks))``; action i sets k = candidate_ks[i].

    ## Observation Space

    - ``paper``: ``Box([0, 0], [1, 1], (2,), float32)``: ``(rho / rho_max, k / K_max)``.
    - ``wireless``: ``Box(low, high, (5,), float32)``:

      | index | feature     | value                                              | range   |
      |-------|-------------|----------------------------------------------------|---------|
      | 0     | snr_est     | (estimated SNR dB - snr_ref_db) / snr_scale_db     | [-5, 5] |
      | 1     | snr_trend   | mean change of the estimate per step over the last trend_window steps / snr_scale_db | [-5, 5] |
      | 2     | rate        | goodput at the estimated SNR (to 0.01 dB) / bandwidth / 10 | [0, 5] |
      | 3     | prev_k      | previous split / L (0 at reset)                    | [0, 1]  |
      | 4     | ue_budget   | fraction of UE compute free this episode           | [0, 1]  |

    ## Rewards

    - ``paper``: ``alpha * (PPL_ref - PPL_k) / PPL_ref + beta * (K_max - k) / K_max`` with PPL_k
      at the new (rho, k), PPL_ref the clean unsplit perplexity, alpha = 10, beta = 1.
    - ``wireless``: ``-w_q * log(PPL_k / PPL_clean) - w_c * k / L - w_l * latency / latency_ref``
      with PPL_k at the step's true SNR (see ``splitlab.envs.rewards``).

    ``info`` carries the terms and their inputs under namespaced keys (``quality/ppl``,
    ``latency/tx_s``, ``link/bytes``, ``reward/quality``, ``mbrl/real_evals``, ...).

    ## Starting State

    - ``paper``: rho ~ U(rho_range) (0.08..0.22), k ~ U{initial_k_range} (3..6 for K_max = 10).
      ``reset(options={"rho": r, "k": k})`` fixes either.
    - ``wireless``: a fresh SNR trace of ``episode_len`` steps from the dynamics, estimation noise,
      and a UE budget ~ U(ue_budget_range); previous k = 0. ``reset(options={"trace": snrs_db})``
      replays a given trace (held-out evaluation), ``options={"ue_budget": u}`` fixes the budget.

    ## Episode End

    After ``episode_len`` steps (5 for ``paper``, 50 for ``wireless``). The paper's fixed 5-step
    task reports ``terminated`` (as its released code's ``done``); the wireless episodes are a
    window of an ongoing process, so they report ``truncated``.

    ## Arguments

    ``SplitEnv(config)`` with a :class:`SplitEnvConfig` or a mapping of its fields (an RLlib
    ``env_config``), e.g. ``SplitEnv({"preset": "paper", "reward_model": {"kind": "grid",
    "path": "runs/analysis", "channel": "erasure"}})``. Keyword arguments override fields.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: SplitEnvConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = SplitEnvConfig.from_dict(config)
        self.config = cfg.replace(**overrides) if overrides else cfg
        self.reward_model = make_reward_model(self.config.reward_model)
        self.num_layers = self.reward_model.num_layers
        self.episode_len = self.config.episode_len or EPISODE_LEN[self.config.preset]
        self.t = 0
        if self.config.preset == "paper":
            self._init_paper()
        else:
            self._init_wireless()

    # == paper preset ==============================================================================
    def _init_paper(self) -> None:
        cfg = self.config
        self.k_max = paper_k_max(self.num_layers, cfg.k_max)
        if self.k_max > self.num_layers:
            raise ValueError(f"k_max must be at most the model's {self.num_layers} layers, got {self.k_max}")
        low, high = cfg.initial_k_range or (max(1, round(0.3 * self.k_max)), max(1, round(0.6 * self.k_max)))
        if high > self.k_max:
            raise ValueError(f"initial_k_range must lie in 1..k_max={self.k_max}, got {[low, high]}")
        self.initial_k_range = (low, high)
        check_reward_model(self.reward_model, "rho", range(1, self.k_max + 1), "the paper preset")
        self.ppl_ref = float(self.reward_model.ppl_clean)
        n_actions = 2 * cfg.max_move + 1 if cfg.paper_actions == "relative" else self.k_max
        self.action_space = gym.spaces.Discrete(n_actions)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.rho, self.k = float(cfg.rho_range[0]), low

    def transition(self, rho: float, k: int, action: int) -> tuple[float, int]:
        """Paper preset: the deterministic next (rho, k) after ``action`` (used by the oracle's planning)."""
        cfg = self.config
        a = int(action)
        new_k = k + a - cfg.max_move if cfg.paper_actions == "relative" else a + 1
        new_k = min(max(new_k, 1), self.k_max)
        if new_k > k:
            rho *= 1.0 - cfg.rho_drift
        elif new_k < k:
            rho *= 1.0 + cfg.rho_drift
        return min(max(rho, 0.0), cfg.rho_max), new_k

    def paper_terms(self, rho: float, k: int) -> tuple[RewardTerms, float]:
        """Paper preset: reward terms and PPL_k at (rho, k)."""
        ppl = self.reward_model.quality(k, rho)
        return paper_reward(ppl, self.ppl_ref, k, self.k_max, self.config.alpha, self.config.beta), ppl

    def _paper_obs(self) -> np.ndarray:
        return np.array([self.rho / self.config.rho_max, self.k / self.k_max], dtype=np.float32)

    # == wireless preset ===========================================================================
    def _init_wireless(self) -> None:
        self.model = WirelessModel(self.config, self.reward_model)
        self.candidate_ks = self.model.candidate_ks
        self.action_space = gym.spaces.Discrete(len(self.candidate_ks))
        self.observation_space = gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self.user: UserState | None = None

    def action_rewards(self) -> np.ndarray:
        """Wireless preset: [n_actions] reward each action would get now, from the true channel (oracle)."""
        if self.config.preset != "wireless" or self.user is None:
            raise RuntimeError("action_rewards needs the wireless preset after reset()")
        return self.model.action_rewards(self.user, self.t)

    # == gymnasium API =============================================================================
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        self.t = 0
        if self.config.preset == "paper":
            unknown = sorted(set(options) - {"rho", "k"})
            if unknown:
                raise ValueError(f"unknown reset options {unknown} for the paper preset; accepted: ['rho', 'k']")
            low, high = self.config.rho_range
            self.rho = float(self.np_random.uniform(low, high))
            self.k = int(self.np_random.integers(self.initial_k_range[0], self.initial_k_range[1] + 1))
            if "rho" in options:
                self.rho = float(options["rho"])
            if "k" in options:
                self.k = int(options["k"])
            if not (0.0 <= self.rho <= self.config.rho_max and 1 <= self.k <= self.k_max):
                raise ValueError(f"reset options need rho in [0, {self.config.rho_max}] and k in 1..{self.k_max}, "
                                 f"got rho={self.rho}, k={self.k}")
            return self._paper_obs(), {"channel/rho": self.rho, "cost/k": float(self.k)}
        unknown = sorted(set(options) - {"trace", "ue_budget"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown} for the wireless preset; accepted: ['trace', 'ue_budget']")
        trace = options.get("trace")
        if trace is not None and len(trace) < self.episode_len:
            raise ValueError(f"a reset trace needs at least episode_len={self.episode_len} SNRs, got {len(trace)}")
        # One extra step so that the final observation shows the next channel.
        self.user = self.model.draw_user(self.np_random, self.episode_len + 1, trace=trace)
        if "ue_budget" in options:
            budget = float(options["ue_budget"])
            if not 0.0 < budget <= 1.0:
                raise ValueError(f"ue_budget must be in (0, 1], got {budget}")
            self.user.ue_budget = budget
        return self.model.features(self.user, 0), {"channel/snr_db": float(self.user.snr_db[0])}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in 0..{self.action_space.n - 1}, got {action!r}")
        if self.config.preset == "paper":
            rho, k = self.transition(self.rho, self.k, int(action))
            terms, ppl = self.paper_terms(rho, k)
            info = {"channel/rho": rho, "cost/k": float(k), "quality/ppl": ppl, "quality/ppl_ref": self.ppl_ref,
                    **terms.as_metrics()}
            self.rho, self.k = rho, k
            self.t += 1
            obs, terminated, truncated = self._paper_obs(), self.t >= self.episode_len, False
        else:
            if self.user is None:
                raise RuntimeError("call reset() before step()")
            k = self.candidate_ks[int(action)]
            terms, info = self.model.outcome(self.user, self.t, k)
            self.user.prev_k = k
            self.t += 1
            obs, terminated, truncated = self.model.features(self.user, self.t), False, self.t >= self.episode_len
        info.update(self.reward_model.stats())
        return obs, float(terms.total), terminated, truncated, info
