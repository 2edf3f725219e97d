"""Model files: save/load round trip, corruption checks, atomic saves, directories, listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from napari_nalu_count import models
from napari_nalu_count.errors import InputError, ModelFileError
from napari_nalu_count.models import store
from napari_nalu_count.nn import registry

ARCHS = ("fcrn_a", "unet_count", "se_unet")


def tiny_config(arch: str = "fcrn_a", **overrides) -> dict:
    """A real registry config with the smallest sensible widths."""
    config = registry.default_config(arch)
    n_widths = len(config["widths"])
    config["widths"] = [4] * n_widths
    config.update(overrides)
    return config


def tiny_model(arch: str = "fcrn_a", **overrides) -> tuple[torch.nn.Module, dict]:
    config = tiny_config(arch, **overrides)
    torch.manual_seed(0)
    net = registry.build_model(config)
    # give batch-norm statistics non-default values so that buffers round-trip too
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    return net.eval(), config


def save_tiny(name: str = "tiny", arch: str = "fcrn_a", **kw) -> tuple[torch.nn.Module, Path]:
    net, config = tiny_model(arch)
    task = registry.task_of(config)
    card = models.make_card(name, task, config, metrics={"split": "synthetic", "mae": 1.5})
    return net, models.save_model(net, card, name, **kw)


@pytest.fixture(autouse=True)
def _fresh_cache():
    models.clear_model_cache()
    yield
    models.clear_model_cache()


@pytest.fixture
def no_bundled(tmp_path, monkeypatch) -> Path:
    """An empty stand-in for the package's bundled directory."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(store, "bundled_model_dir", lambda: bundled)
    return bundled


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------- round trip


ROUND_TRIPS = [(arch, {}) for arch in ARCHS] + [
    ("fcrn_a", {"unit": "nalu"}),
    ("unet_count", {"unit": "nmu", "deep_supervision": True}),
    ("se_unet", {"unit": "nau", "fre": {"B": 2, "X": 2.0, "seed": 1}}),
]


@pytest.mark.parametrize(("arch", "overrides"), ROUND_TRIPS)
def test_round_trip_gives_identical_outputs(arch, overrides, no_bundled):
    net, config = tiny_model(arch, **overrides)
    task = registry.task_of(config)
    card = models.make_card("rt", task, config, diameter=12.0)
    path = models.save_model(net, card, "rt")
    assert path == models.user_model_dir() / "rt.json"
    assert (models.user_model_dir() / "rt.safetensors").is_file()

    loaded = models.load_model("rt")
    assert isinstance(loaded, models.LoadedModel)
    assert loaded.name == "rt" and loaded.task == task and loaded.source == "user"
    assert loaded.config == config and loaded.path == path.resolve()
    assert not loaded.net.training
    assert all(p.requires_grad for p in loaded.net.parameters())  # can be fine-tuned
    x = torch.rand(1, config["in_channels"], 24, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(net(x), loaded.net(x))

    saved = json.loads(path.read_text())
    assert set(models.CARD_KEYS) <= set(saved)
    assert saved["n_parameters"] == sum(p.numel() for p in net.parameters())
    assert len(saved["weights_sha256"]) == 64
    assert saved["created"].endswith("+00:00")
    from napari_nalu_count import __version__

    assert saved["package_version"] == __version__


def test_load_by_paths_and_device(no_bundled):
    _, card_path = save_tiny("p1")
    base = card_path.with_name("p1")
    for spec in (card_path, base.with_name("p1.safetensors"), base, str(base)):
        assert models.load_model(spec).name == "p1"
    assert models.load_model("p1", device="auto").net is not None
    with pytest.raises(InputError, match="device"):
        models.load_model("p1", device="not-a-device")


def test_save_into_explicit_path_and_directory(tmp_path, no_bundled):
    net, config = tiny_model()
    card = models.make_card("dirname", "count", config)
    out = models.save_model(net, card, tmp_path / "elsewhere" / "m.v2")
    assert out == tmp_path / "elsewhere" / "m.v2.json"
    assert json.loads(out.read_text())["name"] == "m.v2"
    out2 = models.save_model(net, card, tmp_path / "elsewhere")  # existing dir: card's name
    assert out2.name == "dirname.json"
    out3 = models.save_model(net, card, "in-dir", directory=tmp_path / "d3")
    assert out3 == tmp_path / "d3" / "in-dir.json"
    assert models.load_model(tmp_path / "elsewhere" / "m.v2").name == "m.v2"


def test_make_card_defaults():
    config = tiny_config()
    card = models.make_card("c", "count", config)
    assert card["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert card["density_scale"] == 100.0 and card["format_version"] == 1
    assert "split" in card["metrics"]
    seg = models.make_card("s", "segment", tiny_config("se_unet"), metrics={"aji": 0.7})
    assert seg["density_scale"] is None and seg["metrics"]["split"] is None
    with pytest.raises(TypeError, match="metric"):
        models.make_card("c", "count", config, metric={})
    with pytest.raises(InputError, match="task"):
        models.make_card("c", "counting", config)


@pytest.mark.parametrize("bad", ["", "a b", "../up", "x/y", ".hidden", "é", "m.json", "-x"])
def test_unsafe_names_rejected(bad, no_bundled):
    net, config = tiny_model()
    card = models.make_card("ok", "count", config)
    with pytest.raises(InputError, match="model name"):
        models.check_name(bad)
    if "/" not in bad and not bad.endswith(".json"):  # those are paths for save_model
        with pytest.raises(InputError, match="model name"):
            models.save_model(net, card, bad)


def test_overwrite_requires_flag(no_bundled):
    save_tiny("dup")
    with pytest.raises(InputError, match="overwrite=True"):
        save_tiny("dup")
    net, _ = save_tiny("dup", overwrite=True)
    assert models.load_model("dup") is not None


def test_save_rejects_card_that_does_not_match_network(no_bundled):
    net, config = tiny_model()
    wrong = dict(config, widths=[8] * len(config["widths"]))
    with pytest.raises(InputError, match="does not describe this network"):
        models.save_model(net, models.make_card("w", "count", wrong), "w")
    with pytest.raises(InputError, match="task"):
        models.save_model(net, models.make_card("w", "segment", config), "w")
    assert not models.user_model_dir().exists() or _files(models.user_model_dir()) == []


# ------------------------------------------------------------------------------- corruption


def _rewrite_card(card_path: Path, edit) -> None:
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))


