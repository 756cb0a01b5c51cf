"""This example reruns the paper's own MDP on SmolLM2 and scores PPO against its exact optimum.

The ``paper`` preset (``tune_configs/paper.yaml``): state (rho, k) with rho the erasure probability of
the hidden state, actions that move k by -4..+4 (clipped to 1..K_max, K_max = 9 of SmolLM2's 30
layers), 5-step episodes, reward ``10 (PPL_ref - PPL_k) / PPL_ref + (K_max - k) / K_max``, rho drawn
uniformly from [0, 0.3] at reset and drifting by x(1 -/+ 0.0005) per move up/down. Steps:

1. Measure the quality once, cheaply: every k in 1..K_max x 7 erasure probabilities 0, 0.05, ..., 0.3,
   on the real model (256 tokens of Wikipedia prose), through the measurement store (a rerun reads it
   back). The agents' grid is noise seed 0 (what the paper's surrogate is fitted on); the truth used
   for scoring is the mean of noise seeds 1 and 2, apart from what any agent saw. Both are interpolated
   in rho between the measured points.
2. Paper mode, once per seed: the surrogate (2-128-128-1 MLPs) fitted on the agents' grid, PPO on
   the surrogate alone (``splitlab.platform.training.run_training``), scored on 50 held-out episodes
   with the true quality, against every fixed k, random and the DP oracle.
3. The exact optimum (``splitlab.envs.PaperDP``: backward induction over the deterministic 5-step
   (rho, k) dynamics with the true quality) from every start (rho in 0..0.3 step 0.01, every k0), next
   to the trained greedy policy from the same starts: k after 5 steps vs rho, and return vs optimum.

How to run:
    nice python benchmarks/paper_mdp.py            # SmolLM2, 5 PPO seeds: about 15-25 min on 2 loaded cores
    python benchmarks/paper_mdp.py --quick         # tiny random model, 2 seeds, short PPO (~3 min)

Results to expect (``benchmarks/results/paper_mdp.json``, written after each stage, and
``benchmarks/results/paper_k_vs_rho.png``): per seed and as mean +- 95% CI (Student t over seeds) the
held-out return of PPO, of the DP optimum, random and the best fixed k, ``score`` = (PPO - random) /
(optimum - random), and on the grid of starts the share of starts where PPO is optimal, the mean
return gap (all starting k, and only those in the reset range), and k after 5 steps per rho for PPO
and the optimum. On SmolLM2 k = 1 has the lowest perplexity at every measured rho and is also the
cheapest split, so the optimum is "go to k = 1 and stay" at every rho, a fixed k = 1 is optimal, and
PPO matches the optimum on the held-out episodes in all 5 seeds (score 1.000); from starting k above
the reset range (never visited in training) it loses some return on the way down. Measuring takes
about 11 min under load (171 points; a rerun reads them from the store), PPO about 1-2 min a seed.
See the README section "The paper's own MDP" for the numbers and every deviation from the paper.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELD_OUT_SEED = 1_000_003


def measure(model, ks: list[int], rhos: list[float], seeds: list[int], quality: dict, store: str | None) -> dict:
    """Perplexity at ks x rhos for each noise seed, through the measurement store -> {"ppl": [S][K][V], ...}."""
    from splitlab.envs import LiveLLMRewardModel

    out, evals, seconds, hits = [], 0, 0.0, 0.0
    ppl_clean = None
    for i, seed in enumerate(seeds):
        rm = LiveLLMRewardModel(model=model, channel={"kind": "erasure"}, corpus=quality["corpus"],
                                n_tokens=quality["n_tokens"], window=quality["window"], decimals=quality["decimals"],
                                seed=seed, store=store)
        # rho = 0 erases nothing, so its perplexity does not depend on the noise seed: measured once
        values = rhos if i == 0 else [v for v in rhos if v > 0]
        table = rm.quality_grid(ks, values)  # [K][V']
        if i > 0:
            table = [[out[0][a][j] if v == 0 else row[values.index(v)] for j, v in enumerate(rhos)]
                     for a, row in enumerate(table)]
        out.append(table)
        ppl_clean = rm.ppl_clean
        evals += rm.real_evals
        seconds += rm.real_eval_time_s
        hits += rm.stats().get("store/hits", 0.0)
    return {"ppl": out, "ppl_clean": float(ppl_clean), "evals": evals, "llm_s": seconds, "store_hits": hits,
            "num_layers": int(model.num_layers), "hidden_size": int(model.hidden_size)}


def grid_json(measured: dict, ks: list[int], rhos: list[float], seed_idx: list[int], name: str) -> dict:
    """The seeds' mean perplexity at each point in ``grid.json`` format (what the grid reward model reads)."""
    from splitlab.platform.statistics import ci95

    ppl = np.asarray(measured["ppl"], float)[seed_idx]  # [S, K, V]
    rows = [{"k": int(k), "channel": "erasure", "param": "rho", "value": float(v),
             "ppl_mean": float(ppl[:, i, j].mean()), "ppl_ci95": ci95(ppl[:, i, j]), "seeds": len(seed_idx)}
            for i, k in enumerate(ks) for j, v in enumerate(rhos)]
    return {"model": name, "num_layers": measured["num_layers"], "hidden_size": measured["hidden_size"],
            "ppl_clean": measured["ppl_clean"], "rows": rows}


