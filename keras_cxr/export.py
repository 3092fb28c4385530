"""Export a trained run to a self-contained model folder that needs no keras-cxr classes to sample.

    saved_models/NAME/
        saved_model/     TF SavedModel (keras.export.ExportArchive) with endpoints
                           sample(z: f32[None, *noise_shape]) -> uint8 [None, H, W, C]
                           sample_conditional(z, labels: f32[None, num_classes]) -> uint8  (conditional)
                             (+ guidance: f32[] scalar for models with classifier-free guidance)
                           reconstruct(images: uint8[None, H, W, C]) -> uint8              (autoencoders)
        model.keras      the Keras model (load with keras.saving.load_model, safe mode)
        config.json      the TrainConfig plus noise_shape, image_size, channels, conditional,
                         num_classes, findings, data_range, endpoints
        MODEL_CARD.md    data, split, preset, epochs, final metrics, intended use

`export_classifier` writes the finding classifier's export (endpoints predict / features), read by
`keras_cxr.sampling.load_classifier`.

The folder is assembled under a temporary name beside `out` and renamed into place at the end, so
an interrupted export never leaves a half-written model at `out`.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from keras_cxr.errors import UserError
from keras_cxr.fileio import check_output, clean_stale, publish_folder, publishing, work_folder  # noqa: F401
from keras_cxr.runs import load_trained_model  # noqa: F401 (public here since 0.1)


def build_archive(model, data_range: str | None = None):
    """A keras.export.ExportArchive with the contract's endpoints; returns (archive, endpoint names)."""
    import keras
    import tensorflow as tf

    from keras_cxr.images import from_uint8_tf as from_uint8_tensor, to_uint8_tf as to_uint8_tensor

    data_range = data_range or model.data_range
    noise_shape = tuple(int(d) for d in model.noise_shape)
    z_spec = tf.TensorSpec((None, *noise_shape), tf.float32, name="z")
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = []

    def sample(z):
        return to_uint8_tensor(model.generate(z, None, training=False), data_range)

    archive.add_endpoint("sample", sample, input_signature=[z_spec])
    endpoints.append("sample")

    if model.conditional:
        y_spec = tf.TensorSpec((None, int(model.num_classes)), tf.float32, name="labels")
        if model.supports_guidance:
            def sample_conditional(z, labels, guidance):
                return to_uint8_tensor(model.generate(z, labels, training=False, guidance=guidance), data_range)

            archive.add_endpoint("sample_conditional", sample_conditional,
                                 input_signature=[z_spec, y_spec, tf.TensorSpec((), tf.float32, name="guidance")])
        else:
            def sample_conditional(z, labels):
                return to_uint8_tensor(model.generate(z, labels, training=False), data_range)

            archive.add_endpoint("sample_conditional", sample_conditional, input_signature=[z_spec, y_spec])
        endpoints.append("sample_conditional")

    if callable(getattr(model, "reconstruct", None)):
        size, channels = int(model.image_size), int(model.channels)

        def reconstruct(images):
            x = from_uint8_tensor(images, data_range)
            return to_uint8_tensor(model.reconstruct(x), data_range)

        archive.add_endpoint("reconstruct", reconstruct,
                             input_signature=[tf.TensorSpec((None, size, size, channels), tf.uint8, name="images")])
        endpoints.append("reconstruct")
    return archive, endpoints


def export_config(model, config, info, endpoints) -> dict:
    from custom_datasets.findings import FINDINGS

    out = json.loads(config.to_json())
    num_classes = int(model.num_classes or 0)
    findings = list(info.get("findings") or (FINDINGS if num_classes == len(FINDINGS) else []))
    out.update({
        "noise_shape": [int(d) for d in model.noise_shape],
        "image_size": int(model.image_size),
        "channels": int(model.channels),
        "conditional": bool(model.conditional),
        "num_classes": num_classes,
        "findings": findings[:num_classes] if num_classes else findings,
        "data_range": model.data_range,
        "endpoints": endpoints,
        "supports_guidance": bool(model.supports_guidance),
        "model_class": type(model).__name__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return out


def model_card(cfg: dict, info: dict) -> str:
    data = info.get("data", {})
    metrics = info.get("final_metrics") or {}
    metric_lines = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())) or "| (none recorded) | |"
    report = data.get("report", {})
    split = report.get("split", f"by patient, seed {cfg.get('split_seed')}")
    findings = ", ".join(cfg["findings"]) if cfg.get("conditional") else "unconditional"
    return f"""# Model card: {cfg['model']} ({cfg.get('model_class')})

**Research use only. Not for diagnosis, not a medical device.** Generated images are synthetic and
must never be used to make or support clinical decisions.

## Model
- Model: `{cfg['model']}`, preset `{cfg.get('preset')}`, class `{cfg.get('model_class')}`
- Output: {cfg['image_size']}x{cfg['image_size']}x{cfg['channels']} uint8 images; noise shape {cfg['noise_shape']}
  (standard normal); data range during training `{cfg['data_range']}`
- Conditioning: {findings}
- Endpoints: {', '.join(cfg['endpoints'])}
- Model options: `{json.dumps(cfg.get('model_kwargs', {}), sort_keys=True)}`;
  optimiser options: `{json.dumps(cfg.get('compile_kwargs', {}), sort_keys=True)}`

## Training
- Data: NIH ChestX-ray14 images from `{data.get('folder')}` ({data.get('train_images')} training images,
  {data.get('val_images')} validation images); metadata `{data.get('metadata')}`
- Split: {split}; views {list(cfg.get('views') or []) or 'all'}; conditions {list(cfg.get('conditions') or []) or 'all'}
- Epochs: {info.get('epochs_completed', cfg.get('epochs'))}, global batch {cfg.get('batch_size')},
  seed {cfg.get('seed')}, strategy {cfg.get('strategy')}

## Final training metrics
| metric | value |
|---|---|
{metric_lines}

## Limitations
Trained on a limited number of chest X-rays; samples can show artefacts, miss rare findings, or
reproduce biases of the NIH labels (text-mined, noisy). Label-conditioned samples are not verified
to show the requested finding unless an evaluation report says so.

## Data attribution
NIH Clinical Center ChestX-ray14 (<https://nihcc.app.box.com/v/ChestXray-NIHCC>); Wang et al.,
"ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
Classification and Localization of Common Thorax Diseases", CVPR 2017. Data provided by the NIH
Clinical Center.
"""


