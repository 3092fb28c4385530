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

The folder is assembled under a temporary name beside `out` and renamed into place at the end, so
an interrupted export never leaves a half-written model at `out`.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from keras_cxr.errors import UserError
from keras_cxr.fileio import check_output, clean_stale, publish_folder, work_folder  # noqa: F401 (re-exported)


def load_trained_model(run_dir):
    """(model, TrainConfig, run.json dict) from a finished run folder (safe-mode .keras load)."""
    import keras

    from keras_cxr.models import get_model_module
    from keras_cxr.training import load_run

    config, info = load_run(run_dir)
    get_model_module(config.model)  # registers the model classes for deserialisation
    path = Path(run_dir) / "model.keras"
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a file that does not load (Lambda layer, unknown class, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path} cannot be loaded in safe mode: {type(exc).__name__}: {first}") from None
    if not hasattr(model, "generate") or not hasattr(model, "noise_shape"):
        raise UserError(f"{path} holds a {type(model).__name__}, not a keras-cxr generative model")
    return model, config, info


def build_archive(model, data_range: str | None = None):
    """A keras.export.ExportArchive with the contract's endpoints; returns (archive, endpoint names)."""
    import keras
    import tensorflow as tf

    from keras_cxr.grids import from_uint8_tensor, to_uint8_tensor

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

    if getattr(model, "conditional", False):
        y_spec = tf.TensorSpec((None, int(model.num_classes)), tf.float32, name="labels")
        if getattr(model, "supports_guidance", False):
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
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    findings = list(info.get("findings") or (FINDINGS if num_classes == len(FINDINGS) else []))
    out.update({
        "noise_shape": [int(d) for d in model.noise_shape],
        "image_size": int(getattr(model, "image_size", config.image_size)),
        "channels": int(getattr(model, "channels", config.channels)),
        "conditional": bool(getattr(model, "conditional", False)),
        "num_classes": num_classes,
        "findings": findings[:num_classes] if num_classes else findings,
        "data_range": model.data_range,
        "endpoints": endpoints,
        "supports_guidance": bool(getattr(model, "supports_guidance", False)),
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

    tmp = work_folder(out)
    try:
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        if sampling_steps is None and sampler is None:
            shutil.copy2(Path(run_dir) / "model.keras", tmp / "model.keras")
        else:  # the .keras must sample like the SavedModel
            model.save(tmp / "model.keras")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / "MODEL_CARD.md").write_text(model_card(cfg, info))
        publish_folder(tmp, out, "export")
    except OSError as exc:  # e.g. ENOSPC: the previous export (if any) is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"export to {out} failed, nothing was changed there: {exc.strerror or exc}"
                        f"{f' ({exc.filename})' if exc.filename else ''}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


