"""One typed config tree, loaded strictly from YAML.

A YAML file may start with ``_base_: other.yaml`` (or a list of files, merged in order, paths relative to
the file): it then holds only what differs. Command-line overrides ``section.key=value`` are merged last.
Unknown keys and wrong types are errors that name the key, the file it came from and the valid keys.
String values may use ``${VAR}`` or ``${VAR:-default}`` to read the environment (data roots, weights).
"""
from __future__ import annotations

import copy
import dataclasses
import io
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from utils.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "cada_base"  # key of models.registry.MODELS
    image_size: list[int] = field(default_factory=lambda: [384, 128])  # (H, W), divisible by the patch
    pretrained: str = ""  # BLIP model_base.pth or a CADA checkpoint; "" = random init
    tokenizer: str = ""  # folder or vocab.txt of another BERT tokenizer; "" = the bundled one
    max_text_len: int = 73
    decoder_causal: bool = True  # reference: causal self-attention in the ARA decoder


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # cuhk_pedes | icfg_pedes | rstpreid | synthetic
    root: str = "${CADA_DATA_ROOT:-data}"  # folder holding CUHK-PEDES/, ICFG-PEDES/, RSTPReid/
    synthetic_ids: int = 600  # identities generated when the synthetic folder is missing
    synthetic_images_per_id: int = 4
    synthetic_seed: int = 0
    synthetic_fresh_renders: bool = False  # synthetic only: draw each training photo anew per (epoch, sample)
    val_from_train: float = 0.0  # fraction of training identities carved out as val (ICFG has no val)
    val_seed: int = 0
    batch_size: int = 24  # per process
    instances_per_id: int = 0  # > 0: identity-balanced batches of batch_size / instances_per_id people
    num_workers: int = 2
    flip: bool = True
    pad: int = 10
    erasing: float = 0.5
    eval_captions: str = "all"  # all | first_two (the reference's CUHK-PEDES protocol)
    attribute_tagger: str = "auto"  # auto | textblob | lexicon | nltk


@dataclass
class GlobalLossConfig:
    weight: float = 1.0
    scale: float = 50.0
    forward_kl: float = 1.0
    reverse_kl: float = 1.0
    cross_entropy: float = 1.0


@dataclass
class ITMLossConfig:
    weight: float = 1.0
    negatives: str = "argmax"  # argmax (reference) | multinomial (BLIP)
    temperature: float = 0.07


@dataclass
class ATPLossConfig:
    weight: float = 1.0
    mode: str = "reference"  # reference | adaptive
    groups: int = 2
    mask_padding: bool = False


@dataclass
class ARALossConfig:
    weight: float = 0.1
    mode: str = "token"  # token | phrase
    prob: float = 0.4


@dataclass
class LossConfig:
    global_: GlobalLossConfig = field(default_factory=GlobalLossConfig, metadata={"key": "global"})
    itm: ITMLossConfig = field(default_factory=ITMLossConfig)
    atp: ATPLossConfig = field(default_factory=ATPLossConfig)
    ara: ARALossConfig = field(default_factory=ARALossConfig)
    local_warmup_steps: int = 0  # ITM and ATP weights ramp linearly from 0 over these steps (0 = full from the start)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    decay_norm_and_bias: bool = True  # reference: weight decay on every parameter
    new_head_lr_mult: float = 1.0  # lr multiplier for heads absent from the pre-trained weights
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    output_dir: str = "outputs/run"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "off"  # off | bf16 | fp16
    grad_checkpointing: bool = False
    accumulate_steps: int = 1
    clip_grad_norm: float = 0.0  # 0 = off
    save_every_steps: int = 0  # 0 = only at the end of each epoch
    resume: str = ""  # "" | auto | path to a checkpoint
    log_every: int = 20
    eval_every: int = 1  # epochs between val evaluations
    select_metric: str = "R1"  # val metric that picks best.pth; ICFG without val: "last"


@dataclass
class EvalConfig:
    split: str = "test"  # val | test
    batch_size: int = 64
    k_test: int = 16
    rerank: bool = True
    chunk_size: int = 448  # queries scored at once; bounds memory (see utils/metrics.py)
    rerank_batch_queries: int = 16
    rerank_logit_weight: float = 1.0  # stage 2 orders the top k by cos + weight * ITM logit
    image_tokens_dtype: str = "float32"  # float32 | float16 | bfloat16
    image_tokens_device: str = "auto"  # auto | cpu | cuda
    image_to_text: bool = False
    visualize: int = 0  # number of queries drawn as PNG grids
    visualize_mode: str = "random"  # random | worst | ids
    visualize_ids: list[int] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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
    data = YAML(typ="safe").load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


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
    """Returns ``value`` converted to ``hint`` (int → float allowed), or raises naming the key."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key} (from {source}): expected a list, got {value!r}")
        return [_check_type(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return _expand_env(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} (from {source}): expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: dict, origin: dict, prefix: str = "") -> Any:
    fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
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


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``section.key=value`` (value in YAML syntax) into (path, value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    parsed = YAML(typ="safe").load(value) if value.strip() else ""
    return key.strip().split("."), parsed


def _apply_overrides(raw: dict, origin: dict, overrides: list[str]) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for key in reversed(keys):
            nested = {key: nested}
        _merge(raw, nested, origin, f"command line '{text}'")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Loads ``path`` (with its ``_base_`` chain) and ``key=value`` overrides into a validated Config."""
    origin: dict[str, str] = {}
    raw = _load_raw(Path(path), origin)
    _apply_overrides(raw, origin, overrides)
    return _build(Config, raw, origin)


def config_to_dict(config: Any) -> dict:
    """The config as plain nested dicts with YAML key names (round-trips through load_config)."""
    return {_yaml_key(f): (config_to_dict(v) if dataclasses.is_dataclass(v := getattr(config, f.name)) else v)
            for f in dataclasses.fields(config)}


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    """Rebuilds a Config from ``config_to_dict`` output (e.g. the copy stored in a checkpoint)."""
    origin = {}
    raw = copy.deepcopy(raw)
    _apply_overrides(raw, origin, overrides)
    return _build(Config, raw, origin)


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

