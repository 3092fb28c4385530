"""How much of an SWD gap is sampling noise, and how much do an LDM's sampling settings move it.

    python benchmarks/swd_spread.py saved_models/compare-*                  # per export
    python benchmarks/swd_spread.py --ldm runs/compare/ldm/model.keras       # DDIM steps x guidance

Both follow `keras-cxr compare`'s protocol (held-out split, two disjoint real halves of m images,
seed 0, 200 samples; conditional models get the compare's held-out label rows) and score SWD x1e3
against half A on each of the 200 // m disjoint m-sample chunks, so every chunk is one draw of the
number the compare table prints. Exports are sampled exactly as the compare samples them (its table
uses chunk 1). The `--ldm` sweep samples the Keras model with ONE set of 200 noise draws for every
setting, so settings are compared pair by pair; it also prints the spectrum distance of all 200.
One JSON line per model / setting on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SETTINGS = [(2.0, 25), (1.0, 25), (0.0, 25), (3.0, 25), (2.0, 50), (1.0, 50)]  # (guidance, DDIM steps)


def _chunks(da, images, m):
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

    vals = [swd_from_descriptors(da, pyramid_descriptors(images[i : i + m], seed=0), seed=0)["swd"]
            for i in range(0, len(images) - m + 1, m)]
    return {"chunks": [round(v, 1) for v in vals], "mean": round(float(np.mean(vals)), 1),
            "std": round(float(np.std(vals, ddof=1)), 1) if len(vals) > 1 else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exports", nargs="*", help="exported model folders (saved_models/NAME)")
    p.add_argument("--ldm", type=Path, default=None, help="an LDM's model.keras: sweep DDIM steps and guidance")
    p.add_argument("--n", type=int, default=200, help="samples per model / setting (default 200)")
    args = p.parse_args(argv)
    if not args.exports and args.ldm is None:
        p.error("give export folders and/or --ldm MODEL.keras")

    from keras_cxr import evaluation as E
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

    gens = [E.load_model(path) for path in args.exports]
    ldm = None
    if args.ldm is not None:
        import keras

        from keras_cxr.recipes import get_recipe

        get_recipe("ldm").model_cls()  # registers the classes
        ldm = keras.saving.load_model(args.ldm)
    sizes = {int(g.config["image_size"]) for g in gens} | ({int(ldm.image_size)} if ldm is not None else set())
    if len(sizes) != 1:
        p.error(f"the models differ in image size ({sorted(sizes)}); give models of one size")
    ref = E.prepare_reference(split="heldout", n=args.n, image_size=sizes.pop(), seed=0, features="none", verbose=0)
    m = ref.k  # the compared-set size (= the floor B)
    da = pyramid_descriptors(ref.a[:m], seed=0)  # as `compare`: SWD against the first k of A
    floor = swd_from_descriptors(da, pyramid_descriptors(ref.b, seed=0), seed=0)["swd"]
    print(json.dumps({"m": m, "n": args.n, "floor_half_B": round(floor, 1)}), flush=True)
    for path, gen in zip(args.exports, gens):
        labels = E._conditional_labels(ref, args.n, 0, gen.config) if gen.config.get("conditional") else None
        x = E.generate(gen, args.n, seed=0, labels=labels, verbose=0)
        print(json.dumps({"export": path, **_chunks(da, x, m)}), flush=True)
    if ldm is not None:
        from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_distance_from_spectra

        labels = E._conditional_labels(ref, args.n, 0, {"num_classes": ldm.num_classes})
        z = np.random.default_rng(0).standard_normal((args.n, *ldm.noise_shape)).astype("float32")
        spec_a = radial_power_spectrum(ref.a)
        for guidance, steps in SETTINGS:
            x = np.concatenate([ldm.generate(z[i : i + 50], labels[i : i + 50], guidance=guidance, steps=steps).numpy()
                                for i in range(0, args.n, 50)])
            x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
            spec = spectrum_distance_from_spectra(spec_a, radial_power_spectrum(x))
            print(json.dumps({"guidance": guidance, "steps": steps, **_chunks(da, x, m), "spectrum": round(spec, 3)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
