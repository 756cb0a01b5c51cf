"""Configuration of :class:`~splitlab.envs.split_env.SplitEnv`: one validated dataclass, two presets.

Fields that only one preset reads are still validated, so a spec cannot carry a silent typo. Fields
left at ``None`` take the preset's default when the environment is built (they need the model depth).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from splitlab.channel import ChannelConfig, GaussMarkovSNR, PathLossMobility
from splitlab.channel.validation import check_choice, check_int, check_range, dataclass_from_mapping
from splitlab.envs.device import DeviceModel
from splitlab.envs.reward_models import RewardModel
from splitlab.envs.split_tables import SplitTable

PRESETS = ("paper", "wireless")
"""Accepted values of ``preset``."""
PRIVACY_MODES = ("constraint", "penalty")
"""Accepted values of ``privacy_mode``."""
PAPER_ACTIONS = ("relative", "absolute")
"""Accepted values of ``paper_actions``."""
DYNAMICS_KINDS: dict[str, type] = {"gauss_markov": GaussMarkovSNR, "path_loss": PathLossMobility}
"""``dynamics.kind`` -> the channel-dynamics class whose fields the rest of the mapping sets."""
EPISODE_LEN = {"paper": 5, "wireless": 50}
"""Default episode length per preset (the paper's episodes have 5 steps)."""

Dynamics = GaussMarkovSNR | PathLossMobility


def make_dynamics(spec: Mapping[str, Any] | Dynamics | None) -> Dynamics:
    """``{"kind": "gauss_markov" | "path_loss", **fields}`` -> the dynamics object (None: Gauss-Markov defaults)."""
    if spec is None:
        return GaussMarkovSNR()
    if isinstance(spec, (GaussMarkovSNR, PathLossMobility)):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"dynamics must be a mapping with a 'kind' in {sorted(DYNAMICS_KINDS)}, got {spec!r}")
    kind = check_choice("dynamics.kind", spec.get("kind", "gauss_markov"), sorted(DYNAMICS_KINDS))
    cls = DYNAMICS_KINDS[kind]
    args = {k: v for k, v in spec.items() if k != "kind"}
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"unknown dynamics keys {unknown} for kind {kind!r}; accepted keys: {['kind', *accepted]}")
    return cls(**args)


def _pair(name: str, value: Any, low: float, high: float, integer: bool = False) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [low, high], got {value!r}")
    if integer:
        lo, hi = (check_int(name, v, int(low), int(high)) for v in value)
    else:
        lo, hi = (float(check_range(name, v, low, high)) for v in value)
    if lo > hi:
        raise ValueError(f"{name} must have low <= high, got {list(value)}")
    return (lo, hi)


