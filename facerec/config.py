"""Run configuration: YAML -> frozen dataclasses, with type-checked ``--set`` overrides.

Sections follow the training recipe of the DRConv paper (section 4.2, MobileFaceNet on MS1M-V2:
SGD momentum 0.9, lr 0.1 divided by 10 at 252k/364k/406k iterations, 420k iterations, batch 512)
and the MobileFaceNet weight-decay split (4e-5, 4e-4 after the global operator). Unknown keys and
wrong types are errors that name the dotted key (and, for a typo, the closest valid key). Derived
values are properties; nothing is written back into a config.

Inheritance: a YAML file may name another with ``base: other.yaml`` (a path relative to the file's folder);
the file's keys are laid over the base's, mappings key by key (so a child that sets ``model.name`` keeps the
base's ``model.input_size``), lists and scalars replaced whole. Bases may have bases; a missing base or a
cycle is a ValueError naming the chain. ``name`` is never inherited: it is the leaf file's own ``name`` or stem.

Loading is bounded (``facerec._yaml``, ``docs/security.md``): an oversized file, or a YAML document (file or
``--set`` value) too large once its aliases are expanded or that refers to itself, is refused before it is
built. Errors quote the rejected value cut to a few hundred characters.

Public API: :class:`Config` and its sections, :func:`load_config`, :func:`config_from_dict`,
:func:`config_to_dict`, :func:`apply_overrides`, :func:`save_config`.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from facerec._quote import quote
from facerec._yaml import load_yaml, read_yaml_file

__all__ = [
    "CheckpointConfig", "Config", "DataConfig", "EvalConfig", "HeadConfig", "ModelConfig",
    "OptimConfig", "ScheduleConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "config_to_dict", "load_config", "save_config",
]

AMP_MODES = ("none", "fp16", "bf16")


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"config key {key}: got {quote(value)}, allowed: {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone: ``facerec.models.create_model(name, input_size, embedding_size, **options)``."""
    name: str = "drconv_mobilefacenet"
    input_size: tuple[int, int] = (112, 96)  # (H, W); the paper uses 112x96
    embedding_size: int = 128
    options: dict = field(default_factory=dict)  # extra keyword arguments for create_model

    def __post_init__(self) -> None:
        _check(all(s > 0 for s in self.input_size), "model.input_size", self.input_size, "two positive ints")
        _check(self.embedding_size > 0, "model.embedding_size", self.embedding_size, "> 0")


@dataclass(frozen=True)
class HeadConfig:
    """Margin head: ``facerec.models.create_head(name, embedding_size, num_classes, **options)``."""
    name: str = "amsoftmax"
    options: dict = field(default_factory=dict)  # e.g. {s: 30.0, m: 0.35}


@dataclass(frozen=True)
class DataConfig:
    """Training set (InsightFace RecordIO folder) and loader."""
    path: str = "data/ms1m-v2"  # folder holding train.rec/train.idx/property and the .bin sets
    batch_size: int = 512  # global batch; each of G ranks takes batch_size / G
    num_workers: int = 4  # DataLoader worker processes per rank
    skip_corrupt: bool = False  # skip undecodable records instead of failing
    synthetic: bool = False  # generate the synthetic set into `path` on first use
    synthetic_options: dict = field(default_factory=dict)  # keyword arguments for ensure_synthetic

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "data.batch_size", self.batch_size, "> 0")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")


