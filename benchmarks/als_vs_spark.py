"""Our ALS pipeline against Spark MLlib ALS: same data, same held-out split, same metric.

Both sides read the same local Parquet folder of training interactions (string ids, raw
play events with repeats, as an event log would hold them) and produce the top 10 items
for every user:

- ours: the worker's own pipeline, ``run_als`` (ingest, id encoding and CSR, confidence
  weighting, ALS, top 10 for every user with seen items left out), with its defaults;
- Spark: ``spark.read.parquet``, summing repeated pairs, ``StringIndexer``, ``ALS.fit``,
  ``recommendForAllUsers(10)``, in ``local[*]``.

The held-out pairs are removed from the Parquet before either side sees it. Precision@10
is computed by one function (``precision_at_k``) over both sides' lists for the same
sample of users, after mapping every id back to the original strings.

    .venv/bin/python benchmarks/als_vs_spark.py --interactions 1000000

The last line is machine-readable:
``als: spark_over_ours=<ratio> p10_ours=<x> p10_spark=<y>``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards  # noqa: E402
from airflow_gpu.worker.config import AlsConfig  # noqa: E402
from airflow_gpu.worker.evaluate import holdout_split, ranking_metrics  # noqa: E402
from airflow_gpu.worker.ingest import Columns  # noqa: E402
from airflow_gpu.worker.pipeline import run_als  # noqa: E402
from airflow_gpu.worker.recommend import popularity_top_n, top_n  # noqa: E402
from airflow_gpu.worker.train import TrainParams  # noqa: E402

K = 10


# ---------------------------------------------------------------------------------------
# The data and the split, shared by both sides
# ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """The training Parquet both sides read, and the held-out truth, in one global id space."""

    folder: Path
    user_ids: pa.Array  # global user code -> original string id
    item_ids: pa.Array  # global item code -> original string id
    train: scipy.sparse.csr_matrix  # global codes, summed plays, the pairs both sides train on
    test: scipy.sparse.csr_matrix  # global codes, the held-out pairs
    eval_users: np.ndarray  # global user codes scored by precision_at_k
    rows: int  # raw training rows written (repeats included)
    pairs: int  # distinct (user, item) training pairs


def prepare(interactions: int, folder: Path, *, holdout: float, eval_users: int, objects: int, seed: int) -> Dataset:
    """Synthetic events -> per-user split of distinct pairs -> training events as Parquet."""
    table = synthetic_interactions(interactions, seed=seed)
    users = pc.dictionary_encode(table["user_id"]).combine_chunks()
    items = pc.dictionary_encode(table["item_id"]).combine_chunks()
    u = users.indices.to_numpy().astype(np.int64)
    i = items.indices.to_numpy().astype(np.int64)
    n_users, n_items = len(users.dictionary), len(items.dictionary)
    keys = u * n_items + i
    pair_keys, inverse = np.unique(keys, return_inverse=True)
    plays = np.bincount(inverse, weights=table["plays"].to_numpy(), minlength=len(pair_keys)).astype(np.float32)
    pair_users = pair_keys // n_items
    indptr = np.concatenate([[0], np.cumsum(np.bincount(pair_users, minlength=n_users))])
    summed = scipy.sparse.csr_matrix((plays, (pair_keys % n_items).astype(np.int32), indptr), shape=(n_users, n_items))
    summed.has_sorted_indices = True
    # The worker's own split: each distinct pair of a user with 2+ items is held out with
    # probability `holdout`, keeping one in training; every repeat of a held-out pair goes with it.
    train, test = holdout_split(summed, holdout, seed)
    test_keys = _keys(test)
    held = np.isin(keys, test_keys, assume_unique=False)
    training_rows = table.filter(pa.array(~held))
    write_shards(training_rows, folder, "parquet", objects=objects)

    rng = np.random.default_rng(seed + 7)
    candidates = np.flatnonzero(np.diff(test.indptr) > 0)
    chosen = np.sort(rng.choice(candidates, size=min(eval_users, len(candidates)), replace=False))
    return Dataset(folder, users.dictionary, items.dictionary, train, test, chosen, training_rows.num_rows, train.nnz)


def _keys(matrix: scipy.sparse.csr_matrix) -> np.ndarray:
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def to_global(ids: pa.Array, dictionary: pa.Array) -> np.ndarray:
    """Positions of original string ids in a global dictionary (every id must be there)."""
    codes = pc.index_in(ids.cast(pa.large_string()), value_set=dictionary.cast(pa.large_string()))
    if codes.null_count:
        raise RuntimeError(f"{codes.null_count} ids are missing from the global dictionary")
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)


def precision_at_k(recommended: np.ndarray, data: Dataset, k: int = K) -> float:
    """The one metric for every side: mean precision@k over ``data.eval_users``.

    ``recommended`` holds global item codes, one row per evaluation user in the same
    order, -1 for an unfilled slot. A hit is a held-out pair; precision is hits / k.
    """
    if recommended.shape != (len(data.eval_users), k):
        raise ValueError(f"expected {len(data.eval_users)} x {k} recommendations, got {recommended.shape}")
    return float(ranking_metrics(recommended, data.test[data.eval_users], k)["precision"].mean())


def popularity_lists(data: Dataset) -> np.ndarray:
    """Most popular unseen training items per evaluation user: the floor both must clear."""
    popularity = np.bincount(data.train.indices, minlength=data.train.shape[1]).astype(np.float32)
    ids, _ = popularity_top_n(popularity, data.train, data.eval_users.astype(np.int32), K)
    return ids


# ---------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------


@dataclass
class SideResult:
    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    lists: np.ndarray | None = None  # global item codes, eval users x K
    extra: dict = field(default_factory=dict)


def run_ours(data: Dataset, factors: int, iterations: int, seed: int) -> SideResult:
    """The worker pipeline end to end, as the container runs it, with nothing written.

    With ``output=None`` run_als still computes (and times) the top 10 for every user, but
    keeps no list; the evaluation users' lists are then recomputed from the same model
    and matrix with the same function (``recommend.top_n``), outside the timing.
    """
    config = AlsConfig(
        input=str(data.folder),
        output=None,
        format="parquet",
        columns=Columns(weight="plays"),
        train=TrainParams(factors=factors, iterations=iterations, seed=seed),
        top_n=K,
        similar_n=0,  # Spark computes no similar items; neither do we here
        write_factors=False,
        progress_interval=60.0,
    )
    started = time.perf_counter()
    run = run_als(config)
    total = time.perf_counter() - started
    stages = dict(run.metrics["stages"])
    interactions = run.interactions
    ours_users = to_global(interactions.user_ids, data.user_ids)
    position = np.full(data.train.shape[0], -1, np.int64)
    position[ours_users] = np.arange(len(ours_users))
    rows = position[data.eval_users]
    if (rows < 0).any():
        raise RuntimeError("an evaluation user is missing from our model")
    ids, _ = top_n(run.training.model, interactions.matrix, rows.astype(np.int32), K)
    item_map = to_global(interactions.item_ids, data.item_ids)
    lists = np.where(ids >= 0, item_map[np.maximum(ids, 0)], -1)
    extra = {
        "device": run.training.device,
        "weighting": run.metrics["training"]["weighting"],
        "alpha": run.metrics["training"]["alpha"],
        "regularization": run.metrics["training"]["regularization"],
        "users": interactions.users,
        "items": interactions.items,
        "nnz": int(interactions.matrix.nnz),
    }
    return SideResult(stages, total, lists, extra)


# ---------------------------------------------------------------------------------------
# Spark
# ---------------------------------------------------------------------------------------


@dataclass
class SparkSettings:
    """Spark's settings; the model ones are the best of a grid at 1M (benchmarks/README.md).

    Spark scales regParam by each user's and item's number of ratings (ALS-WR), so its
    regParam is not implicit's regularization; the grid is what makes the two comparable.
    """

    memory: str = "8g"  # local mode: the driver is the executor; the default 1g spills
    shuffle_partitions: int = 8  # the default 200 is for clusters: tiny tasks on 2 cores
    blocks: int = 4  # ALS numUserBlocks = numItemBlocks: 2 per core
    alpha: float = 3.0
    reg: float = 1.0
    rating: str = "raw"  # the summed plays, or log1p of them


def spark_session(settings: SparkSettings, scratch: Path):
    from pyspark.sql import SparkSession

    logging.getLogger("py4j").setLevel(logging.WARNING)  # one INFO line per connection otherwise
    cores = os.cpu_count() or 1
    session = (
        SparkSession.builder.master("local[*]")
        .appName("als_vs_spark")
        .config("spark.driver.memory", settings.memory)
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.default.parallelism", str(cores))
        .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
        # Java's vector API lets netlib's pure-Java BLAS use SIMD (no native BLAS is installed).
        .config("spark.driver.extraJavaOptions", "--add-modules=jdk.incubator.vector")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.local.dir", str(scratch / "spark-local"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    # Without a checkpoint directory ALS never cuts its lineage, and after 15 iterations
    # deserialising a task recurses deep enough to overflow the stack (seen at 1M rows).
    # Spark's docs recommend setting one; ALS then checkpoints every 10 iterations.
    session.sparkContext.setCheckpointDir(str(scratch / "checkpoints"))
    return session


def run_spark(
    data: Dataset, factors: int, iterations: int, seed: int, settings: SparkSettings, spark=None
) -> SideResult:
    """Spark's pipeline stage by stage; each stage is forced to finish before its clock stops.

    read: the Parquet is cached and counted (later stages reuse it, as a Spark job would).
    index: repeats summed with groupBy, both id columns indexed, the result cached and counted.
    fit: ALS.fit is eager; it materialises both factor RDDs before returning.
    recommend: recommendForAllUsers(10) written to the "noop" sink, which computes every
    row and stores nothing (cheaper than caching, so Spark's favour).
    """
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    own = spark is None
    stages: dict[str, float] = {}
    if own:
        # JVM start-up and a warm-up job (so the JIT has compiled Spark's common paths) are
        # printed but kept out of the total, as our interpreter's start and imports are.
        with _clock(stages, "session"):
            spark = spark_session(settings, data.folder.parent)
            spark.range(200_000).selectExpr("id % 1000 AS k").groupBy("k").count().collect()
    started = time.perf_counter()
    try:
        with _clock(stages, "read"):
            raw = spark.read.parquet(str(data.folder)).cache()
            raw.count()
        with _clock(stages, "index"):
            summed = raw.groupBy("user_id", "item_id").agg(F.sum("plays").alias("plays"))
            indexer = StringIndexer(inputCols=["user_id", "item_id"], outputCols=["user", "item"]).fit(summed)
            rating = F.log1p(F.col("plays")) if settings.rating == "log1p" else F.col("plays")
            indexed = (
                indexer.transform(summed)
                .select(
                    F.col("user").cast("int").alias("user"),
                    F.col("item").cast("int").alias("item"),
                    rating.cast("float").alias("rating"),
                )
                .cache()
            )
            indexed.count()
        with _clock(stages, "fit"):
            als = ALS(
                rank=factors,
                maxIter=iterations,
                implicitPrefs=True,
                alpha=settings.alpha,
                regParam=settings.reg,
                userCol="user",
                itemCol="item",
                ratingCol="rating",
                seed=seed,
                numUserBlocks=settings.blocks,
                numItemBlocks=settings.blocks,
            )
            model = als.fit(indexed)
        with _clock(stages, "recommend"):
            model.recommendForAllUsers(K).write.format("noop").mode("overwrite").save()
        total = time.perf_counter() - started
        lists, filtered = _spark_lists(spark, data, indexer, model)
        indexed.unpersist()
        raw.unpersist()
    finally:
        if own:
            spark.stop()
    return SideResult(stages, total, filtered, {"raw_lists": lists})


def _spark_lists(spark, data: Dataset, indexer, model) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation users' top 10 from Spark, two ways, both in global item codes.

    raw: what recommendForAllUsers returns (recomputed for these users with
    recommendForUserSubset: same model, same scoring). Spark does not leave out items the
    user has already seen, so some slots are spent on training items.
    filtered: the same model's factors ranked with seen items left out, as ours does;
    this is Spark's model quality on equal terms, and the figure the target compares.
    """
    from implicit.cpu.topk import topk
    from pyspark.sql import functions as F

    user_labels, item_labels = (pa.array(labels, pa.large_string()) for labels in indexer.labelsArray)
    spark_user_of_global = np.full(data.train.shape[0], -1, np.int64)
    spark_user_of_global[to_global(user_labels, data.user_ids)] = np.arange(len(user_labels))
    spark_item_to_global = to_global(item_labels, data.item_ids)
    eval_spark_users = spark_user_of_global[data.eval_users]
    if (eval_spark_users < 0).any():
        raise RuntimeError("an evaluation user is missing from Spark's model")
    order = {int(s): n for n, s in enumerate(eval_spark_users)}

    subset = spark.createDataFrame([(int(s),) for s in eval_spark_users], ["user"])
    raw = np.full((len(eval_spark_users), K), -1, np.int64)
    for row in (
        model.recommendForUserSubset(subset, K).select("user", F.col("recommendations.item").alias("items")).collect()
    ):
        items = np.asarray(row["items"], np.int64)
        raw[order[row["user"]], : len(items)] = spark_item_to_global[items]

    item_factors = _factors(model.itemFactors, len(item_labels))
    wanted = spark.createDataFrame([(int(s),) for s in eval_spark_users], ["id"])
    user_factors_df = model.userFactors.join(wanted, "id")
    user_factors = np.zeros((len(eval_spark_users), item_factors.shape[1]), np.float32)
    for row in user_factors_df.collect():
        user_factors[order[row["id"]]] = row["features"]
    # Seen items, in Spark's item order, for the filter.
    global_to_spark_item = np.full(data.train.shape[1], -1, np.int64)
    global_to_spark_item[spark_item_to_global] = np.arange(len(spark_item_to_global))
    seen = data.train[data.eval_users]
    seen = scipy.sparse.csr_matrix(
        (seen.data, global_to_spark_item[seen.indices].astype(np.int32), seen.indptr),
        shape=(seen.shape[0], len(item_labels)),
    )
    seen.sort_indices()
    ids, scores = topk(item_factors, user_factors, K, filter_query_items=seen, num_threads=0)
    ids = np.asarray(ids, np.int64)
    filled = (ids >= 0) & np.isfinite(np.asarray(scores)) & (np.asarray(scores) > -1e30)
    filtered = np.where(filled, spark_item_to_global[np.maximum(ids, 0)], -1)
    return raw, filtered


def _factors(frame, count: int) -> np.ndarray:
    rows = frame.collect()
    out = np.zeros((count, len(rows[0]["features"])), np.float32)
    for row in rows:
        out[row["id"]] = row["features"]
    return out


@contextlib.contextmanager
def _clock(stages: dict, name: str):
    started = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - started
    print(f"  {name:<12} {stages[name]:8.2f} s", flush=True)


# ---------------------------------------------------------------------------------------
# Spark tuning: the alpha, regParam and rating transform that serve Spark best
# ---------------------------------------------------------------------------------------


TUNE_GRID = "log1p:1:0.1,log1p:10:0.1,log1p:40:0.1,raw:1:0.1,raw:10:0.1"


def tune_spark(
    data: Dataset, factors: int, iterations: int, seed: int, settings: SparkSettings, grid_text: str
) -> None:
    """precision@10 of Spark over a grid of rating:alpha:regParam; run once to pick Spark's defaults."""
    grid = [
        (rating, float(alpha), float(reg)) for rating, alpha, reg in (item.split(":") for item in grid_text.split(","))
    ]
    spark = spark_session(settings, data.folder.parent)
    try:
        for rating, alpha, reg in grid:
            trial = SparkSettings(settings.memory, settings.shuffle_partitions, settings.blocks, alpha, reg, rating)
            result = run_spark(data, factors, iterations, seed, trial, spark=spark)
            print(
                f"tune: rating={rating} alpha={alpha:g} regParam={reg:g} p10={precision_at_k(result.lists, data):.4f} "
                f"p10_unfiltered={precision_at_k(result.extra['raw_lists'], data):.4f} fit={result.stages['fit']:.1f}s",
                flush=True,
            )
    finally:
        spark.stop()


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000, help="raw play events to generate")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--holdout", type=float, default=0.2, help="per-user share of distinct pairs held out")
    parser.add_argument("--eval-users", type=int, default=20_000)
    parser.add_argument("--objects", type=int, default=8, help="Parquet files to split the training data into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times; keep each one's fastest")
    parser.add_argument("--spark-memory", default=SparkSettings.memory)
    parser.add_argument("--spark-partitions", type=int, default=SparkSettings.shuffle_partitions)
    parser.add_argument(
        "--spark-blocks", type=int, default=SparkSettings.blocks, help="ALS numUserBlocks = numItemBlocks"
    )
    parser.add_argument("--spark-alpha", type=float, default=SparkSettings.alpha)
    parser.add_argument("--spark-reg", type=float, default=SparkSettings.reg)
    parser.add_argument("--spark-rating", choices=("log1p", "raw"), default=SparkSettings.rating)
    parser.add_argument(
        "--tune-spark",
        nargs="?",
        const=TUNE_GRID,
        metavar="RATING:ALPHA:REG,...",
        help=f"print Spark's precision over a grid, then stop (default grid {TUNE_GRID})",
    )
    parser.add_argument("--workdir", help="where the Parquet goes (default: a temporary folder)")
    args = parser.parse_args(argv)
    settings = SparkSettings(
        args.spark_memory, args.spark_partitions, args.spark_blocks, args.spark_alpha, args.spark_reg, args.spark_rating
    )

    with tempfile.TemporaryDirectory(prefix="als_vs_spark-", dir=args.workdir) as tmp:
        started = time.perf_counter()
        data = prepare(
            args.interactions,
            Path(tmp) / "train",
            holdout=args.holdout,
            eval_users=args.eval_users,
            objects=args.objects,
            seed=args.seed,
        )
        print(
            f"data: {args.interactions:,} events -> {data.rows:,} training rows, {data.pairs:,} distinct training pairs, "
            f"{data.test.nnz:,} held out; {data.train.shape[0]:,} users x {data.train.shape[1]:,} items; "
            f"{len(data.eval_users):,} evaluation users ({time.perf_counter() - started:.1f} s to prepare)",
            flush=True,
        )
        if args.tune_spark:
            tune_spark(data, args.factors, args.iterations, args.seed, settings, args.tune_spark)
            return 0

        # With --repeat, each side keeps its fastest whole run (the machine is shared, and
        # Spark's later runs also find its JIT warm, which only favours Spark).
        ours_runs, spark_runs = [], []
        for attempt in range(args.repeat):
            print(f"ours (run {attempt + 1}/{args.repeat}):", flush=True)
            ours_runs.append(run_ours(data, args.factors, args.iterations, args.seed))
            for name, seconds in ours_runs[-1].stages.items():
                print(f"  {name:<12} {seconds:8.2f} s", flush=True)
            print(f"  {'total':<12} {ours_runs[-1].total:8.2f} s", flush=True)
        for attempt in range(args.repeat):
            print(f"spark (run {attempt + 1}/{args.repeat}):", flush=True)
            spark_runs.append(run_spark(data, args.factors, args.iterations, args.seed, settings))
            print(f"  {'total':<12} {spark_runs[-1].total:8.2f} s", flush=True)
        ours = min(ours_runs, key=lambda r: r.total)
        spark = min(spark_runs, key=lambda r: r.total)

    p10_ours = precision_at_k(ours.lists, data)
    p10_spark = precision_at_k(spark.lists, data)
    p10_spark_raw = precision_at_k(spark.extra["raw_lists"], data)
    p10_pop = precision_at_k(popularity_lists(data), data)
    ratio = spark.total / ours.total
    report(ours, spark, ratio, p10_ours, p10_spark, p10_spark_raw, p10_pop, settings)
    print(f"als: spark_over_ours={ratio:.2f} p10_ours={p10_ours:.4f} p10_spark={p10_spark:.4f}", flush=True)
    return 0


