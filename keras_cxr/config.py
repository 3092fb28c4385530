"""Training configuration: one dataclass, presets by name, `--set key=value` overrides.

Every run writes its resolved config to `RUN_DIR/config.json`, so a run can be resumed or exported
from its folder alone.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from keras_cxr.errors import UserError


@dataclass
class TrainConfig:
    model: str = "lsgan"
    preset: str | None = None
    run_dir: str = "runs/default"
    # data
    data: str | None = None
    metadata: str | None = None
    split_seed: int = 0
    views: tuple = ()
    conditions: tuple = ()
    max_images: int | None = None
    allow_missing: bool = False  # carry on with the images that have CSV rows when some rows lack images
    balance: str | None = None  # None | "findings": tf.data class balancing
    augment: bool = False
    # shapes and loop
    image_size: int = 64
    channels: int = 1
    batch_size: int = 32
    epochs: int = 10
    steps_per_epoch: int | None = None
    seed: int = 0
    deterministic: bool = False
    strategy: str = "default"  # default | mirrored | multiworker
    sample_every: int = 1
    jit_compile: bool = False
    mixed_precision: str | None = None  # None (float32) | "mixed_float16" (GPUs) | "mixed_bfloat16"
    validation: bool = True  # evaluate test_step on the val split after each epoch
    # model specifics: constructor kwargs and compile kwargs (learning rates, betas, KL weight, ...)
    model_kwargs: dict = field(default_factory=dict)
    compile_kwargs: dict = field(default_factory=dict)
    # two-stage models (latent diffusion): run dir or export of the frozen autoencoder
    autoencoder: str | None = None

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=list)

    def save(self, path) -> None:
        from keras_cxr.fileio import write_text

        write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown config key(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        for key in ("views", "conditions"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no config.json at {path}")
        from keras_cxr.fileio import read_json_file

        data = read_json_file(path, "config.json")
        try:
            return cls.from_dict(data)
        except TypeError as exc:  # a field of the wrong type / shape
            raise UserError(f"{path}: config.json is damaged ({exc})") from None


MIXED_PRECISION = ("mixed_float16", "mixed_bfloat16")  # keras_cxr/precision.py


def check_mixed_precision(value) -> None:
    """One-line UserError unless `value` is None (float32) or one of MIXED_PRECISION."""
    if value is not None and value not in MIXED_PRECISION:
        raise UserError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)} (or None for float32); "
                        f"got {value!r}")


def parse_value(text: str):
    """`--set` values: Python literals (1, 0.5, True, [1,2], None) else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                   if f.default is not dataclasses.MISSING}
# config fields and model options that are sizes or counts: whole numbers >= 1 (or lists of them)
_COUNT_FIELDS = {"epochs", "batch_size", "image_size", "sample_every", "steps_per_epoch", "max_images", "channels"}
_COUNT_WORDS = ("dim", "filters", "size", "channels", "width", "steps", "blocks", "heads", "components", "classes")
_SEED_FIELDS = {"seed", "split_seed"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    import math

    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def check_override_value(key: str, value, current=None) -> None:
    """One-line UserError for a `--set key=value` whose value cannot be right: a word where a number
    belongs (`compile.learning_rate=fast`), `None` for a count, a negative or zero size, a seed out of
    range, or a value of another type than the option's current one."""
    name = key.split(".", 1)[-1]
    shown = f"--set {key}={value!r}"
    if key in _SEED_FIELDS:
        if not _is_int(value) or not 0 <= value < 2**32:
            raise UserError(f"{shown}: a seed must be a whole number in [0, 2**32)")
        return
    is_count = key in _COUNT_FIELDS or (key.startswith("model.") and any(w in name for w in _COUNT_WORDS)
                                         and not any(w in name for w in ("warmup", "start", "label_dim")))
    if is_count:
        if value is None and (key in ("steps_per_epoch", "max_images") or name.endswith("coder_filters")):
            return  # None: no limit / the model's default widths
        items = value if isinstance(value, (list, tuple)) and key.startswith("model.") else [value]
        if not items or not all(_is_int(v) and v >= 1 for v in items):
            raise UserError(f"{shown}: must be a whole number >= 1" + (" (or a list of them)" if key.startswith("model.") else ""))
        return
    if key.startswith("compile.") and ("learning_rate" in name or name in ("weight_decay", "epsilon")):
        if not _is_number(value) or value <= 0 and "learning_rate" in name or value < 0:
            raise UserError(f"{shown}: must be a finite number {'> 0' if 'learning_rate' in name else '>= 0'}")
        return
    if key.startswith("compile.") and name.startswith("beta"):
        if not _is_number(value) or not 0 <= value < 1:
            raise UserError(f"{shown}: must be a number in [0, 1)")
        return
    if current is None or value is None and not _is_number(current) and not isinstance(current, bool):
        return
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise UserError(f"{shown}: must be True or False")
    elif _is_number(current):
        if not _is_number(value):
            raise UserError(f"{shown}: must be a finite number (it is {current!r} now)")
    elif isinstance(current, str) and not isinstance(value, str):
        raise UserError(f"{shown}: must be text (it is {current!r} now)")


def apply_overrides(config: TrainConfig, pairs) -> TrainConfig:
    """Apply `key=value` strings. Keys are TrainConfig fields, `model.X` (constructor kwarg X) or
    `compile.X` (compile kwarg X)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for pair in pairs or ():
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key, value = key.strip(), parse_value(raw.strip())
        if key.startswith("model."):
            check_override_value(key, value, config.model_kwargs.get(key[6:]))
            config.model_kwargs[key[6:]] = value
        elif key.startswith("compile."):
            check_override_value(key, value, config.compile_kwargs.get(key[8:]))
            config.compile_kwargs[key[8:]] = value
        elif key in names and key not in ("model_kwargs", "compile_kwargs"):
            check_override_value(key, value, _FIELD_DEFAULTS.get(key))
            setattr(config, key, tuple(value) if key in ("views", "conditions") and value else value)
        else:
            raise UserError(f"unknown --set key {key!r}; use a config field ({', '.join(sorted(names))}), model.X or compile.X")
    return config


def with_preset(config: TrainConfig, preset: dict) -> TrainConfig:
    """Merge a preset dict (config fields, plus `model_kwargs` / `compile_kwargs` dicts) under the
    values the user set explicitly afterwards."""
    d = dataclasses.asdict(config)
    for key, value in preset.items():
        if key in ("model_kwargs", "compile_kwargs"):
            d[key] = {**value, **d[key]}
        else:
            d[key] = value
    return TrainConfig.from_dict(d)


def check_options(model: str, config: TrainConfig, model_keys, compile_keys) -> None:
    """One-line UserError for `model.X` / `compile.X` keys a model's build_model does not know."""
    for kind, given, known in (("model", config.model_kwargs, model_keys), ("compile", config.compile_kwargs, compile_keys)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise UserError(f"unknown {model} {kind} option(s) {unknown}; known: {sorted(known)}")