@dataclass(frozen=True)
class OptimConfig:
    """SGD with the MobileFaceNet weight-decay split."""
    name: str = "sgd"
    lr: float = 0.1  # base learning rate (for the global batch, whatever the number of ranks)
    # the global batch lr belongs to; > 0: the runner uses lr * data.batch_size / lr_batch (linear scaling
    # rule, Goyal et al. 2017); 0: lr as given, whatever the batch
    lr_batch: int = 0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5  # everything before the global depthwise conv
    weight_decay_last: float = 4e-4  # layers after the GDConv and the classifier
    # x the decay of DRConv's per-region filter parts (PaperFilterGenerator.region_parameter_names): > 1 pulls
    # each region's filter towards the layer's shared filter harder
    weight_decay_region_factor: float = 1.0
    grad_clip: float = 0.0  # max global gradient L2 norm; 0 disables clipping

    def __post_init__(self) -> None:
        _check(self.name == "sgd", "optim.name", self.name, "'sgd'")
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.lr_batch >= 0, "optim.lr_batch", self.lr_batch, ">= 0 (0: no scaling)")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "[0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        _check(self.weight_decay_last >= 0, "optim.weight_decay_last", self.weight_decay_last, ">= 0")
        _check(self.weight_decay_region_factor >= 0, "optim.weight_decay_region_factor",
               self.weight_decay_region_factor, ">= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Iteration schedule: optional linear warm-up, then multistep decay; see facerec.train.schedule."""
    total_steps: int = 420_000
    milestones: tuple[int, ...] = (252_000, 364_000, 406_000)
    gamma: float = 0.1  # lr factor applied at each milestone
    warmup_steps: int = 0  # lr ramps linearly over these first steps

    def __post_init__(self) -> None:
        _check(self.total_steps > 0, "schedule.total_steps", self.total_steps, "> 0")
        _check(list(self.milestones) == sorted(set(self.milestones)) and all(m > 0 for m in self.milestones),
               "schedule.milestones", self.milestones, "strictly increasing positive ints")
        _check(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, ">= 0")
        _check(self.gamma > 0, "schedule.gamma", self.gamma, "> 0")


@dataclass(frozen=True)
class TrainConfig:
    """Run-level switches."""
    seed: int = 0
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda
    amp: str = "none"  # none | fp16 (with GradScaler) | bf16
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    log_every: int = 50  # steps between text-log / metrics lines
    threads: int = 0  # torch.set_num_threads per process; 0 leaves torch's default
    out_dir: str = ""  # run folder; "" means runs/<name>
    resume: str = ""  # "" (fresh), "auto" (newest valid checkpoint in out_dir) or a checkpoint path
    tensorboard: bool = True  # write TensorBoard scalars when tensorboard is installed

    def __post_init__(self) -> None:
        _check(self.amp in AMP_MODES, "train.amp", self.amp, ", ".join(AMP_MODES))
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "auto, cpu, cuda")
        _check(self.log_every > 0, "train.log_every", self.log_every, "> 0")
        _check(self.threads >= 0, "train.threads", self.threads, ">= 0")


@dataclass(frozen=True)
class EvalConfig:
    """Verification during training (10-fold protocol) on .bin pair sets."""
    sets: tuple[str, ...] = ()  # .bin files; relative paths are taken inside data.path
    every: int = 10_000  # steps between verifications (and at the end); 0 only at the end
    batch_size: int = 256
    nfolds: int = 10

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", self.every, ">= 0")
        _check(self.batch_size > 0, "eval.batch_size", self.batch_size, "> 0")
        _check(self.nfolds >= 2, "eval.nfolds", self.nfolds, ">= 2")


@dataclass(frozen=True)
class CheckpointConfig:
    """Atomic checkpoints in the run folder."""
    every: int = 10_000  # steps between checkpoints (one is always written at the end)
    keep: int = 3  # how many of the newest checkpoints to keep

    def __post_init__(self) -> None:
        _check(self.every > 0, "checkpoint.every", self.every, "> 0")
        _check(self.keep > 0, "checkpoint.keep", self.keep, "> 0")


@dataclass(frozen=True)
class Config:
    """A whole run. ``name`` defaults to the YAML file's stem."""
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def out_dir(self) -> Path:
        """The run folder: ``train.out_dir`` or ``runs/<name>``."""
        return Path(self.train.out_dir) if self.train.out_dir else Path("runs") / self.name