def report(
    ours: SideResult,
    spark: SideResult,
    ratio: float,
    p10_ours: float,
    p10_spark: float,
    p10_spark_raw: float,
    p10_pop: float,
    settings: SparkSettings,
) -> None:
    """Stage by stage, matched where the two pipelines do the same thing."""
    rows = [
        (
            "read + ids + CSR",
            ours.stages.get("ingest", 0) + ours.stages.get("matrix", 0),
            spark.stages.get("read", 0) + spark.stages.get("index", 0),
        ),
        ("train", ours.stages.get("weighting", 0) + ours.stages.get("train", 0), spark.stages.get("fit", 0)),
        ("top 10, every user", ours.stages.get("recommend", 0), spark.stages.get("recommend", 0)),
    ]
    print()
    print(f"{'stage':<22} {'ours s':>9} {'spark s':>9} {'spark/ours':>10}")
    for name, a, b in rows:
        print(f"{name:<22} {a:9.2f} {b:9.2f} {(b / a if a else float('nan')):10.1f}")
    print(f"{'total (wall)':<22} {ours.total:9.2f} {spark.total:9.2f} {ratio:10.1f}")
    print(f"(not in the total: Spark's session start and warm-up job, {spark.stages.get('session', 0):.1f} s)")
    print()
    print(
        f"ours:  {ours.extra['device']}, weighting {ours.extra['weighting']} alpha {ours.extra['alpha']}, "
        f"regularization {ours.extra['regularization']}; {ours.extra['users']:,} users x {ours.extra['items']:,} items, "
        f"{ours.extra['nnz']:,} pairs"
    )
    print(
        f"spark: rating {settings.rating}(plays), alpha {settings.alpha:g}, regParam {settings.reg:g}, "
        f"{settings.blocks} blocks, {settings.shuffle_partitions} shuffle partitions, driver memory {settings.memory}"
    )
    print(
        f"precision@{K}: ours {p10_ours:.4f}, spark {p10_spark:.4f} (seen items left out), "
        f"spark as recommendForAllUsers returns it {p10_spark_raw:.4f}, popularity {p10_pop:.4f}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
