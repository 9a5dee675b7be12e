"""Typed configuration: the one home of every default.

A YAML file overrides only what differs; ``load_config`` rejects unknown keys (listing the valid
ones) and values of the wrong type or range, naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "ConfigError",
    "Config",
    "FeatureConfig",
    "TaskConfig",
    "WindowConfig",
    "ModelConfig",
    "TrainConfig",
    "AugmentConfig",
    "PostprocessConfig",
    "GbdtConfig",
    "StackConfig",
    "load_config",
    "config_to_dict",
    "config_from_dict",
    "feature_hash",
    "REFERENCE_CLASSES",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


# The reference setup collapsed 37 actions into 4 classes (0 = none). Later classes win a frame.
REFERENCE_CLASSES: dict[str, list[str]] = {
    "investigation": [
        "approach", "sniff", "sniffbody", "sniffface", "sniffgenital", "reciprocalsniff",
        "follow", "allogroom", "shepherd",
    ],
    "mount": ["mount", "attemptmount", "intromit", "ejaculate", "dominancemount"],
    "aggression": [
        "attack", "chase", "chaseattack", "tussle", "dominance", "dominancegroom", "defend",
        "submit", "avoid", "escape", "flinch", "disengage",
    ],
}


@dataclass
class FeatureConfig:
    """How tracking becomes features; its hash keys the on-disk cache."""

    slots: list[str] | None = None  # keypoint slot names; None = data.DEFAULT_SLOTS (18)
    n_mice: int = 4  # mouse slots in the scene vector
    max_gap: int = 10  # interpolate NaN gaps up to this many frames; longer gaps stay NaN
    target_fps: float | None = None  # resample every video to this fps; None keeps each video's own
    arena_centre: bool = True  # subtract the arena centre (video width/height / 2) before scaling
    smooth_window: int = 1  # centred moving average (frames) on positions before differentiating
    pair_features: bool = True  # also compute agent-centric pair features (needed by task.mode=pair)


@dataclass
class TaskConfig:
    """What the model predicts."""

    mode: Literal["pair", "scene"] = "pair"
    # scene mode: class name -> actions; class 0 "none" is implicit; later classes win a frame
    classes: dict[str, list[str]] = field(default_factory=lambda: dict(REFERENCE_CLASSES))
    class_weights: list[float] | None = None  # scene: one per class incl. none; None = uniform
    # pair mode: actions to learn; None = every action labelled anywhere in the training videos
    actions: list[str] | None = None
    pos_weight: Literal["none", "auto"] | float = "auto"  # pair: BCE positive weight per action
    pos_weight_max: float = 20.0  # cap for pos_weight="auto" (neg/pos ratio, sqrt-damped)
    label_smoothing: float = 0.0


@dataclass
class WindowConfig:
    """Windows drawn from the cache and the train/validation split."""

    sequence_length: int = 100
    frame_gap: int = 1  # stride between window starts in training
    eval_stride: int | None = None  # stride at evaluation; None = sequence_length // 2
    val_fraction: float = 0.2  # share of videos per lab held out for validation
    split_seed: int = 42
    # k-fold validation (``mabe cv``): folds >= 2 validates on fold ``fold`` of windows.assign_folds (by video,
    # stratified by lab, seeded by split_seed) instead of val_fraction; 0 = the val_fraction split
    folds: int = 0
    fold: int = 0
    rare_oversample: float = 0.0  # 0 = uniform; >0 over-draws windows holding rare actions
    max_windows_per_epoch: int | None = None  # cap (random subset each epoch); None = all


@dataclass
class ModelConfig:
    """Architecture; the name selects a registered model."""

    name: str = "conv1d_bilstm"
    conv_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 3
    lstm_hidden: int = 256
    lstm_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.3
    # normalisation after each conv: batch (BatchNorm1d; under DDP its statistics are per process),
    # sync_batch (BatchNorm1d, SyncBatchNorm across processes under DDP on CUDA), group (GroupNorm with
    # one group: per window, so DDP on N processes equals one process with N times the batch) or none
    norm: Literal["batch", "sync_batch", "group", "none"] = "batch"
    tcn_channels: int = 64  # dilated_tcn: channels of every block
    tcn_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # dilated_tcn: one block each
    # append to every frame's features a one-hot of its lab (over the training labs, kept in the checkpoint)
    # and log2(video fps / 30); a lab the model was not trained on gets all-zero lab columns (with a warning)
    lab_conditioning: bool = False


@dataclass
class AugmentConfig:
    """Training-time augmentation."""

    noise_std: float = 0.01  # Gaussian noise on normalised features
    temporal_jitter: int = 2  # shift each window start by up to +-this many frames
    mixup_alpha: float = 0.0  # 0 disables mixup
    # geometric augmentation of the positions before the features are computed (training only; per batch,
    # so not with train.features_in_memory=always; every one 0 = off):
    rotate_degrees: float = 0.0  # rotate each window about the arena centre by an angle uniform in +-this
    reflect: float = 0.0  # probability of mirroring a window (x -> -x, left/right body parts swapped)
    time_stretch: float = 0.0  # s: replay each window at a speed uniform in [1 - s, 1 + s] (labels follow)
    keypoint_dropout: float = 0.0  # probability that a tracked point of a frame is set missing


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpoints and the speed knobs."""

    epochs: int = 100
    batch_size: int = 384
    lr: float = 4e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 3.0  # linear warmup, stepped per batch
    scheduler: Literal["plateau", "none"] = "plateau"
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    min_lr: float = 1e-5
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.0  # >0: validate, pick best and predict with an EMA of the weights (e.g. 0.999); 0 = off
    grad_accum: int = 1
    early_stopping_patience: int = 15  # epochs without a better validation F1; 0 disables
    save_freq: int = 5  # write checkpoints/last.pt every this many epochs (and at the end)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    # the LSTM's own precision (it runs outside autocast, ~94% of the reference model's FLOPs):
    # auto = bf16 where cuDNN has bf16 RNN kernels (torch >= 2.10, cuDNN >= 9.13, sm80+), else fp32;
    # fp16 adds a static loss scale. `mabe bench` times each and checks it against the fp32 reference
    lstm_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    data_path: Literal["auto", "gpu", "loader"] = "auto"  # auto = gpu-resident on CUDA
    # the features of the training / validation tracks: computed per batch from the cache's int16 positions
    # where the step runs (never; ~0.3 KB a video frame in memory), or once into a matrix in host memory
    # (always; n_rows x F, on the CPU with storage_dtype auto float32 if it fits features_memory_gb, else
    # float16: 2 B a cell; the CPU speed of a stored-feature cache); auto = once when training on the CPU
    # and both matrices together take at most features_memory_gb, in bytes of the dtype they are stored in (with the geometric augmentation on,
    # augment.rotate_degrees etc.: the validation matrix only; training is per batch). 9 GB: the real
    # preset's float16 features (~46 M pair rows x 90, 7.7 GiB projected) fit, with 16 GB of host RAM in all
    features_in_memory: Literal["auto", "always", "never"] = "auto"
    features_memory_gb: float = 9.0
    num_workers: int = 2  # DataLoader workers for data_path=loader
    # intra-op CPU threads (torch.set_num_threads); None = torch's default. Capped at the CPUs this
    # process may use (divided among the ranks of one machine), so it never oversubscribes
    num_threads: int | None = None
    # dtype of the batches' features (computed per batch from the cache's int16 positions; auto: float32);
    # of features computed once into host memory (features_in_memory): auto = on the CPU float32 where the
    # set fits features_memory_gb in float32, else float16 (half the bytes, relative rounding <= 2**-11 of
    # standardised features; cast to float32 per batch; hard seeds 0-2 moved the network +0.008 / -0.026 /
    # -0.036 against float32, so precision is traded only where memory needs it), float32
    # for a GPU; a feature matrix resident on the device (e.g. `mabe bench`'s) is stored in it: auto keeps
    # the CPU's, picks fp16/bf16 on CUDA bf16
    storage_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    fused_adamw: bool = True  # one fused AdamW kernel (CUDA, and CPU); skips non-finite steps on the device
    compile: bool = False  # torch.compile the conv stem and head (not the LSTM); CUDA only
    # capture the whole step in one CUDA graph (CUDA, 1 process, grad_accum 1, no mixup; eager
    # otherwise, and eager with a warning if capture fails)
    cuda_graphs: bool = False
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale lr by global batch / batch_size
    max_nonfinite_steps: int = 20  # consecutive skipped non-finite steps before the run stops
    steps_per_epoch: int | None = None  # None = one pass over the (possibly capped) windows
    val_every: int = 1  # validate every this many epochs
    deterministic: bool = False
    tensorboard: bool = True
    report: bool = True  # write report.html (figures) when the run ends


