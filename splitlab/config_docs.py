"""The reference of every config: JSON Schema (``splitlab config schema NAME``) and docs/config.md.

docs/config.md is generated from the models' fields and docstrings (``splitlab config docs``); a test
fails when the committed file differs from what the models say.
"""
from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def configs() -> dict[str, tuple[type[BaseModel], str]]:
    """Config name -> (model, where it is used): what ``config schema`` and the reference cover."""
    from splitlab.channel import ChannelConfig
    from splitlab.envs.config import SplitEnvConfig
    from splitlab.envs.multi_user import MultiUserConfig
    from splitlab.platform.analysis import AnalysisConfig
    from splitlab.platform.demo import DemoConfig
    from splitlab.platform.spec import ExperimentSpec, SweepFile
    from splitlab.serve.config import ServeConfig

    return {
        "spec": (ExperimentSpec, "`splitlab train SPEC.yaml` (tune_configs/*.yaml); `--set KEY=VALUE` on train"),
        "sweep": (SweepFile, "`splitlab sweep SPEC.yaml`: an experiment spec plus a `sweep:` section"),
        "serve": (ServeConfig, "`splitlab serve` (`--set`, `--config`), `serve run splitlab.serve.app:build k=v`, "
                               "a Serve config file's `args`"),
        "analysis": (AnalysisConfig, "`splitlab analyze` (its flags and `--set KEY=VALUE`)"),
        "demo": (DemoConfig, "`splitlab demo`"),
        "env": (SplitEnvConfig, "a SplitEnv's config (an experiment spec's `env:` section, without `reward_model`)"),
        "multi_user": (MultiUserConfig, "a MultiUserSplitEnv's config (`env: multi_user` in a spec)"),
        "channel": (ChannelConfig, "a channel (`quality.channel`, `env.channel`, analysis `channel_settings`)"),
    }


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of config ``name``."""
    table = configs()
    if name not in table:
        raise ValueError(f"config must be one of {sorted(table)}, got {name!r}")
    return table[name][0].model_json_schema()


def schema_json(name: str | None = None) -> str:
    """One config's JSON Schema, or all of them keyed by name."""
    data = schema(name) if name else {n: schema(n) for n in configs()}
    return json.dumps(data, indent=2, sort_keys=False)


# ------------------------------------------------------------------------------------ markdown
def markdown() -> str:
    """docs/config.md: every key of every config with its type, default, range and meaning."""
    out = ["# Configuration reference", "",
           "Generated from the config models by `splitlab config docs` (do not edit by hand; a test checks it is "
           "current). Every command takes `--set a.b.c=VALUE` (the value read as YAML, then checked against the "
           "field's type) and `--print-config` (the resolved config as YAML). `splitlab config schema NAME` prints "
           "the JSON Schema.", ""]
    documented: dict[type, str] = {}  # a model's keys are listed once, where it first appears
    for name, (model, where) in configs().items():
        out += [f"## `{name}`: {model.__name__}", "", f"Used by {where}.", ""]
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            out += [doc[0], ""]
        if model not in documented:
            out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        if model in documented:
            out += [f"The keys of `{documented[model]}` above.", ""]
            continue
        documented[model] = name
        out += _rows(model, "", documented)
        out.append("")
    return "\n".join(out)


def _rows(model: type[BaseModel], prefix: str, documented: dict[type, str]) -> list[str]:
    """One row per field, then the fields of each nested model (a model met before points to its rows)."""
    rows = []
    for key, field in model.model_fields.items():
        path = f"{prefix}{key}"
        rows.append(f"| `{path}` | {_type(field.annotation)}{_bounds(field)} | {_default(field)} | "
                    f"{_one_line(field.description)} |")
        for sub in _submodels(field.annotation):
            kind = _kind_of(sub)
            label = f"{path}" + (f" (kind {kind})" if kind else "")
            if sub in documented:
                rows.append(f"| **{label}** | | | the keys of `{documented[sub]}` |")
                continue
            documented[sub] = label
            rows.append(f"| **{label}** | | | {_one_line(sub.__doc__)} |")
            rows += _rows(sub, f"{path}.", documented)
    return rows


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for sub in _submodels(arg):
            if sub not in out:
                out.append(sub)
    return out


def _kind_of(model: type[BaseModel]) -> str | None:
    for tag in ("kind", "env"):
        field = model.model_fields.get(tag)
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            return "/".join(typing.get_args(field.annotation))
    return None


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, __import__("types").UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"list of {_type(inner[0])}" if inner else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "mapping"}.get(
            annotation.__name__, annotation.__name__)
    return "any"


def _bounds(field: FieldInfo) -> str:
    marks = []
    for meta in _metadata(field):
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len >="),
                           ("multiple_of", "multiple of")):
            value = getattr(meta, attr, None)
            if value is not None:
                marks.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
    return f" ({', '.join(marks)})" if marks else ""


def _metadata(field: FieldInfo) -> list[Any]:
    out = list(field.metadata)
    stack = [field.annotation]
    while stack:  # bounds inside Annotated[...] and X | None
        ann = stack.pop()
        if typing.get_origin(ann) is typing.Annotated:
            out += list(typing.get_args(ann)[1:])
            stack.append(typing.get_args(ann)[0])
        elif typing.get_origin(ann) in (typing.Union, __import__("types").UnionType):
            stack += list(typing.get_args(ann))
    flat = []
    for meta in out:
        flat += list(getattr(meta, "metadata", [])) or [meta]
    return flat


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(see below)"
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "**required**"
    value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`" if not isinstance(value, BaseModel) else "(see below)"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")
