"""`keras-cxr train`: train a model (preset + overrides) into a run folder; rerun to resume."""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, SEED, whole, add_data_arguments

HELP = "train a generative model into a run folder (rerun the same command to resume)"


def add_arguments(p) -> None:
    p.add_argument("--model", default="lsgan", help="model name (lsgan, vae, gmvae, fs-gmvae, autoencoder-kl, ldm, diffusion, ...)")
    p.add_argument("--preset", default="default", help="named preset of the model (default: 'default')")
    p.add_argument("--run-dir", required=True, metavar="DIR", help="run folder, e.g. runs/lsgan")
    p.add_argument("--autoencoder", metavar="PATH", default=None,
                   help="ldm: the trained autoencoder-kl run folder or export")
    p.add_argument("--fine-tune", action="store_true", default=None,
                   help="VAE family / classifier: unfreeze the ImageNet backbone (same as --set model.fine_tune=True)")
    add_data_arguments(p, with_split=False, config_defaults=True)
    t = p.add_argument_group("training")
    t.add_argument("--image-size", type=whole(8), default=None, help="image size in pixels (lsgan: 32, 64, 128, 224, 256)")
    t.add_argument("--epochs", type=COUNT, default=None)
    t.add_argument("--batch-size", type=COUNT, default=None, help="GLOBAL batch size (split over replicas)")
    t.add_argument("--steps-per-epoch", type=COUNT, default=None)
    t.add_argument("--sample-every", type=COUNT, default=None,
                   help="write a sample grid and validate every N epochs (and after the last)")
    t.add_argument("--seed", type=SEED, default=None)
    t.add_argument("--deterministic", action="store_true", default=None,
                   help="enable TensorFlow op determinism (reproducible, slower)")
    t.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default=None,
                   help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    t.add_argument("--jit-compile", action="store_true", default=None, help="XLA-compile the train step")
    t.add_argument("--mixed-precision", choices=("mixed_float16", "mixed_bfloat16"), default=None,
                   help="Keras mixed-precision policy (float32 variables, half-precision compute): mixed_float16 "
                        "for GPUs (with loss scaling); mixed_bfloat16 also runs on CPU, but is usually slower "
                        "there than the float32 default")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, model.X (constructor) or compile.X (optimizer) value")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")


def config_from_args(args):
    from keras_cxr.training import resolve_config

    conditions = tuple(args.conditions) if args.conditions else None
    if conditions:
        from custom_datasets.findings import canonical_finding

        conditions = tuple(canonical_finding(c) for c in conditions)
    overrides = list(args.overrides) + (["model.fine_tune=True"] if args.fine_tune else [])
    args.overrides = overrides
    return resolve_config(
        args.model, args.preset, overrides, run_dir=args.run_dir, data=args.data, metadata=args.metadata,
        autoencoder=args.autoencoder, allow_missing=args.allow_missing,
        split_seed=args.split_seed, views=tuple(args.views) if args.views else None, conditions=conditions,
        max_images=args.max_images, image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, sample_every=args.sample_every, seed=args.seed,
        deterministic=args.deterministic, strategy=args.strategy, jit_compile=args.jit_compile,
        mixed_precision=getattr(args, "mixed_precision", None),
    )


def run(args) -> int:
    config = config_from_args(args)
    from keras_cxr.training import train

    run_dir = train(config, overrides=args.overrides, overwrite=args.overwrite)
    print(f"run folder: {run_dir} (model.keras, samples/, logs/ for TensorBoard: tensorboard --logdir {run_dir}/logs)")
    return 0