@dataclass
class PostprocessConfig:
    """Frame probabilities -> intervals."""

    smooth_window: int = 5  # centred moving average over frames (1 = none)
    threshold: float = 0.5  # default threshold where none was fitted
    min_length: int = 3  # drop intervals shorter than this many frames
    max_gap: int = 2  # merge intervals separated by at most this many frames
    # the same three in seconds, converted at each track's fps (round(s * fps), at least 1 frame; 0 s for
    # the gap = no merging); when set they replace the frame counts above, so a 10 fps and a 120 fps lab
    # get the same smoothing in time. None = use the frame counts
    smooth_seconds: float | None = None
    min_seconds: float | None = None
    gap_seconds: float | None = None
    # threshold grid of fit_thresholds: grid_n values from grid_low to grid_high, evenly spaced
    grid_low: float = 0.05
    grid_high: float = 0.95
    grid_n: int = 19
    # fit_thresholds: each (lab, action) threshold maximises the mean frame F1 over this many resamples of the
    # lab's videos (drawn with replacement) instead of the F1 of the videos as they are: with ~5 videos a lab,
    # the plain optimum often rides on one video's intervals (0 = the plain fit)
    threshold_bootstrap: int = 64
    threshold_seed: int = 0
    blend_step: float = 0.1  # `mabe blend`: step of the per-family weight grid on the simplex (must divide 1)


