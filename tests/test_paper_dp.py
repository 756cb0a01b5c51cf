"""The paper preset's DP oracle: optimal on a case small enough to check by hand, and by brute force."""
from __future__ import annotations

import itertools

import pytest

from splitlab.envs import OraclePolicy, PaperDP, SplitEnv, rollout

# K_max = 3, moves of -1/0/+1, two steps, no drift, PPL_ref = 20, alpha = 10, beta = 1:
#   r(k) = 10 (20 - PPL_k) / 20 + (3 - k) / 3  ->  r(1) = 0, r(2) = -1, r(3) = +2.
# From k = 1 the paths are (1,1): 0, (1,2): -1, (2,1): -1, (2,2): -2, (2,3): +1. The optimum climbs
# through the bad k = 2 to reach k = 3 (return 1); a greedy step would stay at k = 1 (return 0).
PPL = {1: 20 + 4 / 3, 2: 20 + 8 / 3, 3: 16.0}
HAND = {"preset": "paper", "k_max": 3, "max_move": 1, "episode_len": 2, "rho_drift": 0.0, "rho_range": [0.0, 0.3],
        "reward_model": {"kind": "grid", "grid": {
            "model": "hand", "num_layers": 3, "hidden_size": 8, "ppl_clean": 20.0,
            "rows": [{"k": k, "channel": "erasure", "param": "rho", "value": v, "ppl_mean": p}
                     for k, p in PPL.items() for v in (0.0, 0.3)]}}}


def test_dp_finds_the_hand_computed_optimum_that_greedy_misses():
    env = SplitEnv(HAND)
    assert [env.paper_terms(0.1, k)[0].total for k in (1, 2, 3)] == pytest.approx([0.0, -1.0, 2.0])
    plan = PaperDP(env).plan(rho=0.1, k=1)
    assert plan.value == pytest.approx(1.0)
    assert plan.ks == (2, 3)
    assert plan.actions == (2, 2)  # action a moves k by a - max_move
    assert plan.rhos == (0.1, 0.1)
    assert PaperDP(env).best(1, 0.1, 2) == pytest.approx((2.0, 2))  # one step left at k = 2: go to 3
    episode = rollout(env, OraclePolicy(), options={"rho": 0.1, "k": 1})
    assert episode.return_ == pytest.approx(1.0)


def test_dp_matches_brute_force_with_rho_drift():
    config = {"preset": "paper", "episode_len": 3, "rho_drift": 0.05, "rho_range": [0.0, 0.3],
              "reward_model": {"kind": "synthetic", "channel": "erasure", "num_layers": 12}}
    env = SplitEnv(config)
    for rho, k in [(0.0, 2), (0.15, 3), (0.3, 1)]:
        best = -float("inf")
        for seq in itertools.product(range(env.action_space.n), repeat=3):
            env.reset(options={"rho": rho, "k": k})
            best = max(best, sum(env.step(a)[1] for a in seq))
        assert PaperDP(env).plan(rho, k).value == pytest.approx(best)


def test_dp_refuses_the_wireless_preset():
    env = SplitEnv({"preset": "wireless", "reward_model": {"kind": "synthetic", "channel": "awgn", "num_layers": 4,
                                                           "hidden_size": 8}})
    with pytest.raises(ValueError, match="needs the paper preset"):
        PaperDP(env)