def _closest(key: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(key[:100], list(valid), n=1, cutoff=0.0)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (YAML types) and return it in the field's type."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            raise TypeError(f"config key {key}: expected a list of {len(args)} items, got {quote(value)}")
    else:
        raise TypeError(f"config key {key}: unsupported field type {tp!r}")
    raise TypeError(f"config key {key}: expected {_type_name(tp)}, got {type(value).__name__} {quote(value)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "top level"
        raise TypeError(f"config {where}: expected a mapping, got {type(data).__name__} {quote(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            valid = [prefix + n for n in names]
            raise ValueError(f"unknown config key {quote(dotted)}{_closest(dotted, valid)}; "
                             f"valid keys here: {', '.join(valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from nested plain data (a parsed YAML file or a checkpoint's copy).

    Raises:
        ValueError: an unknown key (naming the closest valid key) or an out-of-range value.
        TypeError: a value of the wrong type (naming the key and the expected type).
    """
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML, JSON and ``torch.load(weights_only=True)``."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def _parse_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ValueError(f"override {quote(item)}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = item.split("=", 1)
    return key.strip().split("."), raw.strip()


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    if tp is str:
        return raw
    if typing.get_origin(tp) is tuple and not raw.startswith("["):
        return [load_yaml(p, f"override {key}") for p in raw.split(",") if p.strip()]
    return load_yaml(raw, f"override {key}")


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Return ``cfg`` with ``section.key=value`` overrides applied and type-checked.

    Values are parsed as YAML (``0.1`` float, ``true`` bool, ``[112,96]`` or ``112,96`` list);
    string fields take the text as is. Dict fields take a sub-key: ``head.options.s=64``.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        path, raw = _parse_override(item)
        cls: Any = Config
        node = data
        for depth, part in enumerate(path):
            dotted = ".".join(path[: depth + 1])
            if cls is dict:
                if depth != len(path) - 1:
                    raise ValueError(f"override {quote(item)}: nested keys below {'.'.join(path[:depth])} "
                                     "are not supported")
                node[part] = load_yaml(raw, f"override {dotted}") if raw else ""
                break
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                prefix = ".".join(path[:depth])
                valid = [f"{prefix}.{n}" if prefix else n for n in names]
                raise ValueError(f"unknown config key {quote(dotted)}{_closest(dotted, valid)}; "
                                 f"valid keys here: {', '.join(valid)}")
            tp = typing.get_type_hints(cls)[part]
            if depth == len(path) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ValueError(f"override {quote(item)}: {dotted} is a section; set one of its keys")
                node[part] = _coerce(_parse_value(raw, tp, dotted), tp, dotted)
            else:
                if not (dataclasses.is_dataclass(tp) or tp is dict or typing.get_origin(tp) is dict):
                    raise ValueError(f"override {quote(item)}: {dotted} is not a section")
                cls = tp if dataclasses.is_dataclass(tp) else dict
                node = node[part]
    return config_from_dict(data)


BASE_KEY = "base"


def _merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict:
    """``child`` laid over ``base``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The file's data with its ``base:`` chain merged in (without the ``base`` key)."""
    resolved = path.resolve()
    if resolved in chain:
        names = " -> ".join(str(p) for p in (*chain, resolved))
        raise ValueError(f"config inheritance cycle: {names}")
    data = read_yaml_file(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise TypeError(f"config file {path}: '{BASE_KEY}' must be a file name (relative to {path.parent}), "
                        f"got {quote(base)}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ValueError(f"config file {path}: base {quote(base)} not found (looked for {base_path})")
    inherited = _resolve(base_path, (*chain, resolved))
    inherited.pop("name", None)
    return _merge(inherited, data)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (and its ``base:`` chain), apply ``--set`` style overrides, validate everything.

    ``name`` defaults to the file's stem (so ``configs/demo.yaml`` runs in ``runs/demo``).
    """
    path = Path(path)
    data = _resolve(path)
    data.setdefault("name", path.stem)
    try:
        cfg = config_from_dict(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return apply_overrides(cfg, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable by :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
