"""`keras-cxr compare`: the same metrics for several exported generators, one table."""

from __future__ import annotations

from keras_cxr.commands.evaluate import add_evaluation_arguments

HELP = ("Compare exported generators on the same real sets and seed: one metric table (markdown + HTML) "
        "with the real-vs-real floor and a blurred-real row, and their sample grids side by side.")


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="exported model folders or names under saved_models/")
    p.add_argument("--out", default="reports/compare", metavar="DIR", help="report folder (default reports/compare)")
    add_evaluation_arguments(p)


def run(args) -> int:
    from keras_cxr.commands.evaluate import evaluation_kwargs, print_summary
    from keras_cxr.evaluation import compare

    results = compare(args.models, out=args.out, **evaluation_kwargs(args))
    print_summary(results)
    print(f"\nreport: {args.out}/report.html, {args.out}/report.md, {args.out}/metrics.json")
    return 0