@dataclass
class GbdtConfig:
    """The gradient-boosted family (``mabe gbdt``): one LightGBM binary model per (lab, action)."""

    folds: int = 4  # k-fold by video, stratified by lab; out-of-fold predictions fit the thresholds
    fold_seed: int = 0
    n_estimators: int = 150  # boosting rounds per model
    learning_rate: float = 0.08
    num_leaves: int = 31
    min_child_samples: int = 40  # LightGBM min_data_in_leaf
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_bin: int = 63  # histogram bins: fewer is faster, barely less accurate on smooth features
    pos_hz: float = 15.0  # training frames kept per second where a labelled action happens
    neg_hz: float = 4.0  # ... and elsewhere (the frames are strongly correlated; more adds time, not information)
    max_rows: int = 40000  # per (lab, action) model; negatives are dropped first
    pos_balance: float = 0.0  # positives weighted up to this share of the negatives' weight (0 = off)
    smooth_seconds: float = 0.0  # centred mean of the probabilities over this many s (0 = off)
    # also one model per action on every lab's labelled tracks; per (lab, action) the out-of-fold F1 picks
    # the lab's model, the pooled one or their mean (rare actions borrow the other labs' examples)
    pooled: bool = True
    n_jobs: int | None = None  # models fitted at once (1 thread each); None = every CPU this process may use
    seed: int = 0


