"""Property tests: odd inputs to the public entry points raise the package's own errors only.

``count``, ``segment``, the readers and ``load_model`` get generated arguments. A count/segment
call is mostly valid (tiny arrays of every dtype with NaN, inf and extreme values, 1-pixel
sides, stacks, channels), with at most one argument swapped for a bad value (non-arrays, nested
or ragged lists, None, paths to good, broken and missing files, bad axes, channels, diameters,
devices, tile sizes, models). Readers get mutated and truncated files and junk paths;
``load_model`` gets tampered cards and weights, junk names and devices. Each call must either
return a result (whose contract is checked) or raise a
:class:`~napari_nalu_count.errors.NaluCountError`; any other exception fails the test.
Together the tests draw 1,450 inputs per run (``max_examples`` 600 + 300 + 300 + 250),
derandomized so CI is repeatable; tiny images and tiny untrained models keep it fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_nalu_count import count, load_model, segment
from napari_nalu_count.data import readers
from napari_nalu_count.errors import NaluCountError
from napari_nalu_count.models import clear_model_cache, make_card, save_model
from napari_nalu_count.nn.registry import build_model

#: examples per property (they add up to more than 1,000)
N_COUNT, N_SEGMENT, N_READERS, N_MODELS = 600, 300, 300, 250


def _settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ------------------------------------------------------------------------------------------
# fixtures: tiny models and a folder of good, broken and odd files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    counter = build_model({"architecture": "fcrn_a", "widths": [4, 4, 4, 4]})
    segmenter = build_model({"architecture": "se_unet", "widths": [4, 4]})
    count_card = save_model(
        counter, make_card("fz-count", "count", counter.config, diameter=8.0), root / "fz-count"
    )
    seg_card = save_model(
        segmenter, make_card("fz-seg", "segment", segmenter.config, diameter=8.0), root / "fz-seg"
    )
    rng = np.random.default_rng(0)
    good = rng.integers(0, 4000, (24, 20)).astype(np.uint16)
    tifffile.imwrite(root / "good.tif", good)
    tifffile.imwrite(root / "stack.tif", np.stack([good] * 3), photometric="minisblack")
    tifffile.imwrite(root / "ij.tif", np.stack([good] * 3), imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(root / "nan.tif", np.full((8, 8), np.nan, np.float32))
    from skimage import io as skio

    skio.imsave(root / "good.png", (good // 16).astype(np.uint8), check_contrast=False)
    (root / "text.tif").write_text("not a tiff at all")
    (root / "empty.tif").write_bytes(b"")
    blob = (root / "good.tif").read_bytes()
    (root / "truncated.tif").write_bytes(blob[: len(blob) // 3])
    (root / "labels.tif").write_bytes((root / "good.tif").read_bytes())
    (root / "points.csv").write_text("index,axis-0,axis-1\n0,3,4\n1,10.5,7\n")
    (root / "folder.tif").mkdir()
    return {
        "root": root,
        "count_card": count_card,
        "seg_card": seg_card,
        "counter": load_model(count_card),
        "segmenter": load_model(seg_card),
        "paths": sorted(str(p) for p in root.iterdir()) + [str(root / "missing.tif"), str(root)],
    }


def _ok_or_package_error(call) -> object | None:
    try:
        return call()
    except NaluCountError:
        return None


# ------------------------------------------------------------------------------------------
# strategies: a call is mostly valid, with at most one argument replaced by a bad value, so
# the engine itself runs on odd pixels (every dtype, NaN, inf, extremes, 1-pixel sides)

DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64,
]  # fmt: skip
GOOD_AXES = {
    2: [None, "YX", "XY"],
    3: [None, "TYX", "ZYX", "YXC", "CYX", "YXT"],
    4: [None, "TZYX", "TYXC", "ZCYX", "TZXY"],
}

nested = st.recursive(
    st.one_of(st.integers(-1000, 1000), st.floats(), st.booleans(), st.none(), st.text(max_size=2)),
    lambda children: st.lists(children, max_size=6),
    max_leaves=40,
)
BAD = {
    "image": st.one_of(
        hnp.arrays(
            dtype=st.sampled_from(DTYPES),
            shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
        ),  # fmt: skip
        hnp.arrays(dtype=st.sampled_from([np.complex64, "U3", object]), shape=(4, 5)),
        hnp.arrays(dtype=np.float32, shape=hnp.array_shapes(min_dims=5, max_dims=6, max_side=3)),
        hnp.arrays(dtype=np.uint8, shape=st.sampled_from([(0, 5), (3, 0, 4), (2, 5, 0)])),
        nested,
        st.lists(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), min_size=3, max_size=6),
        st.none(),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.builds(object),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.just("path"),  # replaced by one of the fixture's files
    ),
    "axes": st.one_of(
        st.text(alphabet="TZCYXQyx ", max_size=6),
        st.integers(),
        st.lists(st.sampled_from("YX"), max_size=2),
    ),  # fmt: skip
    "channel": st.one_of(
        st.integers(-9, 9),
        st.sampled_from(["MAX", "median", "", "luminance"]),
        st.floats(),
        st.booleans(),
        st.lists(st.integers(0, 2), max_size=2),
    ),
    "diameter": st.one_of(
        st.floats(),
        st.integers(-10, 10**7),
        st.text(max_size=6),
        st.booleans(),
        st.lists(st.floats(), max_size=2),
        st.just(1e-300),
        st.just(5e-324),
    ),  # fmt: skip
    "device": st.sampled_from(
        [
            "CPU",
            " cpu ",
            "cuda",
            "cuda:0",
            "cuda:",
            "cuda:x",
            "mps",
            "gpu",
            "",
            "cpu:0",
            "auto:1",
            None,
            0,
            1.5,
            torch.device("cpu"),
            [],
            "cuda:99999999999",
        ]
    ),  # fmt: skip
    "tile_size": st.one_of(
        st.integers(-5, 300), st.floats(), st.text(max_size=3), st.just(10**9), st.booleans()
    ),  # fmt: skip
    "progress": st.sampled_from([5, "progress", object()]),
    "model": st.sampled_from(["seg", "count", "no-such-model", None, 42, "", "a\x00b", "x" * 300]),
    "min_mass": st.one_of(st.floats(), st.text(max_size=2), st.none()),
    "min_size": st.one_of(st.floats(), st.text(max_size=2), st.integers(-5, -1)),
    "seeds": st.sampled_from(["bad", None, 3, "COUNT"]),
}


@st.composite
def calls(draw, task: str):
    ndim = draw(st.sampled_from([2, 2, 2, 3, 3, 4]))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=12))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):  # any value of the dtype: NaN, inf, extremes
        elements = None
    elif dtype.kind == "f":
        elements = st.floats(0, 1000, width=min(64, dtype.itemsize * 8))
    else:
        elements = None
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    kwargs = {
        "axes": draw(st.sampled_from(GOOD_AXES[ndim])),
        "channel": draw(st.sampled_from([None, None, None, 0, "max", "mean", "luminance", 1])),
        "diameter": draw(st.one_of(st.none(), st.none(), st.just("auto"), st.floats(3, 30))),
        "device": draw(st.sampled_from(["cpu", "auto"])),
        "tile_size": draw(st.sampled_from([None, None, 16, 24, 64])),
        "progress": draw(st.sampled_from([None, lambda *a: None])),
        "model": draw(st.sampled_from(["count", "count", "count", "count-path"]))
        if task == "count"
        else draw(st.sampled_from(["seg", "seg", "seg", "seg-path"])),
    }
    if task == "count":
        kwargs["min_mass"] = draw(st.sampled_from([0.3, 0.0, 2.0]))
    else:
        kwargs["min_size"] = draw(st.sampled_from([None, 0, 8]))
        kwargs["seeds"] = draw(st.sampled_from(["interior", "interior", "count"]))
    names = [k for k in BAD if k in kwargs or k == "image"]
    bad = draw(st.sampled_from([None, None, None, None, *names]))
    if bad == "image":
        image = draw(BAD["image"])
    elif bad is not None:
        kwargs[bad] = draw(BAD[bad])
    return image, kwargs, bad


def _resolve(files: dict, image, kwargs: dict, pick: int):
    models = {
        "count": files["counter"],
        "count-path": str(files["count_card"]),
        "seg": files["segmenter"],
        "seg-path": str(files["seg_card"]),
    }
    if isinstance(kwargs.get("model"), str) and kwargs["model"] in models:
        kwargs["model"] = models[kwargs["model"]]
    if isinstance(image, str) and image == "path":
        image = files["paths"][pick % len(files["paths"])]
    return image, kwargs


# ------------------------------------------------------------------------------------------
# count and segment


@_settings(N_COUNT)
@given(call=calls("count"), pick=st.integers(0, 100))
def test_count_raises_only_package_errors(files, call, pick):
    image, kwargs, bad = call
    image, kwargs = _resolve(files, image, kwargs, pick)
    res = _ok_or_package_error(lambda: count(image, **kwargs))
    if res is not None:
        counts = np.atleast_1d(res.count)
        assert np.all(np.isfinite(counts))
        assert res.density.dtype == np.float32
        assert res.points.ndim == 2 and res.points.shape[1] == res.density.ndim
        total = float(res.density.sum(dtype=np.float64))
        assert math.isclose(float(counts.sum()), total, rel_tol=1e-3, abs_tol=1e-3)


@_settings(N_SEGMENT)
@given(call=calls("segment"), pick=st.integers(0, 100))
def test_segment_raises_only_package_errors(files, call, pick):
    image, kwargs, bad = call
    image, kwargs = _resolve(files, image, kwargs, pick)
    kwargs["count_model"] = files["counter"]
    res = _ok_or_package_error(lambda: segment(image, **kwargs))
    if res is not None:
        assert res.labels.dtype == np.int32
        assert np.all(np.atleast_1d(res.count) >= 0)


# ------------------------------------------------------------------------------------------
# readers


path_like = st.one_of(  # things that are not usable paths
    st.none(),
    st.integers(),
    st.text(max_size=30),
    st.text(alphabet="ab\x00/.", max_size=10),
    st.just("x" * 5000),
    st.just("~no-such-user-here/x.tif"),
    st.binary(max_size=10),
)


@_settings(N_READERS)
@given(
    which=st.sampled_from(
        [
            "read_image",
            "read_image_axes",
            "read_labels",
            "read_points_csv",
            "points_sample",
            "labels_sample",
            "bbbc039",
            "vgg",
        ]
    ),
    pick=st.integers(0, 100),
    use_file=st.booleans(),
    junk=path_like,
    content=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
    mutate=st.integers(0, 3),
    extra=st.one_of(st.none(), st.integers(-2, 5), st.floats(), st.text(max_size=2)),
)
def test_readers_raise_only_package_errors(files, which, pick, use_file, junk, content, mutate,
                                           extra):  # fmt: skip
    root: Path = files["root"]
    paths = files["paths"]
    if use_file:
        path: object = paths[pick % len(paths)]
        if mutate:
            # a copy of a real file with bytes replaced or cut, or new content
            src = Path(str(path))
            suffix = src.suffix if src.suffix in (".tif", ".png", ".csv") else ".tif"
            blob = src.read_bytes() if src.is_file() else b""
            data = content.encode() if isinstance(content, str) else content
            if mutate == 1 and blob:
                pos = pick * 7919 % len(blob)
                blob = blob[:pos] + data + blob[pos + len(data) :]
            elif mutate == 2:
                blob = blob[: pick * len(blob) // 101]
            else:
                blob = data
            path = root / f"mutated{suffix}"
            Path(path).write_bytes(blob)
    else:
        path = junk
    calls = {
        "read_image": lambda: readers.read_image(path),
        "read_image_axes": lambda: readers.read_image_axes(path),
        "read_labels": lambda: readers.read_labels(path, min_size=extra if extra else 0),
        "read_points_csv": lambda: readers.read_points_csv(path, ndim=extra),
        "points_sample": lambda: readers.load_points_sample(path, root / "points.csv"),
        "labels_sample": lambda: readers.load_labels_sample(root / "good.tif", path),
        "bbbc039": lambda: readers.load_bbbc039(path, limit=extra),
        "vgg": lambda: readers.load_vgg(path, indices=[extra] if extra is not None else None),
    }
    _ok_or_package_error(calls[which])


# ------------------------------------------------------------------------------------------
# load_model: names, paths, devices and tampered files


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=10,
)  # fmt: skip
CARD_FIELDS = ["format_version", "name", "task", "config", "normalization", "density_scale",
               "diameter", "training", "metrics", "weights_sha256", "n_parameters", "input",
               "input_scale", "created", "package_version"]  # fmt: skip
CONFIG_FIELDS = ["architecture", "widths", "in_channels", "out_channels", "unit", "fre",
                 "activation", "deep_supervision"]  # fmt: skip


@_settings(N_MODELS)
@given(
    how=st.sampled_from(["card", "config", "drop", "weights", "json", "name", "device"]),
    field=st.integers(0, 100),
    value=json_values,
    junk=path_like,
    blob=st.binary(max_size=64),
    device=BAD["device"],
)
def test_load_model_raises_only_package_errors(files, how, field, value, junk, blob, device):
    clear_model_cache()
    root: Path = files["root"]
    src_card = Path(files["count_card"])
    card = json.loads(src_card.read_text())
    weights = src_card.with_suffix(".safetensors").read_bytes()
    card_text = None
    if how == "card":
        card[CARD_FIELDS[field % len(CARD_FIELDS)]] = value
    elif how == "config":
        card["config"][CONFIG_FIELDS[field % len(CONFIG_FIELDS)]] = value
    elif how == "drop":
        card.pop(CARD_FIELDS[field % len(CARD_FIELDS)], None)
    elif how == "weights":
        pos = field * len(weights) // 101
        weights = weights[:pos] + blob + weights[pos + len(blob) :]
    elif how == "json":
        text = json.dumps(card)
        card_text = text[: field * len(text) // 101] + blob.decode("latin-1")
    target = root / "tampered"
    (root / "tampered.json").write_text(card_text if card_text is not None else json.dumps(card))
    (root / "tampered.safetensors").write_bytes(weights)
    spec: object = junk if how == "name" else str(target)
    dev = device if how == "device" else "cpu"
    loaded = _ok_or_package_error(lambda: load_model(spec, device=dev))
    if loaded is not None:
        assert loaded.task in ("count", "segment")


def test_tampered_model_files_are_still_refused(files):
    """The four refusals the issue found working: edited weights, truncated weights, edited card
    and a card without weights."""
    from napari_nalu_count.errors import ModelFileError

    root: Path = files["root"]
    src = Path(files["count_card"])
    weights = src.with_suffix(".safetensors").read_bytes()
    card = json.loads(src.read_text())
    cases = {
        "flipped": (card, weights[:-1] + bytes([weights[-1] ^ 1])),
        "truncated": (card, weights[: len(weights) // 2]),
        "edited-card": ({**card, "n_parameters": card["n_parameters"] + 1}, weights),
    }
    for name, (c, w) in cases.items():
        (root / f"{name}.json").write_text(json.dumps(c))
        (root / f"{name}.safetensors").write_bytes(w)
        with pytest.raises(ModelFileError):
            load_model(root / name)
    (root / "no-weights.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="missing"):
        load_model(root / "no-weights")