@dataclass
class SplitEnvConfig:
    """Everything that defines a :class:`SplitEnv`. Build from YAML/dicts with :meth:`from_dict`."""

    preset: str = "wireless"
    """MDP: ``paper`` (state (rho, k), relative moves, the paper's reward) or ``wireless``
    (channel features, a candidate k per step, quality-compute-latency reward)."""
    reward_model: Any = None
    """Where the perplexity comes from: a RewardModel, or ``{"kind": "grid" | "synthetic" | "live" | ..., ...}``
    (see ``splitlab.envs.reward_models``). Required."""
    episode_len: int | None = None
    """Steps per episode; None: 5 for ``paper``, 50 for ``wireless``."""

    # -- paper preset ---------------------------------------------------------------------------
    paper_actions: str = "relative"
    """``relative``: Discrete(2*max_move+1) moves k by -max_move..+max_move; ``absolute``:
    Discrete(K_max) picks k = action + 1 (what the released code does)."""
    max_move: int = 4
    """Largest move of k per step for relative actions (the paper: 4)."""
    k_max: int | None = None
    """Deepest split the UE may take, K_max; None: round(10 / 32 * L), the paper's 10 of 32 layers."""
    alpha: float = 10.0
    """Weight of the quality term (PPL_ref - PPL_k) / PPL_ref."""
    beta: float = 1.0
    """Weight of the load term (K_max - k) / K_max."""
    rho_range: tuple[float, float] = (0.08, 0.22)
    """Erasure probability at reset, drawn uniformly (the released code's range)."""
    rho_max: float = 0.3
    """Upper clip of rho and its normalisation in the observation."""
    rho_drift: float = 0.0005
    """Relative change of rho per move: x(1 - drift) when k grows, x(1 + drift) when it shrinks."""
    initial_k_range: tuple[int, int] | None = None
    """k at reset, drawn uniformly in [low, high]; None: round(0.3 K_max)..round(0.6 K_max) (3..6 for K_max 10)."""

    # -- wireless preset ------------------------------------------------------------------------
    candidate_ks: tuple[int, ...] | None = None
    """Split points the policy chooses from (action i picks candidate_ks[i]); None: every k the reward model scores."""
    w_q: float = 1.0
    """Weight of the quality term log(PPL_k / PPL_clean)."""
    w_c: float = 0.5
    """Weight of the UE-compute term k / L."""
    w_l: float = 0.5
    """Weight of the latency term latency / latency_ref."""
    latency_ref_s: float | None = None
    """Latency normaliser in seconds; None: the whole model on the UE at full budget (device.local_latency_s)."""
    channel: Any = None
    """The link (ChannelConfig or its fields) that sets payload size and rate; None: a Shannon-rate link
    (``awgn``, fp16, 20 MHz), or ``digital`` when the reward model's channel is a digital sweep."""
    dynamics: Any = None
    """SNR over an episode: ``{"kind": "gauss_markov" | "path_loss", ...fields}``; None: Gauss-Markov defaults."""
    device: Any = field(default_factory=DeviceModel)
    """Compute model (DeviceModel or its fields): UE and edge FLOP/s, params per layer, tokens per request."""
    snr_estimation_std_db: float = 1.0
    """The policy sees the SNR plus N(0, this^2) dB (pilot-based estimation error)."""
    trend_window: int = 3
    """Steps over which the SNR trend feature is averaged."""
    ue_budget_range: tuple[float, float] = (0.25, 1.0)
    """Fraction of UE compute free for this request, drawn per episode uniformly in this range (0, 1]."""
    snr_ref_db: float = 15.0
    """Observation normalisation: SNR feature = (SNR_est - snr_ref_db) / snr_scale_db."""
    snr_scale_db: float = 10.0
    """Observation normalisation scale in dB (also for the trend)."""
    privacy_table: Any = None
    """Token leakage per split (top-1 recovery in [0, 1]): a mapping k -> value, or {"path", "key"} reading a
    ``benchmarks/privacy_cost.py`` result or an ``analyze --privacy`` grid.json (see envs.split_tables); None: no
    privacy term."""
    privacy_budget: float = 1.0
    """Largest leakage a split may have (1: no limit); needs ``privacy_table`` when below 1."""
    privacy_mode: str = "constraint"
    """``constraint``: candidate splits whose leakage exceeds the budget leave the action set; ``penalty``: they
    stay and the reward loses ``w_p * (leakage - budget)``."""
    w_p: float = 10.0
    """Weight of the privacy penalty (``penalty`` mode)."""
    energy_table: Any = None
    """UE energy per split (any unit, e.g. mJ per token): a mapping k -> value or {"path", "key", "profile"};
    None: no energy term."""
    w_e: float = 0.0
    """Weight of the energy term ``energy_k / max(energy over the table)``; needs ``energy_table`` when > 0."""

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        if self.reward_model is None:
            raise ValueError("reward_model is required: a RewardModel or e.g. {'kind': 'grid', 'path': "
                             "'runs/analysis/grid.json', 'channel': 'awgn'} (or {'kind': 'synthetic'} for a stand-in)")
        if not isinstance(self.reward_model, (Mapping, RewardModel)):
            raise ValueError(f"reward_model must be a RewardModel or a mapping with a 'kind', got {self.reward_model!r}")
        if self.episode_len is not None:
            check_int("episode_len", self.episode_len, 1)
        check_choice("paper_actions", self.paper_actions, PAPER_ACTIONS)
        check_int("max_move", self.max_move, 1)
        if self.k_max is not None:
            check_int("k_max", self.k_max, 1)
        check_range("alpha", self.alpha, 0.0)
        check_range("beta", self.beta, 0.0)
        check_range("rho_max", self.rho_max, 0.0, 1.0, low_open=True)
        self.rho_range = _pair("rho_range", self.rho_range, 0.0, self.rho_max)
        check_range("rho_drift", self.rho_drift, 0.0, 1.0, high_open=True)
        if self.initial_k_range is not None:
            self.initial_k_range = _pair("initial_k_range", self.initial_k_range, 1, 10**6, integer=True)
        if self.candidate_ks is not None:
            if isinstance(self.candidate_ks, (str, bytes)) or not hasattr(self.candidate_ks, "__iter__"):
                raise ValueError(f"candidate_ks must be a list of split points, got {self.candidate_ks!r}")
            ks = tuple(check_int("candidate_ks", k, 0) for k in self.candidate_ks)
            if not ks:
                raise ValueError("candidate_ks must list at least one split point (or be null for every k), got []")
            if len(set(ks)) != len(ks):
                raise ValueError(f"candidate_ks must not repeat a split point, got {list(ks)}")
            self.candidate_ks = ks
        for name in ("w_q", "w_c", "w_l"):
            check_range(name, getattr(self, name), 0.0)
        if self.latency_ref_s is not None:
            check_range("latency_ref_s", self.latency_ref_s, 0.0, low_open=True)
        if self.channel is not None and not isinstance(self.channel, ChannelConfig):
            self.channel = ChannelConfig.from_dict(self.channel)
        self.dynamics = make_dynamics(self.dynamics)
        self.device = DeviceModel.from_dict(self.device)
        check_range("snr_estimation_std_db", self.snr_estimation_std_db, 0.0)
        check_int("trend_window", self.trend_window, 1)
        self.ue_budget_range = _pair("ue_budget_range", self.ue_budget_range, 0.0, 1.0)
        if self.ue_budget_range[0] <= 0.0:
            raise ValueError(f"ue_budget_range must lie in (0, 1], got {list(self.ue_budget_range)}")
        check_range("snr_ref_db", self.snr_ref_db)
        check_range("snr_scale_db", self.snr_scale_db, 0.0, low_open=True)
        check_range("privacy_budget", self.privacy_budget, 0.0, 1.0)
        check_choice("privacy_mode", self.privacy_mode, PRIVACY_MODES)
        check_range("w_p", self.w_p, 0.0)
        check_range("w_e", self.w_e, 0.0)
        if self.privacy_table is not None:
            self.privacy_table = SplitTable.from_spec(self.privacy_table, "privacy_table")
        elif self.privacy_budget < 1.0:
            raise ValueError(f"privacy_budget={self.privacy_budget} needs a privacy_table (leakage per split)")
        if self.energy_table is not None:
            self.energy_table = SplitTable.from_spec(self.energy_table, "energy_table")
        elif self.w_e > 0:
            raise ValueError(f"w_e={self.w_e} needs an energy_table (UE energy per split)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SplitEnvConfig | None) -> SplitEnvConfig:
        """Build from a mapping (YAML section, RLlib ``env_config``); unknown keys are an error."""
        if isinstance(d, SplitEnvConfig):
            return d
        if isinstance(d, Mapping) and d.get("env") == "split":  # the make_env selector, harmless here
            d = {k: v for k, v in d.items() if k != "env"}
        return dataclass_from_mapping(cls, d, "env config")

    def replace(self, **changes: Any) -> SplitEnvConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for run parameters (nested configs as dicts, a reward-model instance described)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (RewardModel, SplitTable)):
                v = v.describe()
            elif dataclasses.is_dataclass(v):
                v = {"kind": _dynamics_kind(v), **dataclasses.asdict(v)} if _dynamics_kind(v) else dataclasses.asdict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def _dynamics_kind(obj: Any) -> str | None:
    for kind, cls in DYNAMICS_KINDS.items():
        if isinstance(obj, cls):
            return kind
    return None