@dataclass
class StackConfig:
    """The second stage (``mabe stack``): one LightGBM per action on the first stage's out-of-fold
    probabilities (and their rolling statistics), pooled over labs with the lab as a feature."""

    folds: int = 4  # stage-2 k-fold by video (windows.assign_folds): its out-of-fold file fits the thresholds
    fold_seed: int = 0
    scales: list[float] = field(default_factory=lambda: [0.25, 1.0, 2.0, 4.0])  # centred mean / max windows, s
    context_seconds: float = 1.0  # the other actions' centred mean over this many s as context (0 = off)
    # boost from the members' mean logit (LightGBM init_score): stage 2 learns a correction and keeps the
    # members' ranking where it has nothing to add (fitted from scratch it lost 0.04-0.08 out of fold)
    residual: bool = True
    monotone: bool = True  # the output never falls as the own action's probability features rise
    per_lab: bool = False  # one model per (lab, action) instead of one per action pooled over labs
    test_models: Literal["refit", "folds"] = "refit"  # test: one model refitted on every fit video, or the folds' mean
    n_estimators: int = 100
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 100
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_bin: int = 63
    pos_hz: float = 10.0  # training frames kept per second where any labelled action happens
    neg_hz: float = 2.0  # ... and elsewhere
    max_rows: int = 60000  # per action model; negatives are dropped first
    pos_balance: float = 0.0  # positives weighted up to this share of the negatives' weight (0 = off)
    n_jobs: int | None = None  # models fitted at once (1 thread each); None = every CPU this process may use
    seed: int = 0


