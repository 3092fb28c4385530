"""Exported sampling speed of diffusion exports (images/s, wall and process CPU), after one warm-up batch.

    python benchmarks/sampler_speed.py saved_models/ldm-dpm10 saved_models/ldm-ddim50 [--n 128] [--finding Effusion]

Make the exports with `keras-cxr export --run-dir RUN --out OUT --sampler dpm++2m --sampling-steps 10`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exports", nargs="+", help="exported model folders")
    p.add_argument("--n", type=int, default=128, help="images timed per export (default 128)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--finding", default=None, help="sample conditionally (classifier-free guidance) for this finding")
    args = p.parse_args(argv)
    from keras_cxr.sampling import load_generator

    for path in args.exports:
        gen = load_generator(path)
        labels = args.finding if args.finding and gen.conditional else None
        gen.sample(args.batch_size, seed=1, labels=labels, batch_size=args.batch_size)  # trace + warm up
        w, c = time.perf_counter(), time.process_time()
        gen.sample(args.n, seed=0, labels=labels, batch_size=args.batch_size)
        w, c = time.perf_counter() - w, time.process_time() - c
        kw = gen.config.get("model_kwargs", {})
        print(json.dumps({"export": path, "sampler": kw.get("sampler", "ddim"), "steps": kw.get("sampling_steps"),
                          "guided": labels is not None, "img_per_s_wall": round(args.n / w, 1),
                          "img_per_cpu_s": round(args.n / c, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
