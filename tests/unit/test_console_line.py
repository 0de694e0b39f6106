"""The console line of MetricLogger.log: the headline numbers, and in its "data:" part only the data
trouble (samples skipped or filtered, shards that failed, retried requests), never the normal flow of
samples (drawn/read per source, decoded, kept, shards served from the cache)."""

from __future__ import annotations

import logging

from bmca_clip.config import LoggerConfig
from bmca_clip.data.counters import DataCounters
from bmca_clip.tracking import MetricLogger


def _console_line(tmp_path, caplog, counters: DataCounters) -> str:
    cfg = LoggerConfig(progress_bar=False, jsonl=False)
    logger = MetricLogger(cfg, tmp_path, total_steps=10, start_step=0, run_name="t", config={})
    with caplog.at_level(logging.INFO, logger="bmca_clip.tracking"), logger:
        logger.log(3, {"loss": 1.5, "lr": 0.001, **counters.as_metrics()})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 3:")]
    assert len(lines) == 1
    return lines[0]


def _normal_flow() -> DataCounters:
    counters = DataCounters(decoded=60, kept=48, transport={"shards_from_cache": 2})
    counters.count("drawn", "commercial", 40)
    counters.count("drawn", "other", 24)
    counters.count("read", "commercial", 55)
    counters.count("read", "other", 30)
    return counters


def test_the_data_part_lists_only_trouble_counters(tmp_path, caplog):
    counters = _normal_flow()
    counters.count("skipped", "empty_caption", 3)
    counters.count("filtered", "balance", 5)
    counters.count("shards_failed", "http_404")
    counters.transport["retries"] = 7
    line = _console_line(tmp_path, caplog, counters)
    assert line.startswith("step 3: loss=1.5  lr=0.001  data: ")
    data = dict(item.split("=") for item in line.split("  data: ")[1].split())
    assert data == {
        "skipped/empty_caption": "3",
        "filtered/balance": "5",
        "shards_failed/http_404": "1",
        "retries": "7",
    }


def test_a_clean_stream_adds_no_data_part(tmp_path, caplog):
    line = _console_line(tmp_path, caplog, _normal_flow())
    assert line == "step 3: loss=1.5  lr=0.001"
