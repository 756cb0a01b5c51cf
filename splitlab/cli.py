"""The ``splitlab`` command. Each subcommand's help says what it does, how to run it, what to expect."""
from __future__ import annotations

import argparse
import os
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


def _setting(text: str) -> tuple[str, str]:
    from splitlab.config import parse_setting

    try:
        return parse_setting(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _given(args: argparse.Namespace, **fields: str) -> dict:
    """Config fields from the flags the user gave (``field=flag attribute``); the config's defaults fill the rest."""
    return {field: getattr(args, attr) for field, attr in fields.items() if getattr(args, attr) is not None}


def _print_config(config) -> int:
    from splitlab.config import to_yaml

    print(to_yaml(config), end="")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from splitlab.config import apply_settings
    from splitlab.platform.analysis import AnalysisConfig, run_analysis, summarise

    flags = _given(args, model="model", corpus="corpus", tokens="tokens", window="window", splits="splits",
                   channels="channels", rho="rho", snr_db="snr", tasks="tasks", task_items="task_items",
                   seeds="seeds", seed="seed", out="out", tracking_uri="tracking_uri",
                   privacy="privacy", privacy_fit_tokens="privacy_fit_tokens")
    cfg = apply_settings(AnalysisConfig, flags, args.set)
    if args.print_config:
        return _print_config(cfg)
    grid, files, run_id = run_analysis(cfg, log=not args.no_mlflow)
    print(f"clean perplexity {grid['ppl_clean']:.3f} ({grid['tokens']} tokens of {grid['corpus']}); "
          f"{len(grid['rows'])} points in {grid['wall_time_s']:.0f} s")
    print(f"{'channel':<18} {'setting':<13} {'best k':>6} {'PPL':>9} {'worst k':>7} {'PPL':>9} {'paper k':>7}")
    summary = summarise(grid)
    for s in summary:
        print(f"{s['channel']:<18} {s['param'] + '=' + format(s['value'], 'g'):<13} {s['best_k']:>6} "
              f"{s['best_ppl']:>9.2f} {s['worst_k']:>7} {s['worst_ppl']:>9.2f} {s['paper_reward_best_k']!s:>7}")
    for task, info in grid["tasks"].items():
        print(f"{task} accuracy ({info['items']} items, clean {info['acc_clean']:.3f}):")
        print(f"{'channel':<18} {'setting':<13} {'best k':>6} {'acc':>6} {'worst acc':>9}")
        for s in summary:
            print(f"{s['channel']:<18} {s['param'] + '=' + format(s['value'], 'g'):<13} {s[task + '_best_k']:>6} "
                  f"{s[task + '_best_acc']:>6.3f} {s[task + '_worst_acc']:>9.3f}")
    if "privacy" in grid:
        _print_privacy(grid["privacy"])
    print(f"outputs in {cfg.out}/ ({len(files)} files)" + (f"; MLflow run {run_id}" if run_id else ""))
    return 0


def _print_privacy(privacy: dict) -> None:
    print(f"token leakage, clean channel ({privacy['tokens_eval']} held-out tokens, learned attack fitted on "
          f"{privacy['tokens_fit']}; 95% CI: {privacy['ci95']}):")
    print(f"{'k':>3} {'nn top-1':>20} {'learned top-1':>20}")
    for r in privacy["clean"]:
        print(f"{r['k']:>3} " + " ".join(f"{r[f'leak_{a}_top1']:>7.3f} [{r[f'leak_{a}_top1_lo']:.3f}, "
                                         f"{r[f'leak_{a}_top1_hi']:.3f}]" for a in ("nn", "learned")))


def cmd_demo(args: argparse.Namespace) -> int:
    from splitlab.config import apply_settings
    from splitlab.platform.demo import DemoConfig, run_demo

    cfg = apply_settings(DemoConfig, _given(args, model="model", quick="quick", out="out",
                                            tracking_uri="tracking_uri"), args.set)
    return _print_config(cfg) if args.print_config else run_demo(cfg)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitlab.config import settle, validate
    from splitlab.platform.spec import SweepFile, read_spec_file
    from splitlab.platform.sweep import load_plan

    raw = read_spec_file(args.spec, "sweep spec")
    raw.setdefault("name", Path(args.spec).stem)
    raw = settle(SweepFile, raw, args.set)
    if args.print_config:
        return _print_config(validate(SweepFile, raw))
    plan = load_plan(raw, name=args.name, where=args.spec)
    sweep = plan.sweep
    print(f"sweep {sweep.name}: {sweep.trial_count()} trials ({sweep.grid_points()} grid points x "
          f"{sweep.num_samples} samples), searcher {sweep.searcher}, scheduler {sweep.scheduler}, "
          f"optimising {sweep.metric} ({sweep.mode})")
    if args.dry_run:
        for path, value in sweep.params.items():
            print(f"  {path}: {value.kind} {value.args}" if hasattr(value, "kind") else f"  {path}: {value!r} (fixed)")
        for name, settings in (sweep.methods or {}).items():
            print(f"  method {name}: " + ", ".join(f"{p}={v!r}" for p, v in settings.items()))
        return 0
    from splitlab.platform.sweep import run_sweep

    outcome = run_sweep(plan, address=args.address, resume=args.resume, tracking_uri=args.tracking_uri,
                        storage_path=args.storage_path, num_cpus=args.num_cpus)
    print(f"sweep {outcome.name} (id {outcome.sweep_id}): {len(outcome.trials)} trials, "
          f"{len(outcome.errored)} errored; Tune state in {outcome.path}; MLflow experiment {outcome.experiment!r} "
          f"at {outcome.tracking_uri}, tag splitlab.sweep={outcome.name}")
    print(f"next: splitlab report {outcome.name}" + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
    return 1 if outcome.errored else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from splitlab.platform.submit import submit

    job = submit(args.spec, args.address, wait=not args.no_wait, tracking_uri=args.tracking_uri,
                 storage_path=args.storage_path, resume=args.resume, name=args.name, token=args.token,
                 timeout_s=args.timeout)
    return 0 if args.no_wait or job.status == "SUCCEEDED" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitlab.platform.report import build_report, format_tables, log_to_parent, write_outputs

    report = build_report(args.sweep, tracking_uri=args.tracking_uri, by=args.by, all_ids=args.all)
    print(format_tables(report, args.aggregate))
    files = write_outputs(report, Path(args.out or f"runs/reports/{report.sweep}"))
    print(f"\nwrote {len(files)} files to {files[0].parent}/: " + ", ".join(f.name for f in files))
    parent = log_to_parent(report, files, args.tracking_uri)
    if parent:
        print(f"logged the tables and plots to the sweep's MLflow parent run {parent}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from splitlab.platform.spec import load_spec
    from splitlab.platform.training import run_training

    settings = list(args.set)
    if args.tracking_uri:
        settings.append(("tracking.uri", args.tracking_uri))
    if args.no_mlflow:
        settings.append(("tracking.enabled", False))
    if args.out:
        settings.append(("out", args.out))
    if args.name:
        settings.append(("name", args.name))
    spec = load_spec(args.spec, settings)  # validated before Ray starts
    if args.print_config:
        return _print_config(spec)
    result = run_training(spec, resume=not args.restart)
    m = result.metrics
    print(f"{'policy':<14} {'return':>10} {'vs oracle':>10} {'mean k':>7}")
    for name, p in sorted(result.policies.items(), key=lambda kv: -kv[1]["return"]):
        print(f"{name:<14} {p['return']:>10.3f} {p['return_vs_oracle']:>10.3f} {p['mean_k']:>7.2f}")
    print(f"real LLM evaluations {m.get('mbrl/real_evals', 0):.0f} ({m.get('mbrl/real_eval_time_s', 0):.1f} s); "
          f"wall time {m['time/wall_s']:.0f} s; outputs in {result.run_dir}/"
          + (f"; MLflow run {result.run_id}" if result.run_id else ""))
    return 0


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


def cmd_serve(args: argparse.Namespace) -> int:
    from splitlab.config import apply_settings
    from splitlab.serve.config import ServeConfig, read_serve_file
    from splitlab.serve.local import serve_forever

    base, deployments = (read_serve_file(args.config) if args.config else (ServeConfig(), {}))
    settings = ([("model", args.model)] if args.model else []) + list(args.set)
    keys = list(args.api_key) or [k.strip() for k in os.environ.get("SPLITLAB_API_KEY", "").split(",") if k.strip()]
    if keys:
        settings.append(("api_keys", keys))
    if args.trust_checkpoint:
        settings.append(("trust_checkpoint", True))
    config = apply_settings(ServeConfig, base.to_dict(), settings)
    if args.host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0") and args.host not in config.allowed_hosts \
            and "*" not in config.allowed_hosts:
        config = config.replace(allowed_hosts=[*config.allowed_hosts, args.host])  # the name it was bound as
    if args.print_config:
        from splitlab.config import to_yaml

        print(to_yaml({"args": config.to_dict(),
                       "deployments": [{"name": n, **o} for n, o in deployments.items()]}), end="")
        return 0
    serve_forever(config, args.host, args.port, args.num_cpus, deployments)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitlab.config_docs import markdown, schema_json

    if args.action == "schema":
        print(schema_json(args.name))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown())
    print(f"wrote {out}")
    return 0


def cmd_ue(args: argparse.Namespace) -> int:
    import json
    import os

    import requests

    from splitlab.client import DeviceClient
    from splitlab.client.transport import EdgeRefused

    if args.k != "policy" and not all(part.strip().isdigit() for part in args.k.split(",")):
        raise ValueError(f"--k must be a split point (an integer), a schedule of them per token (4,4,10) or "
                         f"'policy', got {args.k!r}")
    k = args.k if args.k == "policy" else [int(part) for part in args.k.split(",")]
    try:
        snrs = [float(part) for part in args.snr_db.split(",")]
    except ValueError:
        raise ValueError(f"--snr-db must be a number or a comma list of them, got {args.snr_db!r}") from None
    every = args.resplit_every
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    try:
        client = DeviceClient(args.url, model=args.model, max_k=args.max_k, fmt=args.format,
                              transport=args.transport, api_key=args.api_key or os.environ.get("SPLITLAB_API_KEY"))
        for delta in client.stream(prompt, k, args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                   seed=args.seed, stop=args.stop, resplit_every=every,
                                   snr_db=lambda i: snrs[min(i // every if every else 0, len(snrs) - 1)]):
            print(delta, end="", flush=True)
    except (EdgeRefused, requests.RequestException) as err:  # the edge's answer, in one line
        raise ValueError(str(err)) from None
    print()
    if args.stats:
        print(json.dumps({"finish_reason": client.last.finish_reason, **client.last.stats.as_dict()}),
              file=sys.stderr)
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

    serve = sub.add_parser(
        "serve", help="serve split inference over HTTP (OpenAI-style API) with Ray Serve on 127.0.0.1",
        description="This starts an embedded Ray and Ray Serve on this machine with four deployments: the UE "
                    "half, the edge half (autoscaled), the split policy and a FastAPI ingress, answering "
                    "POST /v1/completions and /v1/chat/completions, GET /v1/models and /healthz. "
                    "How to run: splitlab serve --model smollm2 --port 8000 [--config serve_config.yaml] "
                    "[--set max_split=15 --set policy_grid=runs/analysis/grid.json]; then curl "
                    "http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d "
                    "'{\"prompt\": \"The capital of France is\", \"max_tokens\": 16, \"temperature\": 0, "
                    "\"channel_profile\": \"fair\"}'. "
                    "Results to expect: ready in under a minute; each response carries the split used, bytes "
                    "sent up and down and the simulated link latency; on the clean profile with temperature 0 "
                    "the text equals the unsplit model's. Ctrl-C stops it.",
    )
    serve.add_argument("--model", default=None, help="smollm2 (default), tiny-llama, tiny-gpt2, or a local checkpoint")
    serve.add_argument("--config", default=None, help="a Serve config YAML (its first application's args and its "
                                                     "deployments: overrides) or a YAML mapping of ServeConfig fields")
    _add_config_flags(serve, "a ServeConfig field, e.g. --set max_split=15 --set policy_grid=runs/analysis/grid.json")
    serve.add_argument("--host", default="127.0.0.1", help="address of the HTTP proxy (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port of the HTTP proxy (default 8000)")
    serve.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require Authorization: Bearer KEY (repeatable; default: $SPLITLAB_API_KEY, "
                            "comma-separated; none: no key)")
    serve.add_argument("--trust-checkpoint", action="store_true",
                       help="allow a policy_checkpoint that only RLlib's pickled checkpoint can load (your own files)")
    serve.set_defaults(func=cmd_serve)

    analyze = sub.add_parser(
        "analyze", help="grid of split point x channel: perplexity, link cost, plots, MLflow run",
        description="This computes how the split point k and the channel change perplexity (and, with --tasks, "
                    "LAMBADA / HellaSwag accuracy): every k x channel setting x noise seed, reusing one clean "
                    "pass per batch and rerunning only tails. "
                    "How to run: splitlab analyze --model smollm2 --tokens 1024 --seeds 3 --out runs/analysis "
                    "[--tasks lambada,hellaswag --task-items 50]. "
                    "Results to expect: grid.json/csv with mean perplexity (and accuracy) and 95% CI per point, "
                    "link_cost.csv, heatmaps and line plots per channel, a summary table of the best k per "
                    "setting, one MLflow run.",
    )
    analyze.add_argument("--model", default=None, help="smollm2 (default), tiny-llama, tiny-gpt2, or a local checkpoint")
    analyze.add_argument("--corpus", default=None, choices=["wiki", "lambada"], help="perplexity corpus (default wiki)")
    analyze.add_argument("--tokens", type=int, default=None, help="tokens per point (default 1024)")
    analyze.add_argument("--window", type=int, default=None, help="tokens per window (default 128)")
    analyze.add_argument("--splits", type=_int_list, default=None, help="split points (default: all 0..L)")
    analyze.add_argument("--channels", type=lambda t: [c for c in t.split(",") if c], default=None,
                         help="sweeps: erasure, awgn, awgn-per-channel, digital (comma-separated; default all four)")
    analyze.add_argument("--rho", type=_float_list, default=None,
                         help="erasure probabilities (default 0.02,0.05,0.1,0.2,0.3)")
    analyze.add_argument("--snr", type=_float_list, default=None,
                         help="mean SNRs in dB for awgn and digital (default 0,5,10,15,20,30)")
    analyze.add_argument("--tasks", type=lambda t: [x for x in t.split(",") if x], default=None,
                         help="accuracy tasks at every point too: lambada, hellaswag (comma-separated; slow)")
    analyze.add_argument("--task-items", type=int, default=None, help="items per task (default 50)")
    analyze.add_argument("--seeds", type=int, default=None, help="noise seeds per point (default 3)")
    analyze.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    analyze.add_argument("--out", default=None, help="output folder (default runs/analysis)")
    analyze.add_argument("--privacy", action="store_const", const=True, default=None,
                         help="token leakage of inversion attacks at every point too, and a frontier plot per channel")
    analyze.add_argument("--privacy-fit-tokens", type=int, default=None,
                         help="tokens the learned attack is fitted on, taken after the evaluated ones (default 4096)")
    analyze.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    analyze.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    _add_config_flags(analyze, "an analysis setting, e.g. --set channel_settings.fading=rayleigh "
                               "--set channel_settings.quant=int8 --set batch_size=4")
    analyze.set_defaults(func=cmd_analyze)
    demo = sub.add_parser(
        "demo", help="the paper end to end: analysis, surrogate, Dyna PPO, baselines, summary",
        description="This runs the main job on the embedded local Ray: a coarse split-point analysis, the reward "
                    "surrogate, PPO across many simulated users, evaluation against baselines and the oracle, "
                    "all logged to MLflow. How to run: splitlab demo (about 8 min on 2 cores) or "
                    "splitlab demo --quick (about 2 min). Results to expect: a line per stage with elapsed time, "
                    "then a results table, where the plots are, and how to open the MLflow UI.",
    )
    demo.add_argument("--model", default=None, help="smollm2 (default), or tiny-llama for a smoke test")
    demo.add_argument("--quick", action="store_const", const=True, default=None,
                      help="the same story at a smaller size (about 2 min)")
    demo.add_argument("--out", default=None, help="output folder (default runs/demo)")
    demo.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    _add_config_flags(demo, "a demo setting, e.g. --set quick=true")
    demo.set_defaults(func=cmd_demo)
    sweep = sub.add_parser(
        "sweep", help="a spec's sweep section as Ray Tune trials, one MLflow run per trial",
        description="This runs one training run per point of the spec's sweep section (grid_search lists, "
                    "uniform/loguniform/choice/randint ranges) with Ray Tune on an embedded local Ray, or on a "
                    "cluster with --address. The whole spec is validated before Ray starts. "
                    "How to run: splitlab sweep tune_configs/network_sweep.yaml (add --dry-run to only validate "
                    "and count trials; --resume continues an interrupted sweep). Results to expect: Tune's trial "
                    "table, then one MLflow run per trial (params, namespaced metrics, plots, surrogate and "
                    "policy checkpoint as artifacts) tagged splitlab.sweep=NAME; compare them in `make ui` or "
                    "with `splitlab report NAME`.",
    )
    sweep.add_argument("spec", help="YAML spec with a sweep: section (tune_configs/network_sweep.yaml)")
    sweep.add_argument("--address", default=None,
                       help="Ray cluster to join (auto, HOST:6379); default: an embedded local Ray on 127.0.0.1")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    sweep.add_argument("--name", default=None, help="override sweep.name (the Tune folder and the MLflow tag)")
    sweep.add_argument("--storage-path", default=None, help="override sweep.storage_path (Tune state, checkpoints)")
    sweep.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    sweep.add_argument("--num-cpus", type=float, default=None, help="CPUs of the embedded Ray (default: all)")
    sweep.add_argument("--dry-run", action="store_true", help="validate the spec and print the search space only")
    _add_config_flags(sweep, "a spec or sweep field by its dotted path, e.g. --set algorithm.iterations=5 "
                             "--set sweep.num_samples=3")
    sweep.set_defaults(func=cmd_sweep)

    submit = sub.add_parser(
        "submit", help="run a spec as a Ray job on a cluster, the project as its working directory",
        description="This validates the spec here, uploads the project folder with Ray's job submission client "
                    "and runs `splitlab sweep SPEC` (or `splitlab train SPEC` for a spec without a sweep section) "
                    "on the cluster's head. How to run: splitlab submit tune_configs/network_sweep.yaml "
                    "--address http://HEAD:8265 --tracking-uri http://MLFLOW:5000 (the token comes from "
                    "$RAY_AUTH_TOKEN or ~/.ray/auth_token). Results to expect: the job id, its logs as they come, "
                    "its final status; its MLflow runs in the tracking store.",
    )
    submit.add_argument("spec", help="YAML spec inside this project (it travels with the working directory)")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--tracking-uri", default=None,
                        help="MLflow URI the job logs to (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here, "
                             "which only a head on this machine can reach)")
    submit.add_argument("--storage-path", default=None, help="Tune storage the cluster can reach (shared path, s3://)")
    submit.add_argument("--resume", action="store_true", help="pass --resume to the sweep")
    submit.add_argument("--name", default=None, help="override sweep.name")
    submit.add_argument("--token", default=None, help="Ray auth token (default $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    submit.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    submit.set_defaults(func=cmd_submit)

    report = sub.add_parser(
        "report", help="a sweep's trials from MLflow: best split policy per network condition, plots",
        description="This reads a sweep's runs back from MLflow (tag splitlab.sweep=SWEEP, or a sweep id), groups "
                    "them by network condition (the swept params outside the algorithm sections) and compares them. "
                    "How to run: splitlab report network-sweep [--by env.dynamics.mean_db]. Results to expect: "
                    "a table of the best trial per condition (return, oracle return, fraction of the oracle, real "
                    "LLM evaluations, mean split k), a table of all trials, and CSVs plus comparison plots in "
                    "runs/reports/SWEEP/.",
    )
    report.add_argument("sweep", help="sweep name (sweep.name in the spec) or sweep id")
    report.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    report.add_argument("--by", type=lambda t: [k for k in t.split(",") if k], default=None,
                        help="params that define a network condition, comma-separated (default: every swept "
                             "param outside algorithm/surrogate/training sections)")
    report.add_argument("--out", default=None, help="output folder (default runs/reports/SWEEP)")
    report.add_argument("--all", action="store_true", help="include every sweep id with this name, not just the newest")
    report.add_argument("--aggregate", choices=["seed", "best"], default=None,
                        help="seed: mean +- 95%% CI over seeds per condition and method (the default when the sweep "
                             "swept a seed); best: the best trial per condition (the default otherwise)")
    report.set_defaults(func=cmd_report)
    train = sub.add_parser(
        "train", help="train one split-policy agent from a spec (paper, Dyna or model-free), evaluate, log",
        description="This trains the split policy of a spec in tune_configs/ with RLlib: mode paper fits the reward "
                    "surrogate on a measured grid and trains PPO on it; mode dyna refreshes the surrogate from a "
                    "budget of real LLM evaluations after every iteration; mode model_free rewards every step with "
                    "the real quality. It checkpoints as it goes and a rerun of the same spec resumes an interrupted "
                    "run; a changed spec is refused (exit 2, naming the changed keys) unless --restart or --name. "
                    "How to run: splitlab train tune_configs/dyna.yaml [--set algorithm.iterations=5]. "
                    "Results to expect: per-iteration progress lines, then a table of held-out returns (policy, "
                    "every fixed k, random, oracle; 'vs oracle' is 0 at random and 1 at the oracle), the real LLM "
                    "evaluations used and the wall time; outputs (results.json, k_vs_channel.png, policy/, "
                    "surrogate.npz) in out/NAME/ and one MLflow run.",
    )
    train.add_argument("spec", help="experiment spec YAML (e.g. tune_configs/dyna.yaml)")
    _add_config_flags(train, "a spec field by its dotted path, e.g. --set algorithm.iterations=5 "
                             "--set env.candidate_ks=[0,3,6]")
    train.add_argument("--out", default=None, help="parent folder of the run folder (default: the spec's out)")
    train.add_argument("--name", default=None, help="run name, the run folder out/NAME (default: the spec's name)")
    train.add_argument("--restart", action="store_true",
                       help="start over in the run folder (its outputs deleted) instead of resuming; needed when "
                            "the folder holds a run of another spec, which is otherwise refused with exit status 2")
    train.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///mlflow.db here)")
    train.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    train.set_defaults(func=cmd_train)

    config = sub.add_parser(
        "config", help="the reference of every config: JSON Schema, or docs/config.md",
        description="This prints the JSON Schema of a config (spec, sweep, serve, analysis, demo, env, multi_user, "
                    "channel; all of them without a name), or writes the Markdown reference. "
                    "How to run: splitlab config schema spec; splitlab config docs --out docs/config.md. "
                    "Results to expect: JSON on stdout with every field's type, bounds, default and description; "
                    "or docs/config.md rewritten from the models.",
    )
    config.add_argument("action", choices=["schema", "docs"], help="schema: JSON Schema; docs: write the Markdown")
    config.add_argument("name", nargs="?", default=None, help="which config (schema only; default: all)")
    config.add_argument("--out", default="docs/config.md", help="where docs writes (default docs/config.md)")
    config.set_defaults(func=cmd_config)
    ue = sub.add_parser(
        "ue", help="run the device's half: first k layers here, activations to an edge, tokens back",
        description="This runs the UE half of split inference on this machine against an edge started with "
                    "`serve run splitlab.serve.activation_ingress:build model=smollm2`: it loads only the first "
                    "layers' weights and the tokenizer, sends the hidden state after layer k (never text or "
                    "token ids) and streams the text of the tokens the edge sends back. "
                    "How to run: splitlab ue http://127.0.0.1:8000 'The capital of France is' --k 4 "
                    "--format int8 --max-tokens 16 [--k policy --snr-db 12] [--stats]; the split may move "
                    "between tokens: --k 4,4,4,10 (token i at the i-th k) or --k policy --resplit-every 8 "
                    "--snr-db 25,10,0 (the SNR estimate before tokens 0, 8, 16). "
                    "Results to expect: with --format fp32 or fp16 and --temperature 0 the text equals the "
                    "unsplit model's greedy output; --stats prints bytes up/down and ms per token to stderr.",
    )
    ue.add_argument("url", help="the edge, e.g. http://127.0.0.1:8000")
    ue.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read stdin)")
    ue.add_argument("--k", default="policy",
                    help="split point, a schedule per token (4,4,10: the last holds), or 'policy' to ask the edge "
                         "(default)")
    ue.add_argument("--snr-db", default="30",
                    help="the device's link SNR estimate for the policy; a comma list: one per --resplit-every block")
    ue.add_argument("--resplit-every", type=int, default=0,
                    help="with --k policy: ask the edge's policy again every N tokens (0: once)")
    ue.add_argument("--model", default=None, help="local model spec (default: the one the edge serves)")
    ue.add_argument("--max-k", type=int, default=None, help="deepest split to load layers for (default: the edge's)")
    ue.add_argument("--format", default="fp16", choices=["fp32", "fp16", "bf16", "int8"], help="payload format")
    ue.add_argument("--transport", default="ws", choices=["ws", "http"], help="WebSocket stream or one POST per token")
    ue.add_argument("--api-key", default=None, help="the edge's API key (default: $SPLITLAB_API_KEY)")
    ue.add_argument("--max-tokens", type=int, default=32)
    ue.add_argument("--temperature", type=float, default=0.0)
    ue.add_argument("--top-p", type=float, default=1.0)
    ue.add_argument("--seed", type=int, default=0)
    ue.add_argument("--stop", action="append", default=None, help="stop sequence (repeatable)")
    ue.add_argument("--stats", action="store_true", help="print the generation's bytes and timings as JSON to stderr")
    ue.set_defaults(func=cmd_ue)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser, example: str) -> None:
    """The two flags every command with a config shares: ``--set`` and ``--print-config``."""
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help=f"override {example} (repeatable; the value is read as YAML: numbers, lists, "
                             "null, strings; the key reference is docs/config.md)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        if isinstance(err, FileNotFoundError) and err.filename is None:
            raise  # not a file the user named: an internal error keeps its traceback
        parser.exit(2, f"splitlab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
