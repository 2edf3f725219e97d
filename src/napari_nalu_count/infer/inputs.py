"""Checks at the entry of :func:`~napari_nalu_count.infer.count` and ``segment``.

Every argument is checked before any work starts, and anything unusable raises
:class:`~napari_nalu_count.errors.InputError` saying what was wrong and what is expected.

What ``image`` may be:

- a numpy array, or a lazy array (dask, zarr: anything with ``shape``, ``dtype``, ``ndim`` and
  indexing), read one plane at a time;
- an array-like that numpy turns into a numeric array (nested lists or tuples of numbers, a
  CPU torch tensor ...); ragged lists, strings and objects are refused;
- a path (``str`` or :class:`os.PathLike`) to an image file: it is read with
  :func:`~napari_nalu_count.data.readers.read_image_axes` and the axes the file records are
  used; with ``axes=`` the array is taken as stored and those axes describe it.

At least 2 dimensions and no empty axis; integer, bool or float pixels (no complex).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

from napari_nalu_count.errors import InputError

#: largest accepted ``diameter`` in pixels (beyond it no model can be resampled to match)
MAX_DIAMETER = 10_000.0
#: accepted ``tile_size`` range in pixels
MIN_TILE_SIZE, MAX_TILE_SIZE = 16, 16384

_EXPECTED = (
    "expected a numeric array (numpy, dask, or nested lists of numbers) with at least 2 "
    "dimensions, or the path of an image file"
)


def _is_lazy_array(obj: Any) -> bool:
    """Duck-typed lazy arrays (dask, zarr): shape, ndim, indexing and a numpy dtype."""
    if not all(hasattr(obj, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
        return False
    try:
        np.dtype(obj.dtype)
    except (TypeError, ValueError):
        return False  # e.g. a torch tensor: numpy converts it
    return True


def as_image(image: Any, as_stored: bool = False) -> tuple[Any, str | None]:
    """``(array, axes recorded in the file or None)`` for an ``image`` argument (see the module
    docstring); raises :class:`InputError` for anything else. A path is read with
    :func:`~napari_nalu_count.data.readers.read_image_axes`, or with ``read_image`` (the array
    as stored, no axes) when ``as_stored`` (the caller gives the axes)."""
    if image is None:
        raise InputError(f"image is None; {_EXPECTED}")
    if isinstance(image, (str, os.PathLike)):
        from napari_nalu_count.data.readers import read_image, read_image_axes

        if as_stored:
            return read_image(image), None
        return read_image_axes(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise InputError(f"image is {type(image).__name__}; {_EXPECTED}")
    if isinstance(image, np.ndarray) or _is_lazy_array(image):
        arr = image
    else:
        try:
            arr = np.asarray(image)
        except Exception as exc:  # noqa: BLE001 - any object's __array__ may raise anything
            raise InputError(
                f"cannot turn the image ({type(image).__name__}) into an array: {exc}; {_EXPECTED}"
            ) from None
    try:
        shape = tuple(int(s) for s in arr.shape)
        dtype = np.dtype(arr.dtype)
    except (TypeError, ValueError, AttributeError):
        raise InputError(
            f"image of type {type(image).__name__} has no usable shape or dtype; {_EXPECTED}"
        ) from None
    if dtype.kind not in "biuf":
        what = {"O": "objects", "U": "strings", "S": "bytes", "c": "complex numbers"}.get(
            dtype.kind, str(dtype)
        )
        raise InputError(
            f"image holds {what} (dtype {dtype}); expected integer, bool or float pixels"
        )
    if len(shape) < 2:
        raise InputError(
            f"image has {len(shape)} dimension(s) (shape {shape}); expected at least 2 (Y, X)"
        )
    if 0 in shape:
        raise InputError(f"image is empty (shape {shape}); every axis needs at least one pixel")
    return arr, None


#: words that ask the engine to estimate the diameter
AUTO_WORDS = ("auto", "estimate")


def parse_diameter(diameter: Any) -> float | str | None:
    """The one diameter rule of the API, the CLI (``--diameter``) and the docks' field.

    None or blank text -> None (the engine decides: it estimates the nucleus size for models
    whose card says ``diameter_mode: "estimate"``, else uses the model's own resolution);
    ``"auto"`` or ``"estimate"`` (any case) -> ``"auto"`` (always estimate); a positive number
    of pixels (or its text) up to :data:`MAX_DIAMETER` -> float. Anything else raises
    :class:`InputError` saying what is expected.
    """
    if diameter is None:
        return None
    if isinstance(diameter, str):
        text = diameter.strip().lower()
        if not text:
            return None
        if text in AUTO_WORDS:
            return "auto"
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"diameter must be a number of pixels, 'auto' or blank (found automatically), "
                f"got {diameter!r}"
            ) from None
    elif isinstance(diameter, (bool, np.bool_)) or not isinstance(diameter, numbers.Real):
        raise InputError(
            f"diameter must be a number of pixels, 'auto' or None, got {diameter!r} "
            f"({type(diameter).__name__})"
        )
    else:
        value = float(diameter)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"diameter must be a positive number of pixels, got {diameter!r}")
    if value > MAX_DIAMETER:
        raise InputError(
            f"diameter={value:g} px is larger than {MAX_DIAMETER:g} px; give the typical cell "
            "diameter in pixels of this image"
        )
    return value


def check_device(device: Any) -> Any:
    """A device name (str), a :class:`torch.device` or None (= ``"auto"``)."""
    if device is None:
        return "auto"
    if isinstance(device, str):
        return device
    try:
        import torch

        if isinstance(device, torch.device):
            return device
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    raise InputError(
        f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} "
        f"({type(device).__name__})"
    )


def check_int(value: Any, name: str, low: int, high: int) -> int | None:
    """None or an integer in ``[low, high]``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= int(value) <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def check_callbacks(progress: Any, cancel: Any) -> None:
    if progress is not None and not callable(progress):
        raise InputError(
            f"progress must be a function progress(done, total, message) or None, got "
            f"{type(progress).__name__}"
        )
    if cancel is not None and not callable(getattr(cancel, "raise_if_cancelled", None)):
        raise InputError(f"cancel must be a CancelToken or None, got {type(cancel).__name__}")


def check_min_mass(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"min_mass must be a number of cells, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise InputError(f"min_mass must be a finite number >= 0, got {value!r}")
    return v


def check_call(
    image: Any,
    axes: Any,
    diameter: Any,
    device: Any,
    progress: Any,
    cancel: Any,
    tile_size: Any,
    channel: Any,
) -> tuple[Any, str | None, float | str | None, Any]:
    """Check the arguments shared by ``count`` and ``segment``.

    Returns ``(array, axes, diameter, device)``: ``axes`` is the caller's, else the file's
    when ``image`` was a path, else None (inferred later).
    """
    from napari_nalu_count.infer.axes import check_channel

    if axes is not None and not isinstance(axes, str):
        raise InputError(
            f"axes must be a string such as 'YX', 'TYX' or 'YXC', or None, got {axes!r}"
        )
    arr, file_axes = as_image(image, as_stored=axes is not None)
    diameter = parse_diameter(diameter)
    device = check_device(device)
    check_callbacks(progress, cancel)
    check_int(tile_size, "tile_size", MIN_TILE_SIZE, MAX_TILE_SIZE)
    check_channel(channel)
    return arr, (axes if axes is not None else file_axes), diameter, device
