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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