def export_run(run_dir, out, overwrite: bool = False, sampling_steps: int | None = None,
               sampler: str | None = None) -> Path:
    """Export the finished run in `run_dir` to the folder `out` (see module docstring).

    sampling_steps: diffusion models only, the number of DDIM steps the exported `sample*` endpoints
    run (default: the model's own `sampling_steps`); fewer is faster, more is closer to the data.
    sampler: diffusion models only, "ddim" or "dpm++2m" (DPM-Solver++(2M): as close at ~10 steps as
    DDIM at 50 on the exact-score test, see tests/test_samplers.py); default the model's own."""
    out = check_output(out, "export", overwrite=overwrite, inputs=[run_dir])
    model, config, info = load_trained_model(run_dir)
    if sampling_steps is not None:
        if not hasattr(model, "sampling_steps"):
            raise UserError(f"--sampling-steps applies to diffusion models; {run_dir} holds a {type(model).__name__}")
        if isinstance(sampling_steps, bool) or int(sampling_steps) != sampling_steps or int(sampling_steps) < 1:
            raise UserError(f"--sampling-steps must be a whole number >= 1, got {sampling_steps!r}")
        model.sampling_steps = int(sampling_steps)
        config.model_kwargs["sampling_steps"] = int(sampling_steps)
    if sampler is not None:
        from keras_cxr.diffusion import SAMPLERS

        if not hasattr(model, "sampler"):
            raise UserError(f"--sampler applies to diffusion models; {run_dir} holds a {type(model).__name__}")
        if sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        model.sampler = sampler
        config.model_kwargs["sampler"] = sampler
    archive, endpoints = build_archive(model)
    cfg = export_config(model, config, info, endpoints)

    with publishing(out, "export", action="export") as tmp:
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        if sampling_steps is None and sampler is None:
            shutil.copy2(Path(run_dir) / "model.keras", tmp / "model.keras")
        else:  # the .keras must sample like the SavedModel
            model.save(tmp / "model.keras")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / "MODEL_CARD.md").write_text(model_card(cfg, info))
    return out


# --------------------------------------------------------------------------- the finding classifier
def export_classifier(model, out, info: dict) -> Path:
    """Write `out/` = saved_model/ (predict, features endpoints on uint8 images), model.keras,
    config.json; via a temporary folder renamed at the end."""
    from keras_cxr.fileio import publishing

    out = Path(out)
    with publishing(out, "classifier") as tmp:
        _write_classifier_export(model, tmp, info)
    return out


def _write_classifier_export(model, tmp: Path, info: dict) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    size = int(model.image_size)
    if not model.built:  # a subclassed model is built by its first call
        model(np.zeros((1, size, size, model.channels), "float32"))

    from keras_cxr.images import from_uint8_tf, resize_gray

    def prepare(images):  # any size of uint8 image -> the classifier's input (the one resize policy)
        x = from_uint8_tf(images, "sigmoid")
        if x.shape[-1] == 3:
            x = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = resize_gray(x, size, fit="stretch")
        if model.channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        return x

    spec = tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("predict", lambda images: tf.sigmoid(model(prepare(images), training=False)),
                         input_signature=[spec])
    archive.add_endpoint("features", lambda images: model.features(prepare(images), training=False),
                         input_signature=[spec])
    archive.write_out(str(tmp / "saved_model"), verbose=False)
    model.save(tmp / "model.keras")
    (tmp / "config.json").write_text(json.dumps(info, indent=2, default=str))
    (tmp / "MODEL_CARD.md").write_text(
        "# Finding classifier (keras-cxr)\n\n"
        f"Multi-label classifier of the 14 NIH ChestX-ray14 findings ({info.get('backbone')} backbone, "
        f"{info.get('image_size')} px), trained on {info.get('train_images')} real training-split images; "
        f"mean validation AUROC {info.get('val_mean_auroc')} on {info.get('val_images')} images "
        "(per finding in config.json; findings with no validation positives have none).\n\n"
        "Used by `keras-cxr evaluate` as the `cxr` feature extractor and the label-fidelity judge.\n"
        "Research use only, not for diagnosis. Data: NIH Clinical Center, ChestX-ray14 "
        "(https://nihcc.app.box.com/v/ChestXray-NIHCC; Wang et al., CVPR 2017).\n")