def greedy_from_export(run_dir: Path, n_actions: int):
    """The trained policy's greedy action from its pickle-free export (``policy_net.json`` + weights)."""
    from safetensors.numpy import load_file

    from splitlab.serve.policy import MLPRule

    net = json.loads((run_dir / "policy_net.json").read_text())
    rule = MLPRule(net["layers"], load_file(str(run_dir / "policy.safetensors")), list(range(n_actions)), None)
    return lambda obs: int(np.argmax(rule.logits(obs)))


def sweep_starts(env, act, dp, rhos: np.ndarray) -> dict:
    """Every start (rho, k0): the policy's and the optimum's return and final k -> arrays [R, K0]."""
    from splitlab.envs import rollout

    k0s = range(1, env.k_max + 1)
    ret = np.zeros((len(rhos), len(k0s)))
    opt, k_pol, k_opt = np.zeros_like(ret), np.zeros_like(ret), np.zeros_like(ret)
    for i, rho in enumerate(rhos):
        for j, k0 in enumerate(k0s):
            ep = rollout(env, act, options={"rho": float(rho), "k": k0}, keep_infos=True)
            plan = dp.plan(float(rho), k0)
            ret[i, j], k_pol[i, j] = ep.return_, ep.infos[-1]["cost/k"]
            opt[i, j], k_opt[i, j] = plan.value, plan.ks[-1]
    return {"return": ret, "optimum": opt, "k_policy": k_pol, "k_optimum": k_opt}


def stat(values) -> dict:
    from splitlab.platform.statistics import ci95

    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)), "ci95": ci95(v), "n": len(v), "per_seed": v}


