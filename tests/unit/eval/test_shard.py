"""Sharding a suite: a deterministic, disjoint, covering and balanced split, and shards merged into the
very summary a single run writes."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from bmca_clip.config import ConfigError, EvaluateConfig, to_object
from bmca_clip.eval import merge
from bmca_clip.eval import run as eval_run
from bmca_clip.eval.harness import TaskResult
from bmca_clip.eval.report import write_task_json
from bmca_clip.eval.shard import (
    DEFAULT_COST,
    TRAIN_PER_TEST,
    assign,
    parse_shard,
    resolve_shard,
    select,
    shard_from_env,
    task_cost,
)
from tests.helpers.config import compose_config


def _loads(costs, shards):
    return [sum(costs[i] for i in shard) for shard in shards]


def _best_makespan(costs, n):
    return min(max(_loads(costs, [[i for i, s in enumerate(a) if s == k] for k in range(n)])) for a in
               itertools.product(range(n), repeat=len(costs)))  # fmt: skip


def test_assignment_is_deterministic_disjoint_covering_and_balanced():
    costs = [7, 5, 4, 3, 3, 2]
    shards = assign(costs, 2)
    assert shards == assign(list(costs), 2)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    assert _loads(costs, shards) == [12, 12]  # 7+3+2 and 5+4+3: perfect here
    rng = random.Random(0)
    for _ in range(20):
        costs = [rng.choice([100, 500, 1000, 5000, 20000, 85000]) for _ in range(rng.randint(3, 8))]
        for n in (2, 3):
            shards = assign(costs, n)
            assert sorted(i for s in shards for i in s) == list(range(len(costs)))
            # Longest processing time first is within 4/3 of the best split (Graham 1969).
            assert max(_loads(costs, shards)) <= 4 / 3 * _best_makespan(costs, n)
    assert assign([1.0], 3) == [[0], [], []]


def test_select_uses_n_expected_and_keeps_suite_order():
    tasks = [
        SimpleNamespace(name=n, n_expected=c) for n, c in [("a", 100), ("b", 90000), ("c", None), ("d", 400)]
    ]
    first, second = select(tasks, (1, 2)), select(tasks, (2, 2))
    assert [t.name for t in first] == ["b"]  # 90000 outweighs 100 + DEFAULT_COST + 400
    assert [t.name for t in second] == ["a", "c", "d"] and DEFAULT_COST + 500 < 90000
    assert select(tasks, None) == tuple(tasks)


def test_a_probe_costs_its_train_split_too():
    zero_shot = SimpleNamespace(name="t", type="classification", n_expected=1000)
    probes = [SimpleNamespace(name=f"t@{k}", type=k, n_expected=1000) for k in ("linear_probe", "k_shot")]
    assert task_cost(zero_shot) == 1000
    assert [task_cost(p) for p in probes] == [1000 * (1 + TRAIN_PER_TEST)] * 2
    # the two probes (4500 each) go to different shares; the zero-shot task to the first (a tie)
    shares = [[t.name for t in select([zero_shot, *probes], (i, 2))] for i in (1, 2)]
    assert shares == [["t", "t@linear_probe"], ["t@k_shot"]]


def test_shard_from_the_command_line_or_a_slurm_array():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2of4", "-1/2"):
        with pytest.raises(ConfigError, match="expected i/n"):
            parse_shard(bad)
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 4)
    one_based = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_env(one_based) == (4, 4)
    stepped = {"SLURM_ARRAY_TASK_ID": "20", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "10"}
    assert shard_from_env({**stepped, "SLURM_ARRAY_TASK_STEP": "5"}) == (3, 3)
    with pytest.raises(ConfigError, match="pass shard=i/n"):
        shard_from_env(stepped)  # id 20 is past a 3-task array from 10 in steps of 1
    assert resolve_shard("1/2", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 2)
    assert to_object(compose_config("evaluate", ["shard=2/3"]), EvaluateConfig).shard == "2/3"
    with pytest.raises(ConfigError, match="shard='4/3'"):
        to_object(compose_config("evaluate", ["shard=4/3"]), EvaluateConfig)


def _run(corpus, out_dir, cache, *overrides):
    base = ["model=bmca-tiny", f"data_root={corpus.parent}", f"output_dir={out_dir}", f"cache_dir={cache}"]
    return eval_run.run(to_object(compose_config("evaluate", [*base, *overrides]), EvaluateConfig))


def test_shards_merged_give_the_summary_of_a_single_run(corpus, tmp_path, capsys):
    cache = tmp_path / "cache"
    _run(corpus, tmp_path / "single", cache)
    one = _run(corpus, tmp_path / "shard1", cache, "shard=1/2")
    two = _run(corpus, tmp_path / "shard2", cache, "shard=2/2")
    names = [r.task for rs in (one, two) for r in next(iter(rs.values()))]
    assert sorted(names) == ["synthetic_color", "synthetic_modality", "synthetic_retrieval"]
    assert not (tmp_path / "shard1" / "summary.csv").exists()  # a shard leaves the summary to merge

    merge.main([str(tmp_path / "shard1"), str(tmp_path / "shard2"), "--out", str(tmp_path / "merged")])

    single, merged = (tmp_path / d / "summary.csv" for d in ("single", "merged"))
    assert merged.read_text() == single.read_text()
    assert (tmp_path / "merged" / "summary_domains.csv").read_text() == (
        tmp_path / "single" / "summary_domains.csv"
    ).read_text()
    assert (tmp_path / "merged" / "summary.png").is_file()
    assert "mean over domains" in capsys.readouterr().out

    # Shard 2 alone: the other shard's tasks are listed as missing, not dropped.
    md, csv_path = merge.merge([tmp_path / "shard2"], tmp_path / "partial")
    missing = [line for line in csv_path.read_text().splitlines() if ",missing," in line]
    assert len(missing) == len(next(iter(one.values())))
    assert "## Missing tasks" in md.read_text()


def test_merge_prefers_ok_results_and_refuses_conflicting_ones(tmp_path):
    def write(folder, status, precision):
        result = TaskResult("t", "classification", "synthetic", status, "accuracy", {"accuracy": 0.5})
        config = {"task": "t", "precision": precision}
        write_task_json(result, tmp_path / folder / "model", {}, config, model_label="model")

    write("a", "failed", "fp32")
    write("b", "ok", "fp32")
    records, tasks = merge.collect([tmp_path / "a", tmp_path / "b"])
    assert tasks is None and [r["status"] for r in records["model"]] == ["ok"]
    write("c", "ok", "amp_bf16")
    with pytest.raises(merge.MergeError, match="different configs"):
        merge.collect([tmp_path / "b", tmp_path / "c"])
    with pytest.raises(merge.MergeError, match="not a folder"):
        merge.collect([tmp_path / "nowhere"])
