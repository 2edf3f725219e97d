"""The quick arithmetic benchmark reproduces the expected orderings (deterministic, 1 thread)."""

from __future__ import annotations

import argparse
import json

import pytest

from napari_nalu_count.bench import arithmetic as bench


@pytest.fixture(scope="module")
def quick() -> dict:
    return bench.run_benchmark(quick=True)


def _mae(result: dict, op: str, model: str) -> float:
    return result["static"][op][model]["mae_extrap"]


def test_nac_and_nau_extrapolate_add_and_sub(quick: dict) -> None:
    for op in ("add", "sub"):
        for model in ("nac", "nau"):
            assert _mae(quick, op, model) < 1e-3, (op, model)
            assert quick["static"][op][model]["success_rate"] == 1.0


def test_nalu_or_nmu_extrapolates_mul(quick: dict) -> None:
    best = min(quick["static"]["mul"][m]["rel_extrap"] for m in ("nalu", "nmu"))
    assert best < 1.0  # below 1% of the random-init error
    for mlp in ("relu6", "tanh", "sigmoid"):
        assert quick["static"]["mul"][mlp]["rel_extrap"] > 100 * best


def test_saturating_mlps_fail_to_extrapolate(quick: dict) -> None:
    for op in ("add", "sub"):
        units = max(_mae(quick, op, m) for m in ("nac", "nau"))
        for mlp in ("relu6", "tanh", "sigmoid"):
            assert _mae(quick, op, mlp) > 1e3 * units, (op, mlp)
            assert quick["static"][op][mlp]["success_rate"] == 0.0


def test_counting_table_one(quick: dict) -> None:
    c = quick["counting"]
    for unit in ("nac", "nau"):
        assert c[unit]["mae_extrap"] < 1e-3
    for mlp in ("relu6", "tanh", "sigmoid"):
        assert c[mlp]["mae_extrap"] > 1.0
    assert quick["settings"]["seeds"] == 1


def test_cli_writes_json_and_rejects_bad_args(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    bench.configure(parser)
    out = tmp_path / "a.json"
    args = parser.parse_args(["--quick", "--steps", "3", "--json", str(out)])
    # keep the CLI smoke test small: fewer models and L-BFGS iterations
    orig = bench.Settings.quick

    def tiny(seeds: int = 1) -> bench.Settings:
        s = orig(seeds)
        return bench.Settings(
            **{**s.__dict__, "lbfgs_iter": 2, "ops": ("add",), "static_models": ("nac", "relu6")}
        )

    bench.Settings.quick = staticmethod(tiny)  # type: ignore[method-assign]
    try:
        assert bench.run(args) == 0
    finally:
        bench.Settings.quick = staticmethod(orig)  # type: ignore[method-assign]
    data = json.loads(out.read_text())
    assert data["settings"]["steps"] == 3
    assert set(data["static"]["add"]) == {"nac", "relu6"}
    assert "Counting paper Table I" in capsys.readouterr().out
    assert bench.run(parser.parse_args(["--quick", "--seeds", "0"])) == 2
