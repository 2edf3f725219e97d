"""``nalu-count bench speed``: the previous engine timed in the same run, the small-image and
target sections, and the engine switches restored afterwards (issue 17)."""

from __future__ import annotations

import json
import sys

import pytest

from napari_nalu_count import cli
from napari_nalu_count.bench.speed import BASELINE_OPTIONS, engine_config
from napari_nalu_count.data import normalize
from napari_nalu_count.infer import allocator, engine


def test_engine_config_sets_and_restores():
    before = dict(engine.OPTIONS)
    hist = normalize.HISTOGRAM_MIN_SIZE
    with engine_config(BASELINE_OPTIONS):
        assert engine.OPTIONS["backend"] == "torch"
        assert engine.OPTIONS["balanced_tiles"] is False
        assert normalize.HISTOGRAM_MIN_SIZE > 1 << 40
    assert engine.OPTIONS == before and normalize.HISTOGRAM_MIN_SIZE == hist


def test_bench_speed_baseline_and_small_images(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["bench", "speed", "--size", "128", "--repeats", "1", "--no-segment", "--baseline"]
    argv += ["--small", "2", "--small-size", "64", "--threads", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "speed-up count: current vs previous" in text and "load average" in text
    data = json.loads(out.read_text())
    configs = [r["configuration"] for r in data["rows"]]
    assert "current" in configs and "previous" in configs
    assert data["rows"][0]["what"] == "count (end to end)"
    small = data["small_images"]["configurations"]
    assert set(small) == {"current", "previous"}
    cur, prev = small["current"]["given"], small["previous"]["given"]
    assert cur["total_count"] == pytest.approx(prev["total_count"], rel=1e-4)
    assert len(data["load_average_start"]) == 3 and "targets" in data
    assert "--baseline" in data["command"] and "--small 2" in data["command"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child processes read /proc")
def test_bench_speed_allocator_compares_separate_processes(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["bench", "speed", "--size", "128", "--repeats", "1", "--no-segment", "--allocator"]
    argv += ["--threads", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "allocator count 128 px: tuned" in printed
    data = json.loads(out.read_text())["allocator"]
    rows = {r["configuration"]: r for r in data["rows"]}
    tuned, plain = rows["current engine"], rows["current engine, glibc allocator defaults"]
    assert tuned["allocator_tuned"] is (allocator._glibc() is not None)
    assert plain["allocator_tuned"] is False
    assert tuned["count"] == pytest.approx(plain["count"], rel=1e-5)  # same result either way
    assert len(tuned["times"]) == 2 and len(tuned["minor_faults"]) == 2
    assert data["summary"]["count"]["speedup"] > 0
    # the round-7 tuning (mmap still allowed above glibc's 32 MiB threshold cap): tuned too
    mmap = rows["current engine, allocator tuned with mmap allowed"]
    assert mmap["allocator_tuned"] is (allocator._glibc() is not None)
    assert mmap["count"] == pytest.approx(tuned["count"], rel=1e-5)
    assert data["summary"]["count"]["speedup_no_mmap"] > 0
    assert "vs mmap allowed" in printed