def _corrupt(kind: str, card_path: Path) -> None:
    weights = card_path.with_name(card_path.stem + ".safetensors")
    if kind == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":
        data = bytearray(weights.read_bytes())
        data[len(data) - 10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif kind == "header":
        weights.write_bytes(b"\xff" * 64)
        digest = __import__("hashlib").sha256(b"\xff" * 64).hexdigest()
        _rewrite_card(card_path, lambda c: c.update(weights_sha256=digest))
    elif kind == "widths":
        _rewrite_card(
            card_path, lambda c: c["config"].update(widths=[6] * len(c["config"]["widths"]))
        )
    elif kind == "missing_key":
        _rewrite_card(card_path, lambda c: c.pop("normalization"))
    elif kind == "wrong_task":
        _rewrite_card(card_path, lambda c: c.update(task="segment"))
    elif kind == "bad_task":
        _rewrite_card(card_path, lambda c: c.update(task="classify"))
    elif kind == "architecture":
        _rewrite_card(card_path, lambda c: c["config"].update(architecture="resnet9000"))
    elif kind == "format_version":
        _rewrite_card(card_path, lambda c: c.update(format_version=99))
    elif kind == "invalid_json":
        card_path.write_text(card_path.read_text()[:-20])
    elif kind == "not_object":
        card_path.write_text("[1, 2, 3]")
    elif kind == "no_weights":
        weights.unlink()
    elif kind == "n_parameters":
        _rewrite_card(card_path, lambda c: c.update(n_parameters=c["n_parameters"] + 1))
    else:  # pragma: no cover
        raise AssertionError(kind)


CORRUPTIONS = {
    "truncated": (".safetensors", "truncated or corrupt: sha256 mismatch"),
    "flipped": (".safetensors", "truncated or corrupt: sha256 mismatch"),
    "header": (".safetensors", "safetensors header"),
    "widths": (".safetensors", "mis-shaped tensors"),
    "missing_key": (".json", "missing required key.*normalization"),
    "wrong_task": (".json", "task 'segment' does not match its config"),
    "bad_task": (".json", "unknown task 'classify'"),
    "architecture": (".json", "architecture"),
    "format_version": (".json", "format_version 99"),
    "invalid_json": (".json", "not valid JSON"),
    "not_object": (".json", "JSON object"),
    "no_weights": (".safetensors", "missing"),
    "n_parameters": (".json", "n_parameters"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_model_rejected_with_file_and_reason(kind, no_bundled):
    _, card_path = save_tiny("bad")
    models.load_model("bad")  # fine before, and now cached
    _corrupt(kind, card_path)
    suffix, reason = CORRUPTIONS[kind]
    with pytest.raises(ModelFileError, match=reason) as info:
        models.load_model("bad")
    assert str(card_path.with_suffix(suffix)) in str(info.value)


def test_unknown_name_lists_available(no_bundled):
    save_tiny("known")
    with pytest.raises(ModelFileError, match="unknown model 'nope'.*known"):
        models.load_model("nope")
    with pytest.raises(ModelFileError, match="unknown model 'two words'.*known"):
        models.load_model("two words")
    with pytest.raises(ModelFileError, match="not found"):
        models.load_model(models.user_model_dir() / "nope.json")


def test_weights_without_card(no_bundled):
    _, card_path = save_tiny("orphan")
    card_path.unlink()
    with pytest.raises(ModelFileError, match="no model card"):
        models.load_model(card_path.with_suffix(".safetensors"))


# ------------------------------------------------------------------------------- atomic save


@pytest.mark.parametrize("fail_at", ["write_card", "install_weights", "install_card"])
def test_crash_mid_save_keeps_old_model(fail_at, monkeypatch, no_bundled):
    old_net, card_path = save_tiny("atomic")
    directory = card_path.parent
    before = _files(directory)
    old_card = card_path.read_text()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        expected = old_net(x)

    calls = {"write": 0, "install": 0}
    real_write, real_install = store._write_durable, store._install

    def write(path, data):
        calls["write"] += 1
        if fail_at == "write_card" and calls["write"] == 2:
            path.write_bytes(data[:10])  # half-written temp file, then the "crash"
            raise OSError("disk full (simulated)")
        real_write(path, data)

    def install(src, dst):
        calls["install"] += 1
        if (fail_at == "install_weights" and calls["install"] == 1) or (
            fail_at == "install_card" and calls["install"] == 2
        ):
            raise KeyboardInterrupt("killed (simulated)")
        real_install(src, dst)

    monkeypatch.setattr(store, "_write_durable", write)
    monkeypatch.setattr(store, "_install", install)
    torch.manual_seed(1)
    new_net, config = tiny_model()
    for p in new_net.parameters():
        p.data.add_(1.0)
    card = models.make_card("atomic", "count", config)
    with pytest.raises((OSError, KeyboardInterrupt)):
        models.save_model(new_net, card, "atomic", overwrite=True)

    assert _files(directory) == before  # no temp files, nothing half-written
    assert card_path.read_text() == old_card
    models.clear_model_cache()
    with torch.no_grad():
        assert torch.equal(models.load_model("atomic").net(x), expected)


def test_crash_on_first_save_leaves_nothing(monkeypatch, no_bundled):
    def install(src, dst):
        raise OSError("simulated")

    monkeypatch.setattr(store, "_install", install)
    with pytest.raises(OSError):
        save_tiny("first")
    assert _files(models.user_model_dir()) == []
    assert models.list_models() == []


# ------------------------------------------------------------------------------- directories


def test_env_override_and_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NALU_COUNT_MODEL_DIR", str(tmp_path / "custom"))
    assert models.user_model_dir() == tmp_path / "custom"
    monkeypatch.delenv("NALU_COUNT_MODEL_DIR")
    default = models.user_model_dir()
    assert default.name == "models" and "napari-nalu-count" in str(default)


def test_bundled_dir_is_inside_package():
    bundled = models.bundled_model_dir()
    assert bundled.is_dir() and bundled.parent == Path(models.__file__).parent


def test_bundled_models_if_any_load():
    """Every model shipped in the package loads and passes its checks."""
    for name in store._names_in(models.bundled_model_dir()):
        loaded = models.load_model(name)
        assert loaded.source == "bundled" and loaded.name == name


# ------------------------------------------------------------------------------- listing


def test_list_and_describe(no_bundled, monkeypatch):
    net, config = tiny_model()
    models.save_model(
        net, models.make_card("b-model", "count", config), "b-model", directory=no_bundled
    )
    save_tiny("zeta")
    save_tiny("alpha")
    assert models.list_models() == ["b-model", "alpha", "zeta"]

    # a user model may not take a bundled name
    with pytest.raises(InputError, match="bundled"):
        save_tiny("b-model")

    user = models.user_model_dir()
    (user / "broken.json").write_text("{not json")
    (user / "broken.safetensors").write_bytes(b"")
    (user / "lonely.safetensors").write_bytes(b"x")
    _, flipped = save_tiny("flipped")
    _corrupt("flipped", flipped)
    (user / "b-model.json").write_text((no_bundled / "b-model.json").read_text())
    (user / ".nalu-tmp-x.json").write_text("temp files are ignored")

    with pytest.warns(UserWarning, match="broken"):
        names = models.list_models()
    # list_models does not hash weights: 'flipped' is listed, the load reports it
    assert names == ["b-model", "alpha", "flipped", "zeta"]

    infos = {(i.source, i.name): i for i in models.describe_models()}
    assert infos[("bundled", "b-model")].ok
    assert infos[("user", "alpha")].ok and infos[("user", "alpha")].card["task"] == "count"
    assert "not valid JSON" in infos[("user", "broken")].error
    assert "no model card" in infos[("user", "lonely")].error
    assert "sha256 mismatch" in infos[("user", "flipped")].error
    assert "shadowed" in infos[("user", "b-model")].error
    assert models.load_model("b-model").source == "bundled"
    assert infos[("user", "alpha")].to_dict()["ok"] is True


def test_list_models_empty(no_bundled):
    assert models.list_models() == []
    assert models.describe_models() == []


# ------------------------------------------------------------------------------- cache


def test_cache_returns_independent_copies_and_sees_changes(no_bundled, monkeypatch):
    _, card_path = save_tiny("cached")
    first = models.load_model("cached")
    calls = []
    real = store._load_uncached
    monkeypatch.setattr(store, "_load_uncached", lambda *a: calls.append(a) or real(*a))
    second = models.load_model("cached")
    assert calls == []  # served from the cache
    assert second.net is not first.net
    with torch.no_grad():
        for p in second.net.parameters():
            p.zero_()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(models.load_model("cached").net(x), first.net(x))

    # overwriting the model invalidates the cached entry
    net2, config = tiny_model()
    for p in net2.parameters():
        p.data.mul_(2)
    models.save_model(net2, models.make_card("cached", "count", config), "cached", overwrite=True)
    with torch.no_grad():
        assert torch.equal(models.load_model("cached").net(x), net2(x))
    assert len(calls) == 1


def test_concurrent_loads(no_bundled):
    from concurrent.futures import ThreadPoolExecutor

    save_tiny("threads")
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: models.load_model("threads"), range(8)))
    assert len({id(m.net) for m in loaded}) == 8
    assert all(m.name == "threads" for m in loaded)


def test_no_pickle_in_weights(no_bundled):
    _, card_path = save_tiny("safe")
    from safetensors import safe_open

    with safe_open(str(card_path.with_suffix(".safetensors")), "pt") as fh:
        assert fh.metadata()["name"] == "safe"
    assert os.path.getsize(card_path.with_suffix(".safetensors")) > 0


# ------------------------------------------------------------------------------- input_scale


def test_card_input_scale_round_trip_and_validation(no_bundled):
    net, config = tiny_model()
    card = models.make_card("half", "count", config, input_scale=0.5, diameter=14.0)
    path = models.save_model(net, card, "half")
    loaded = models.load_model("half")
    assert loaded.card["input_scale"] == 0.5 and loaded.card["diameter"] == 14.0
    assert "input_scale" not in models.make_card("full", "count", config)  # 1.0 when absent
    for bad in (0, -0.5, 8.5, "0.5", True, float("nan"), None):
        _rewrite_card(path, lambda c, bad=bad: c.update(input_scale=bad))
        models.clear_model_cache()
        with pytest.raises(ModelFileError, match="input_scale"):
            models.load_model("half")
    _rewrite_card(path, lambda c: c.update(input_scale=8))
    models.clear_model_cache()
    assert models.load_model("half").card["input_scale"] == 8


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_files_are_world_readable(no_bundled):
    old = os.umask(0o022)
    try:
        _, card_path = save_tiny("modes")
    finally:
        os.umask(old)
    weights = card_path.with_name(card_path.stem + ".safetensors")
    assert card_path.stat().st_mode & 0o777 == 0o644
    assert weights.stat().st_mode & 0o777 == 0o644
