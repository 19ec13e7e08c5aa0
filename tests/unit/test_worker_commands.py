"""The worker's per-command argument modules: every `als` option fills the setting its dest names."""

from __future__ import annotations

from dataclasses import fields

import pytest

from airflow_gpu.worker.__main__ import build_parser
from airflow_gpu.worker.commands import als
from airflow_gpu.worker.config import AlsConfig
from airflow_gpu.worker.ingest import Columns
from airflow_gpu.worker.train import TrainParams

BASE = ["als", "--input", "in", "--output", "out"]


def _als_parser():
    return next(p for p in build_parser()._subparsers._group_actions[0].choices.values() if p.prog.endswith(" als"))


def test_every_als_option_fills_the_field_its_dest_names_and_only_threads_fills_two():
    owners = {cls: {f.name for f in fields(cls)} for cls in (AlsConfig, Columns, TrainParams)}
    dests = {a.dest for a in _als_parser()._actions} - {"help", "quiet"}
    for dest in dests:
        filled = [cls.__name__ for cls, names in owners.items() if dest in names]
        assert filled == (["AlsConfig", "TrainParams"] if dest == "threads" else filled[:1]) and filled, dest
    # Fields no option fills: the nested settings themselves, and what only a caller of run_als can give.
    unfilled = {name for names in owners.values() for name in names} - dests
    assert unfilled == {"columns", "train", "run_id", "on_iteration"}


def test_the_config_is_every_option_with_weighting_tune_and_threads_derived():
    args = build_parser().parse_args(
        [*BASE, "--user-col", "u", "--weight-col", "plays", "--no-loss", "--no-factors", "--threads", "3"]
        + ["--factors", "8", "--alpha", "2", "--top-n", "4", "--keep-runs", "0", "--endpoint-url", "http://s3"]
    )
    assert als.config(args) == AlsConfig(
        input="in",
        output="out",
        columns=Columns("u", "item_id", "plays"),
        endpoint_url="http://s3",
        alpha=2.0,  # given, so nothing is searched
        tune=False,
        train=TrainParams(factors=8, threads=3, loss=False),
        top_n=4,
        write_factors=False,
        threads=3,
        keep_runs=0,
    )
    plain = als.config(build_parser().parse_args(BASE))
    assert plain.weighting == "bm25" and plain.tune is True and plain.threads is None and plain.train.threads == 0


@pytest.mark.parametrize("flag", ["--no-loss", "--no-factors", "--drop-invalid"])
def test_a_flags_help_says_it_is_off_by_default(flag):
    # --no-loss stores False into `loss` (default True); its help still says the flag itself is off.
    parser = _als_parser()
    [action] = [a for a in parser._actions if flag in a.option_strings]
    assert parser._get_formatter()._expand_help(action).endswith(" (default: False)")
