"""The ``splitlab`` command. Each subcommand's help says what it does, how to run it, what to expect."""
from __future__ import annotations

import argparse
import sys
import time


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,5,10, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0,10,20, got {text!r}") from None


def _setting(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE like fading=rayleigh, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw)


def cmd_analyze(args: argparse.Namespace) -> int:
    from splitlab.platform.analysis import AnalysisConfig, run_analysis, summarise

    cfg = AnalysisConfig(model=args.model, corpus=args.corpus, tokens=args.tokens, window=args.window,
                         splits=args.splits, channels=args.channels, rho=args.rho, snr_db=args.snr,
                         channel_settings=dict(args.set), seeds=args.seeds, seed=args.seed, out=args.out,
                         tracking_uri=args.tracking_uri)
    grid, files, run_id = run_analysis(cfg, log=not args.no_mlflow)
    print(f"clean perplexity {grid['ppl_clean']:.3f} ({grid['tokens']} tokens of {grid['corpus']}); "
          f"{len(grid['rows'])} points in {grid['wall_time_s']:.0f} s")
    print(f"{'channel':<18} {'setting':<13} {'best k':>6} {'PPL':>9} {'worst k':>7} {'PPL':>9} {'paper k':>7}")
    for s in summarise(grid):
        print(f"{s['channel']:<18} {s['param'] + '=' + format(s['value'], 'g'):<13} {s['best_k']:>6} "
              f"{s['best_ppl']:>9.2f} {s['worst_k']:>7} {s['worst_ppl']:>9.2f} {s['paper_reward_best_k']!s:>7}")
    print(f"outputs in {args.out}/ ({len(files)} files)" + (f"; MLflow run {run_id}" if run_id else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from splitlab.platform.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(model=args.model, quick=args.quick, out=args.out, tracking_uri=args.tracking_uri))


def cmd_check(args: argparse.Namespace) -> int:
    from splitlab.llm import SplitModel
    from splitlab.llm.corpora import token_windows
    from splitlab.llm.evaluation import perplexity

    start = time.perf_counter()
    model = SplitModel.load(args.model)
    windows = token_windows(model.tokenizer, args.corpus, args.tokens, args.window)
    ks = args.splits or sorted({0, model.num_layers // 3, model.num_layers // 2, model.num_layers})
    reference = model.logits(windows[:1])
    print(f"model {args.model}: {model.num_layers} layers, hidden {model.hidden_size}; "
          f"{windows.numel()} tokens of {args.corpus} in windows of {args.window}")
    print(f"{'k':>4} {'perplexity':>11} {'max |logit diff|':>17}")
    for k in ks:
        diff = float((model.tail(model.head(windows[:1], k), k) - reference).abs().max())
        print(f"{k:>4} {perplexity(model, windows, k):>11.3f} {diff:>17.2e}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check", help="clean split vs unsplit: perplexity at a few split points",
        description="This checks that splitting the model changes nothing on a clean link. "
                    "How to run: splitlab check --model smollm2 --splits 0,10,30. "
                    "Results to expect: the same perplexity at every k and logit differences of 0 (<= 1e-5).",
    )
    check.add_argument("--model", default="smollm2", help="smollm2, tiny-llama, tiny-gpt2, or a local checkpoint")
    check.add_argument("--corpus", default="wiki", choices=["wiki", "lambada"])
    check.add_argument("--tokens", type=int, default=1024, help="tokens evaluated (default 1024)")
    check.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    check.add_argument("--splits", type=_int_list, default=None, help="split points, e.g. 0,10,30")
    check.set_defaults(func=cmd_check)

    analyze = sub.add_parser(
        "analyze", help="grid of split point x channel: perplexity, link cost, plots, MLflow run",
        description="This computes how the split point k and the channel change perplexity: every k x channel "
                    "setting x noise seed, reusing one clean pass per batch and rerunning only tails. "
                    "How to run: splitlab analyze --model smollm2 --tokens 1024 --seeds 3 --out runs/analysis. "
                    "Results to expect: grid.json/csv with mean perplexity and 95% CI per point, link_cost.csv, "
                    "heatmaps and line plots per channel, a summary table of the best k per setting, one MLflow run.",
    )
    analyze.add_argument("--model", default="smollm2", help="smollm2, tiny-llama, tiny-gpt2, or a local checkpoint")
    analyze.add_argument("--corpus", default="wiki", choices=["wiki", "lambada"])
    analyze.add_argument("--tokens", type=int, default=1024, help="tokens per point (default 1024)")
    analyze.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    analyze.add_argument("--splits", type=_int_list, default=None, help="split points (default: all 0..L)")
    analyze.add_argument("--channels", type=lambda t: [c for c in t.split(",") if c],
                         default=["erasure", "awgn", "awgn-per-channel", "digital"],
                         help="sweeps: erasure, awgn, awgn-per-channel, digital (comma-separated)")
    analyze.add_argument("--rho", type=_float_list, default=[0.02, 0.05, 0.1, 0.2, 0.3],
                         help="erasure probabilities (default 0.02,0.05,0.1,0.2,0.3)")
    analyze.add_argument("--snr", type=_float_list, default=[0, 5, 10, 15, 20, 30],
                         help="mean SNRs in dB for awgn and digital (default 0,5,10,15,20,30)")
    analyze.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                         help="channel setting for every sweep, e.g. --set fading=rayleigh --set quant=int8")
    analyze.add_argument("--seeds", type=int, default=3, help="noise seeds per point (default 3)")
    analyze.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    analyze.add_argument("--out", default="runs/analysis", help="output folder (default runs/analysis)")
    analyze.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    analyze.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    analyze.set_defaults(func=cmd_analyze)
    demo = sub.add_parser(
        "demo", help="the paper end to end: analysis, surrogate, Dyna PPO, baselines, summary",
        description="This runs the main job on the embedded local Ray: a coarse split-point analysis, the reward "
                    "surrogate, PPO across many simulated users, evaluation against baselines and the oracle, "
                    "all logged to MLflow. How to run: splitlab demo (about 15 min on 2 cores) or "
                    "splitlab demo --quick (about 3 min). Results to expect: a line per stage with elapsed time, "
                    "then a results table, where the plots are, and how to open the MLflow UI.",
    )
    demo.add_argument("--model", default="smollm2", help="smollm2 (default), or tiny-llama for a smoke test")
    demo.add_argument("--quick", action="store_true", help="the same story at a smaller size (about 3 min)")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"splitlab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
