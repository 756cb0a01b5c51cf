"""Typed configuration: the base model of every splitlab config, its errors, and ``--set`` overrides.

Every config (experiment spec sections, env, channel, serve, analysis, sweep) is a pydantic v2 model
derived from :class:`ConfigModel`: unknown keys are refused, choices are ``Literal``s, ranges are
``Field`` bounds, and the docstring under each field is its documentation (it feeds
``splitlab config schema`` and docs/config.md). A bad value raises :class:`ConfigError` (a
``ValueError``) whose one line names the dotted path, the value and what is accepted.

Overrides are one syntax on every command: ``--set a.b.c=VALUE``, the value read as YAML (numbers,
lists, null, strings) and then validated by the field's type; where the field is a string, the text
is kept as written (a model path ``0010`` stays ``"0010"``).
"""
from __future__ import annotations

import contextvars
import copy
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from splitlab.dotted import set_dotted

Int = Annotated[int, Strict()]
"""An integer; ``true`` and ``1.5`` are refused."""
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite number (integers accepted); strings and booleans are refused."""
Bool = Annotated[bool, Strict()]
"""``true`` or ``false``; ``"yes"`` and ``1`` are refused."""
Str = Annotated[str, Strict()]
"""A string; numbers are refused (the ``--set`` parser keeps the text of a string field)."""
PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]

M = TypeVar("M", bound="ConfigModel")
_VALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("splitlab_config_validating", default=False)
"""True inside a validation: a nested model's custom ``__init__`` then leaves errors to pydantic."""


class ConfigError(ValueError):
    """A config value that does not validate; the message names the dotted path and what is accepted."""


class ConfigModel(BaseModel):
    """Base of every splitlab config: strict keys, field docstrings as documentation, plain-data dumps."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True,
                              arbitrary_types_allowed=True)
    label: ClassVar[str] = "config"
    """What an unknown-key error calls this config at the top level (``unknown env config keys [...]``)."""

    def __init__(self, **data: Any) -> None:
        if _VALIDATING.get():  # nested inside another validation: let pydantic place the error
            super().__init__(**data)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as err:  # keyword construction reports like from_dict
            raise ConfigError(describe_error(err, data, type(self))) from None
        finally:
            _VALIDATING.reset(token)

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any] | M | None, name: str = "") -> M:
        """Validate a mapping (a YAML section; None: all defaults); errors are prefixed with ``name``."""
        if isinstance(data, cls):
            return data
        return validate(cls, {} if data is None else data, name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), for YAML, JSON and MLflow params."""
        return self.model_dump(mode="json")

    def replace(self: M, **changes: Any) -> M:
        """A validated copy with some fields changed."""
        return validate(type(self), {**dict(self), **changes}, "")


def validate(cls: type[M], data: Any, name: str = "") -> M:
    """``cls.model_validate(data)`` with a :class:`ConfigError` that names the path, the value, what is accepted."""
    token = _VALIDATING.set(True)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_error(err, data, cls, name)) from None
    finally:
        _VALIDATING.reset(token)


def describe_error(err: ValidationError, data: Any, cls: type[BaseModel] | None = None, name: str = "") -> str:
    """``algorithm.lr: must be greater than 0, got -1``; unknown keys grouped per mapping with the accepted ones."""
    lines: list[str] = []
    unknown: dict[tuple, list[str]] = {}
    for problem in err.errors(include_url=False):
        path = _readable_path(problem["loc"], data)
        if problem["type"] == "extra_forbidden":
            unknown.setdefault(tuple(path[:-1]), []).append(str(path[-1]))
            continue
        where = ".".join(str(p) for p in ([name] if name else []) + path) or (name or "config")
        if problem["type"] == "missing":
            lines.append(f"{where} is required")
            continue
        lines.append(_sentence(where, problem))
    for parent, keys in unknown.items():
        where = ".".join(str(p) for p in ([name] if name else []) + list(parent))
        where = where or getattr(cls, "label", "") or "config"
        accepted = _accepted_keys(cls, list(parent), data) if cls else []
        hint = f"; accepted keys: {accepted}" if accepted else ""
        lines.insert(0, f"unknown {where} keys {sorted(keys)}{hint}")
    return "; ".join(lines[:3])