@dataclass
class Config:
    """A whole run."""

    data: str = "demo/data"  # MABe-layout directory
    cache: str = "cache"  # feature cache root
    runs: str = "runs"  # run directories root
    name: str | None = None  # run name; None = timestamped
    features: FeatureConfig = field(default_factory=FeatureConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    gbdt: GbdtConfig = field(default_factory=GbdtConfig)
    stack: StackConfig = field(default_factory=StackConfig)


# ----------------------------------------------------------------------------- validation

_RANGES: dict[str, tuple[float | None, float | None]] = {
    "features.n_mice": (1, 4),
    "features.max_gap": (0, None),
    "features.target_fps": (1e-6, None),
    "features.smooth_window": (1, None),
    "task.pos_weight_max": (1, None),
    "task.label_smoothing": (0, 0.5),
    "windows.sequence_length": (2, None),
    "windows.frame_gap": (1, None),
    "windows.eval_stride": (1, None),
    "windows.val_fraction": (0, 0.9),
    "windows.folds": (0, None),
    "windows.fold": (0, None),
    "windows.rare_oversample": (0, None),
    "windows.max_windows_per_epoch": (1, None),
    "model.kernel_size": (1, None),
    "model.lstm_hidden": (1, None),
    "model.lstm_layers": (1, None),
    "model.dropout": (0, 0.99),
    "augment.noise_std": (0, None),
    "augment.temporal_jitter": (0, None),
    "augment.mixup_alpha": (0, None),
    "augment.rotate_degrees": (0, 180),
    "augment.reflect": (0, 1),
    "augment.time_stretch": (0, 0.5),
    "augment.keypoint_dropout": (0, 0.5),
    "train.epochs": (1, None),
    "train.batch_size": (1, None),
    "train.lr": (1e-12, 10),
    "train.weight_decay": (0, None),
    "train.warmup_epochs": (0, None),
    "train.plateau_patience": (0, None),
    "train.plateau_factor": (1e-6, 1),
    "train.min_lr": (0, None),
    "train.grad_clip": (0, None),
    "train.grad_accum": (1, None),
    "train.early_stopping_patience": (0, None),
    "train.save_freq": (1, None),
    "train.num_workers": (0, None),
    "train.num_threads": (1, None),
    "train.max_nonfinite_steps": (1, None),
    "train.steps_per_epoch": (1, None),
    "train.val_every": (1, None),
    "gbdt.folds": (2, None),
    "gbdt.n_estimators": (1, None),
    "gbdt.learning_rate": (1e-6, 1),
    "gbdt.num_leaves": (2, None),
    "gbdt.min_child_samples": (1, None),
    "gbdt.feature_fraction": (1e-3, 1),
    "gbdt.bagging_fraction": (1e-3, 1),
    "gbdt.lambda_l2": (0, None),
    "gbdt.max_bin": (2, 255),
    "gbdt.pos_hz": (1e-3, None),
    "gbdt.neg_hz": (1e-3, None),
    "gbdt.max_rows": (100, None),
    "gbdt.pos_balance": (0, None),
    "gbdt.smooth_seconds": (0, None),
    "gbdt.n_jobs": (1, None),
    "stack.folds": (2, None),
    "stack.context_seconds": (0, None),
    "stack.n_estimators": (1, None),
    "stack.learning_rate": (1e-6, 1),
    "stack.num_leaves": (2, None),
    "stack.min_child_samples": (1, None),
    "stack.feature_fraction": (1e-3, 1),
    "stack.bagging_fraction": (1e-3, 1),
    "stack.lambda_l2": (0, None),
    "stack.max_bin": (2, 255),
    "stack.pos_hz": (1e-3, None),
    "stack.neg_hz": (1e-3, None),
    "stack.max_rows": (100, None),
    "stack.n_jobs": (1, None),
    "stack.pos_balance": (0, None),
    "postprocess.smooth_window": (1, None),
    "postprocess.threshold": (0, 1),
    "postprocess.min_length": (1, None),
    "postprocess.max_gap": (0, None),
    "postprocess.smooth_seconds": (0, None),
    "postprocess.min_seconds": (0, None),
    "postprocess.gap_seconds": (0, None),
    "postprocess.grid_low": (0, 1),
    "postprocess.grid_high": (0, 1),
    "postprocess.grid_n": (1, None),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {key} must be one of {list(args)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {
            _coerce(k, args[0], f"{key} key", where): _coerce(v, args[1], f"{key}.{k}", where)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "4e-4" (no dot) as a string; accept what Python reads as a number
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise ConfigError(f"{where}: {key} has an unsupported type {tp}")  # pragma: no cover


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix or 'the top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
            f"valid keys here: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], key + ".", where)
            continue
        value = _coerce(raw[name], tp, key, where)
        lo, hi = _RANGES.get(key, (None, None))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            raise ConfigError(f"{where}: {key}={value} is out of range [{lo}, {hi}]")
        kwargs[name] = value
    return cls(**kwargs)


def _check(cfg: Config, where: str) -> None:
    """Cross-field checks that one key alone cannot express."""
    if not cfg.model.conv_channels:
        raise ConfigError(f"{where}: model.conv_channels must list at least one channel count")
    if cfg.task.class_weights is not None and len(cfg.task.class_weights) != len(cfg.task.classes) + 1:
        raise ConfigError(
            f"{where}: task.class_weights has {len(cfg.task.class_weights)} values, expected "
            f"{len(cfg.task.classes) + 1} (none + {len(cfg.task.classes)} classes)"
        )
    if cfg.task.mode == "pair" and not cfg.features.pair_features:
        raise ConfigError(f"{where}: task.mode=pair needs features.pair_features=true")
    if isinstance(cfg.task.pos_weight, float) and cfg.task.pos_weight <= 0:
        raise ConfigError(f"{where}: task.pos_weight must be > 0, got {cfg.task.pos_weight}")
    if cfg.windows.folds == 1:
        raise ConfigError(f"{where}: windows.folds must be 0 (the val_fraction split) or >= 2, got 1")
    if cfg.windows.folds >= 2 and cfg.windows.fold >= cfg.windows.folds:
        raise ConfigError(f"{where}: windows.fold={cfg.windows.fold} must be below windows.folds={cfg.windows.folds}")
    if not cfg.stack.scales or min(cfg.stack.scales) <= 0:
        raise ConfigError(f"{where}: stack.scales must list at least one window in seconds, all > 0, got "
                          f"{cfg.stack.scales}")
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(f"{where}: train.min_lr={cfg.train.min_lr} exceeds train.lr={cfg.train.lr}")
    a = cfg.augment
    moving = [k for k in ("rotate_degrees", "reflect", "time_stretch", "keypoint_dropout") if getattr(a, k) > 0]
    if moving and cfg.train.features_in_memory == "always":
        raise ConfigError(f"{where}: augment.{moving[0]}={getattr(a, moving[0])} changes the positions of every "
                          "batch, so the features cannot be computed once: set train.features_in_memory to auto "
                          "or never, or turn the geometric augmentation off")
    if moving and cfg.train.data_path == "loader":
        raise ConfigError(f"{where}: augment.{moving[0]} (geometric augmentation) runs in the resident batch path; "
                          "train.data_path=loader does not apply it: use auto or gpu")
    if (a.rotate_degrees > 0 or a.reflect > 0) and not cfg.features.arena_centre:
        raise ConfigError(f"{where}: augment.rotate_degrees / augment.reflect act about the arena centre, the "
                          "origin of the positions only with features.arena_centre=true")


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.lr=1e-3", "task.mode=scene"]`` -> nested dict; values parsed as YAML scalars."""
    raw: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text))
    return raw


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: dict, where: str = "<dict>") -> Config:
    """Nested dict -> validated Config."""
    cfg = _build(Config, raw, "", where)
    _check(cfg, where)
    return cfg


# The shipped configs are package data (so an installed wheel has them); the repository's top-level
# configs/ holds identical copies for `-c configs/h100.yaml` from a checkout (tests/integration/test_packaging.py).
PACKAGED_CONFIGS = Path(__file__).with_name("configs")


def packaged_configs() -> dict[str, Path]:
    """Name (file stem, e.g. ``demo``) -> path of every config shipped inside the package."""
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def resolve_config(path: str | Path) -> Path:
    """An existing file as given; else a shipped config named ``demo``, ``demo.yaml`` or ``configs/demo.yaml``."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = packaged_configs()
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if stem in shipped and (len(path.parts) == 1 or path.parent.name == "configs"):
        return shipped[stem]
    return path


def copy_configs(dest: str | Path, names: list[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Copy shipped configs (all, or these names) into ``dest``; never overwrites unless asked."""
    shipped = packaged_configs()
    names = list(shipped) if not names else [n[: -len(".yaml")] if n.endswith(".yaml") else n for n in names]
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise ConfigError(f"no shipped config named {', '.join(unknown)} (shipped: {', '.join(shipped)})")
    dest = Path(dest)
    targets = [dest / shipped[n].name for n in names]
    clash = [str(t) for t in targets if t.exists() and not overwrite]
    if clash:
        raise ConfigError(f"{', '.join(clash)} already exist(s); pass --force to overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    for n, t in zip(names, targets):
        t.write_bytes(shipped[n].read_bytes())
    return targets


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """YAML file (optional; a shipped config's name also works) + ``key=value`` overrides -> validated Config."""
    raw: dict = {}
    where = "<defaults>"
    if path is not None:
        path = resolve_config(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (shipped configs: "
                              f"{', '.join(packaged_configs())}; `mabe configs` lists them)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{at}: {what}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        raw = _merge(raw, extra)
        where += " (with overrides)"
    return config_from_dict(raw, where)


def config_to_dict(cfg: Any) -> dict:
    """Config (or any section) -> plain nested dict, YAML/JSON friendly."""
    return dataclasses.asdict(cfg)


def feature_hash(fc: FeatureConfig) -> str:
    """Short stable hash of a FeatureConfig: the cache folder name."""
    text = json.dumps(config_to_dict(fc), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]