def plot(path: Path, rhos: np.ndarray, k_opt: np.ndarray, k_pol: np.ndarray, opt: np.ndarray, ret: np.ndarray,
         gap_by_k0: np.ndarray, title: str) -> None:
    """k after 5 steps and return vs rho: the optimum against PPO's mean over seeds with a 95% band; and
    PPO's return gap to the optimum per starting k.

    ``k_opt``, ``opt``: [R] (mean over starting k); ``k_pol``, ``ret``: [S, R] one row per seed;
    ``gap_by_k0``: [S, K_max] mean over rho.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitlab.platform.statistics import ci95

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, best, pol, label in ((axes[0], k_opt, k_pol, "k after 5 steps (mean over starting k)"),
                                 (axes[1], opt, ret, "episode return (mean over starting k)")):
        mean = pol.mean(axis=0)
        band = np.array([ci95(pol[:, i]) for i in range(pol.shape[1])])
        ax.plot(rhos, best, color="tab:orange", lw=2, label="DP optimum (true quality)")
        ax.plot(rhos, mean, color="tab:blue", marker=".", label=f"PPO, paper mode (mean of {pol.shape[0]} seeds)")
        ax.fill_between(rhos, mean - band, mean + band, color="tab:blue", alpha=0.2, label="95% CI over seeds")
        ax.set_xlabel("erasure probability rho at reset")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    k0s = np.arange(1, gap_by_k0.shape[1] + 1)
    axes[2].bar(k0s, gap_by_k0.mean(axis=0), yerr=[ci95(gap_by_k0[:, i]) for i in range(len(k0s))], capsize=3,
                color="tab:blue")
    axes[2].set_xlabel("starting k (training resets to 3..5 for K_max = 9)")
    axes[2].set_ylabel("optimum - PPO return")
    axes[2].set_title("mean over rho, 95% CI over seeds", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 seeds, short PPO (smoke test)")
    parser.add_argument("--seeds", type=int, default=5, help="PPO seeds (0..n-1)")
    parser.add_argument("--iterations", type=int, default=None, help="PPO iterations (default: paper.yaml's)")
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per policy")
    parser.add_argument("--noise-seeds", type=int, default=2, help="channel-noise seeds averaged for the truth")
    parser.add_argument("--store", default="runs/measurements", help="measurement store root ('off': none)")
    parser.add_argument("--out", default=str(RESULTS / "paper_mdp.json"))
    parser.add_argument("--plot", default=str(RESULTS / "paper_k_vs_rho.png"))
    parser.add_argument("--keep-runs", default=None, help="keep the run folders here (default: a temp folder)")
    args = parser.parse_args()

    import ray
    import torch

    from splitlab.envs import PaperDP, SplitEnv
    from splitlab.envs.rewards import paper_k_max
    from splitlab.llm import SplitModel
    from splitlab.platform.ray_runtime import ensure_ray
    from splitlab.platform.spec import load_spec
    from splitlab.platform.training import run_training

    torch.set_num_threads(1)  # 2 shared cores: the LLM passes and PPO's env runners take turns
    t_start = time.perf_counter()
    base = load_spec(ROOT / "tune_configs" / "paper.yaml").to_dict()
    quality = dict(base["quality"])
    if args.quick:
        quality.update({"model": "tiny-llama", "n_tokens": 128})
        args.seeds, args.episodes = min(args.seeds, 2), min(args.episodes, 10)
    iterations = args.iterations or (3 if args.quick else base["algorithm"]["iterations"])
    rhos = [round(0.05 * i, 2) for i in range(7)]  # 0..0.3: the reset range and the paper's surrogate grid
    store = None if args.store == "off" else args.store
    out: dict = {"model": quality["model"], "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                        "load_avg_start": os.getloadavg()}}
    out_path = Path(args.out)

    def save() -> None:
        out["wall_s"] = time.perf_counter() - t_start
        out["machine"]["load_avg_now"] = os.getloadavg()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1, default=float) + "\n")

    work = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="splitlab-bench-paper-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"== measuring the quality on {quality['model']}", flush=True)
        model = SplitModel.load(quality["model"])
        k_max = paper_k_max(model.num_layers, 3 if args.quick else base["env"].get("k_max"))
        ks = list(range(1, k_max + 1))
        noise = list(range(args.noise_seeds + 1))  # seed 0: the agents' grid; 1..n: the truth
        start = time.perf_counter()
        measured = measure(model, ks, rhos, noise, quality, store)
        del model
        agent_grid = grid_json(measured, ks, rhos, [0], quality["model"])
        truth_grid = grid_json(measured, ks, rhos, noise[1:], quality["model"])
        out["settings"] = {"spec": "tune_configs/paper.yaml", "quality": quality, "ks": ks, "k_max": k_max,
                           "rho_grid": rhos, "rho_reset_range": [0.0, 0.3], "episode_len": 5,
                           "rho_drift": base["env"].get("rho_drift", 0.0005), "alpha": base["env"]["alpha"],
                           "beta": base["env"]["beta"], "agent_noise_seed": 0, "truth_noise_seeds": noise[1:],
                           "ppo_seeds": list(range(args.seeds)), "iterations": iterations,
                           "train_batch_size": base["algorithm"]["train_batch_size"],
                           "held_out_episodes": args.episodes, "held_out_seed": HELD_OUT_SEED}
        out["measurement"] = {"points": len(ks) * (1 + (len(rhos) - 1) * len(noise)), "real_evals": measured["evals"],
                              "llm_s": measured["llm_s"], "store_hits": measured["store_hits"],
                              "wall_s": time.perf_counter() - start, "ppl_clean": measured["ppl_clean"],
                              "store": store}
        out["truth_grid"] = {"ppl_mean": [[r["ppl_mean"] for r in truth_grid["rows"] if r["k"] == k] for k in ks],
                             "ppl_ci95": [[r["ppl_ci95"] for r in truth_grid["rows"] if r["k"] == k] for k in ks],
                             "agent_ppl": [[r["ppl_mean"] for r in agent_grid["rows"] if r["k"] == k] for k in ks]}
        save()
        print(f"   {out['measurement']['points']} points ({measured['store_hits']:.0f} from the store) in "
              f"{out['measurement']['wall_s']:.0f} s; clean PPL {measured['ppl_clean']:.2f}", flush=True)

        truth_spec = {"kind": "grid", "grid": truth_grid, "channel": "erasure"}
        env_settings = {**base["env"], "rho_range": [0.0, 0.3], "k_max": k_max}
        env = SplitEnv({**{k: v for k, v in env_settings.items() if k != "env"}, "reward_model": truth_spec})
        dp = PaperDP(env)
        start_rhos = np.round(np.linspace(0.0, 0.3, 31), 4)
        ensure_ray(2)
        runs = []
        for seed in range(args.seeds):
            print(f"== paper mode PPO, seed {seed}", flush=True)
            spec = {**base, "name": f"paper_seed{seed}", "out": str(work), "tracking": {"enabled": False},
                    "quality": quality, "env": env_settings,
                    "paper": {"grid": {"kind": "grid", "grid": agent_grid, "channel": "erasure"}},
                    "algorithm": {**base["algorithm"], "seed": seed, "iterations": iterations},
                    "evaluation": {**base["evaluation"], "episodes": args.episodes, "seed": HELD_OUT_SEED,
                                   "truth": truth_spec}}
            result = run_training(spec)
            p = result.policies
            fixed = {n: v["return"] for n, v in p.items() if n.startswith("fixed_k=")}
            best_fixed = max(fixed, key=fixed.get)
            act = greedy_from_export(result.run_dir, env.action_space.n)
            starts = sweep_starts(env, act, dp, start_rhos)
            rng = np.ptp(starts["optimum"])
            gap = starts["optimum"] - starts["return"]  # [R, K0]
            optimal = starts["return"] >= starts["optimum"] - 1e-9
            low, high = env.initial_k_range  # the starting k training resets to; others are reached only by moving
            inside = slice(low - 1, high)
            runs.append({"seed": seed, "return": p["policy"]["return"], "optimum": p["oracle"]["return"],
                         "random": p["random"]["return"], "best_fixed": {"name": best_fixed, "return": fixed[best_fixed]},
                         "score": p["policy"]["return_vs_oracle"], "best_fixed_score": p[best_fixed]["return_vs_oracle"],
                         "mean_k": p["policy"]["mean_k"], "oracle_mean_k": p["oracle"]["mean_k"],
                         "train_wall_s": result.metrics["time/wall_s"],
                         "surrogate_mae": result.metrics.get("mbrl/surrogate_mae"),
                         "starts": {"optimal_share": float(np.mean(starts["return"] >= starts["optimum"] - 1e-9)),
                                    "mean_gap": float(np.mean(starts["optimum"] - starts["return"])),
                                    "return": float(starts["return"].mean()),
                                    "optimum": float(starts["optimum"].mean()),
                                    "optimum_range": float(rng),
                                    "final_k_match": float(np.mean(starts["k_policy"] == starts["k_optimum"])),
                                    "reset_k_range": [low, high],
                                    "optimal_share_reset_k": float(np.mean(optimal[:, inside])),
                                    "mean_gap_reset_k": float(np.mean(gap[:, inside])),
                                    "optimal_share_by_k0": optimal.mean(axis=0).tolist(),
                                    "mean_gap_by_k0": gap.mean(axis=0).tolist(),
                                    "k_policy_by_rho": starts["k_policy"].mean(axis=1).tolist(),
                                    "return_by_rho": starts["return"].mean(axis=1).tolist()}})
            out["k_optimum_by_rho"] = starts["k_optimum"].mean(axis=1).tolist()
            out["optimum_by_rho"] = starts["optimum"].mean(axis=1).tolist()
            out["start_rhos"] = start_rhos.tolist()
            out["runs"] = runs
            save()
            r = runs[-1]
            print(f"   return {r['return']:.3f} vs optimum {r['optimum']:.3f} (score {r['score']:.3f}); optimal from "
                  f"{r['starts']['optimal_share']:.0%} of starts", flush=True)

        out["summary"] = {
            "n_seeds": len(runs), "held_out_episodes": args.episodes,
            "ppo_return": stat(r["return"] for r in runs), "optimum_return": stat(r["optimum"] for r in runs),
            "random_return": stat(r["random"] for r in runs),
            "best_fixed_return": stat(r["best_fixed"]["return"] for r in runs),
            "best_fixed": sorted({r["best_fixed"]["name"] for r in runs}),
            "ppo_score": stat(r["score"] for r in runs), "best_fixed_score": stat(r["best_fixed_score"] for r in runs),
            "ppo_return_over_optimum": stat(r["return"] / r["optimum"] for r in runs),
            "starts_optimal_share": stat(r["starts"]["optimal_share"] for r in runs),
            "starts_mean_gap": stat(r["starts"]["mean_gap"] for r in runs),
            "starts_final_k_match": stat(r["starts"]["final_k_match"] for r in runs),
            "starts_reset_k_optimal_share": stat(r["starts"]["optimal_share_reset_k"] for r in runs),
            "starts_reset_k_mean_gap": stat(r["starts"]["mean_gap_reset_k"] for r in runs),
        }
        plot(Path(args.plot), start_rhos, np.asarray(out["k_optimum_by_rho"]),
             np.asarray([r["starts"]["k_policy_by_rho"] for r in runs]), np.asarray(out["optimum_by_rho"]),
             np.asarray([r["starts"]["return_by_rho"] for r in runs]),
             np.asarray([r["starts"]["mean_gap_by_k0"] for r in runs]),
             f"paper MDP on {quality['model']}: PPO (paper mode) vs the DP optimum")
        out["plot"] = str(Path(args.plot).resolve().relative_to(ROOT)) if Path(args.plot).resolve().is_relative_to(
            ROOT) else args.plot
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
        save()
    s = out.get("summary", {})
    for key in ("ppo_return", "optimum_return", "best_fixed_return", "random_return", "ppo_score",
                "starts_optimal_share", "starts_mean_gap", "starts_reset_k_optimal_share", "starts_reset_k_mean_gap"):
        if key in s:
            print(f"{key:<22} {s[key]['mean']:9.3f} +- {s[key]['ci95']:.3f} (n={s[key]['n']})")


if __name__ == "__main__":
    main()