def _sentence(where: str, problem: Mapping[str, Any]) -> str:
    """``preset must be 'paper' or 'wireless', got 'papers'`` from one pydantic problem."""
    msg = str(problem["msg"])
    got = f", got {problem.get('input')!r}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if where in msg or where in ("", "config"):  # names its own field(s)
            return msg
        if msg.startswith("is required"):
            return f"{where} {msg}"
        if re.match(r"^[a-z_][a-z0-9_]* (must|is) ", msg):  # a model-level check naming one of its fields
            return f"{where}.{msg}"
        if not msg.startswith("must"):
            return f"{where}: {msg}"
        return f"{where} {msg}{got}"
    ctx = problem.get("ctx") or {}
    if problem["type"] == "literal_error":
        return f"{where} must be one of {ctx['expected']}{got}"
    if problem["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("discriminator", "'kind'").strip("'")
        value = f", got {ctx['tag']!r}" if "tag" in ctx else " (missing)"
        return f"{where}.{tag} must be one of {ctx.get('expected_tags')}{value}"
    plain = {"bool_type": "must be true or false", "int_type": "must be an integer", "float_type": "must be a number",
             "string_type": "must be a string", "int_from_float": "must be an integer",
             "finite_number": "must be a finite number", "dict_type": "must be a mapping"}
    if problem["type"] in plain:
        return f"{where} {plain[problem['type']]}{got}"
    if problem["type"] == "too_short":
        return f"{where} must have at least {ctx.get('min_length')} item(s){got}"
    if problem["type"] == "too_long":
        return f"{where} must have at most {ctx.get('max_length')} item(s){got}"
    msg = msg.replace("Input should be", "must be").replace("Input should have", "must have")
    if not msg.startswith("must"):
        msg = "is invalid: " + msg[0].lower() + msg[1:]
    return f"{where} {msg}{got}"


def _readable_path(loc: Iterable[Any], data: Any) -> list[Any]:
    """Drop the tags pydantic adds for ``kind``-keyed unions (``quality.live.n_tokens`` -> ``quality.n_tokens``)."""
    out, node = [], data
    for part in loc:
        if isinstance(node, Mapping) and part not in node and any(node.get(tag) == part for tag in ("kind", "env")):
            continue  # the union's tag, not a key of the data
        if isinstance(part, str) and part.startswith(("function-", "tagged-union[")):
            continue
        out.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _accepted_keys(cls: type[BaseModel], path: list[Any], data: Any) -> list[str]:
    """The field names of the model at ``path`` (following ``kind`` tags through unions)."""
    model: Any = cls
    node = data
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        node = node.get(part) if isinstance(node, Mapping) else None
        model = _model_for(model.model_fields[part].annotation, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_for(annotation: Any, node: Any) -> Any:
    """The model class inside ``annotation`` (a model, ``X | None`` or a kind-keyed union) for data ``node``."""
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _model_for(args[0], node)
    if not args:
        return annotation
    models = [_model_for(a, node) for a in args]
    models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
    kind = node.get("kind") if isinstance(node, Mapping) else None
    for m in models:
        field = m.model_fields.get("kind")
        if field is not None and kind in typing.get_args(field.annotation):
            return m
    return models[0] if len(models) == 1 else None


# ------------------------------------------------------------------------------------ overrides
class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); YAML 1.2 and every user read it as a number."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """The YAML value of ``text`` (``5`` -> 5, ``[0,3]`` -> [0, 3], ``null`` or ``none`` -> None, ``1e-3`` -> 0.001)."""
    if text.strip() in ("none", "None"):  # what `serve run key=none` users write for null
        return None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return text


def parse_setting(text: str) -> tuple[str, str]:
    """``"a.b=VALUE"`` -> ``("a.b", "VALUE")``; the value stays text until :func:`apply_settings` types it."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"expected KEY=VALUE with a dotted key like algorithm.lr=0.001, got {text!r}")
    return key, value.strip()


def apply_settings(cls: type[M], data: Mapping[str, Any] | None, settings: Iterable[tuple[str, Any]] | Mapping[str, Any],
                   name: str = "") -> M:
    """Validate ``data`` with dotted overrides applied (``--set`` pairs, or a mapping of dotted keys).

    A text value is read as YAML, except where the field is a string: there the text is kept as written.
    Other values are set as they are.
    """
    return validate(cls, settle(cls, data, settings), name)


def settle(cls: type[BaseModel], data: Mapping[str, Any] | None,
           settings: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the overrides of :func:`apply_settings` applied and typed for ``cls`` (not yet validated)."""
    tree = copy.deepcopy(dict(data or {}))
    pairs = list(settings.items()) if isinstance(settings, Mapping) else list(settings)
    texts = {key: value for key, value in pairs if isinstance(value, str)}
    for key, value in pairs:
        set_dotted(tree, key, yaml_value(value) if isinstance(value, str) else value)
    if not texts:
        return tree
    def fails(dotted: str, failing: set[str]) -> bool:
        return any(p == dotted or p.startswith(dotted + ".") for p in failing)

    failing = _failing_paths(cls, tree)
    retried = {}
    for dotted, text in texts.items():
        if fails(dotted, failing) and not isinstance(yaml_value(text), str):
            retried[dotted] = yaml_value(text)
            set_dotted(tree, dotted, text)  # refused as YAML: try the text as written (a string field)
    still = _failing_paths(cls, tree) if retried else set()
    for dotted, value in retried.items():
        if fails(dotted, still):  # the text fails too: report the YAML value's error
            set_dotted(tree, dotted, value)
    return tree


def _failing_paths(cls: type[BaseModel], tree: dict[str, Any]) -> set[str]:
    token = _VALIDATING.set(True)
    try:
        cls.model_validate(tree)
        return set()
    except ValidationError as err:
        return {".".join(str(p) for p in _readable_path(problem["loc"], tree))
                for problem in err.errors(include_url=False)}
    finally:
        _VALIDATING.reset(token)


def read_yaml_mapping(path: Any, what: str = "config") -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing file, bad YAML or a non-mapping is a clear error."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a {what} must be a YAML mapping of sections, got {type(raw).__name__}")
    return dict(raw)


def to_yaml(config: BaseModel | Mapping[str, Any]) -> str:
    """A config as YAML (what ``--print-config`` prints)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
