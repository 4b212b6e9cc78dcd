"""Loading the typed config tree (utils/config_schema.py) strictly from YAML.

A YAML file may start with ``_base_: other.yaml`` (or a list of files, merged in order, paths relative to
the file): it then holds only what differs. Command-line overrides ``section.key=value`` are merged last.
Unknown keys, wrong types, values outside a ``Literal``'s list or a ``Range`` and YAML syntax errors are
errors that name the key and the file it came from. String values may use ``${VAR}`` or ``${VAR:-default}``
to read the environment (data roots, weights).
"""
from __future__ import annotations

import copy
import dataclasses
import io
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

# re-exported: the config tree is used through this module
from utils.config_schema import Config, EvalConfig, LossConfig, Range, SyntheticConfig  # noqa: F401
from utils.errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _expand_env(text: str) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"environment variable {name} is not set (used in {text!r})")
        return default
    return _ENV_PATTERN.sub(replace, text)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _parse_yaml(text: str, source: str) -> Any:
    """Parses YAML; syntax errors, tabs and duplicate keys become a ConfigError naming ``source`` and the line."""
    try:
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (error.problem or error.context or "invalid YAML").strip()
        if "\t" in text and "tab" not in problem:
            problem += " (tabs cannot indent YAML; use spaces)"
        raise ConfigError(f"invalid YAML in {source}{where}: {problem}") from None
    except YAMLError as error:
        raise ConfigError(f"invalid YAML in {source}: {str(error).splitlines()[0]}") from None


def _merge(base: dict, update: dict, origin: dict, source: str, prefix: str = "") -> None:
    """Deep-merges ``update`` into ``base``, recording in ``origin`` which file set each key."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if not isinstance(base.get(key), dict):
                base[key] = {}
            _merge(base[key], value, origin, source, dotted + ".")
        else:
            base[key] = value
            origin[dotted] = source


def _load_raw(path: Path, origin: dict, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _merge(merged, _load_raw(path.parent / base, origin, seen + (path,)), origin, str(path))
    _merge(merged, data, origin, str(path))
    return merged


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    """Returns ``value`` converted to ``hint`` (int → float allowed), or raises naming the key; ``hint`` may also
    be ``list[...]``, ``Literal[...]`` (value must be one listed) or ``Annotated[..., Range]``."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        value = _check_type(value, base, key, source)
        for extra in extras:
            if isinstance(extra, Range):
                _check_range(value, extra, key, source)
        return value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{key} (from {source}): got {value!r}, expected one of "
                              f"{', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key} (from {source}): expected a list, got {value!r}")
        return [_check_type(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return _expand_env(value)
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{key} (from {source}): expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_range(value: float, bounds: Range, key: str, source: str) -> None:
    too_low = bounds.low is not None and (value <= bounds.low if bounds.open_low else value < bounds.low)
    too_high = bounds.high is not None and value > bounds.high
    if too_low or too_high or value != value:  # value != value: NaN
        low = "" if bounds.low is None else f"{'>' if bounds.open_low else '>='} {bounds.low:g}"
        high = "" if bounds.high is None else f"<= {bounds.high:g}"
        expected = " and ".join(filter(None, (low, high)))
        raise ConfigError(f"{key} (from {source}): got {value!r}, expected a value {expected}")


def _build(cls: type, raw: dict, origin: dict, prefix: str = "") -> Any:
    fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    for key in raw:
        if key not in fields:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"unknown config key '{dotted}' (from {origin.get(dotted, 'defaults')}); "
                              f"valid keys in '{prefix.rstrip('.') or 'top level'}': {', '.join(fields)}")
    kwargs = {}
    for key, f in fields.items():
        dotted, hint = f"{prefix}{key}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw.setdefault(key, {}), dict):
                raise ConfigError(f"{dotted} (from {origin.get(dotted, '?')}): expected a section, got {raw[key]!r}")
            kwargs[f.name] = _build(hint, raw[key], origin, dotted + ".")
        elif key not in raw:
            if hint is str:  # defaults may read the environment too
                kwargs[f.name] = _expand_env(f.default)
        else:
            kwargs[f.name] = _check_type(raw[key], hint, dotted, origin.get(dotted, "?"))
    return cls(**kwargs)


def _apply_overrides(raw: dict, origin: dict, overrides: list[str]) -> None:
    """Merges ``section.key=value`` overrides (value in YAML syntax) into ``raw``."""
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not of the form section.key=value")
        key, value = text.split("=", 1)
        source = f"command line '{text}'"
        nested = _parse_yaml(value, source) if value.strip() else ""
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(raw, nested, origin, source)


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Loads ``path`` (with its ``_base_`` chain) and ``key=value`` overrides into a validated Config."""
    origin: dict[str, str] = {}
    return _build_checked(_load_raw(Path(path), origin), origin, overrides)


def config_to_dict(config: Any) -> dict:
    """The config as plain nested dicts with YAML key names (round-trips through load_config)."""
    return {_yaml_key(f): (config_to_dict(v) if dataclasses.is_dataclass(v := getattr(config, f.name)) else v)
            for f in dataclasses.fields(config)}


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    """Rebuilds a Config from ``config_to_dict`` output (e.g. the copy stored in a checkpoint)."""
    return _build_checked(copy.deepcopy(raw), {}, overrides)


def _build_checked(raw: dict, origin: dict, overrides: list[str]) -> Config:
    """Applies ``overrides`` to ``raw`` and builds the Config, then checks what single-key types cannot: list
    lengths, device names and values that must agree."""
    _apply_overrides(raw, origin, overrides)
    config = _build(Config, raw, origin)

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key} (from {origin.get(key, 'defaults')}): {message}")

    if len(config.model.image_size) != 2:
        fail("model.image_size", f"expected [height, width], got {config.model.image_size}")
    if len(config.optim.betas) != 2:
        fail("optim.betas", f"expected two values [beta1, beta2], got {config.optim.betas}")
    devices = {"train.device": config.train.device, "eval.image_tokens_device": config.eval.image_tokens_device}
    for key, device in devices.items():
        if not DEVICE_PATTERN.fullmatch(device):
            fail(key, f"got {device!r}, expected auto, cpu, cuda or cuda:N")
    if config.optim.min_lr > config.optim.lr:
        fail("optim.min_lr", f"{config.optim.min_lr:g} is above optim.lr {config.optim.lr:g}")
    per_id, batch = config.data.instances_per_id, config.data.global_batch_size
    if per_id and batch % per_id:
        fail("data.instances_per_id", f"{per_id} does not divide data.global_batch_size {batch}")
    if per_id and batch < 2 * per_id:
        fail("data.instances_per_id", f"batches of {batch} with {per_id} images per person hold one identity: the "
                                      "ITM loss needs at least two per batch for its hard negatives")
    if config.eval.visualize_mode == "ids" and not config.eval.visualize_ids:
        fail("eval.visualize_ids", "eval.visualize_mode=ids needs a list of query indices")
    return config


def dump_config(config: Config, path: str | Path | None = None) -> str:
    """Writes the resolved config as YAML to ``path`` (if given) and returns the text."""
    stream = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.dump(config_to_dict(config), stream)
    text = stream.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text

