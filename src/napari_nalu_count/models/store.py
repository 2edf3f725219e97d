"""Model files on disk: atomic saving, checked loading, the user and bundled model directories.

A model is ``NAME.safetensors`` (weights, never pickled) plus ``NAME.json`` (its card, see
:mod:`.card`). Bundled models live in the package's ``models/bundled/`` folder; user models in
``platformdirs.user_data_dir("napari-nalu-count")/models``, or in ``$NALU_COUNT_MODEL_DIR``.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import importlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_nalu_count.errors import InputError, ModelFileError
from napari_nalu_count.models.card import (
    check_name,
    is_valid_name,
    jsonable,
    utc_now_iso,
    validate_card,
)

ENV_MODEL_DIR = "NALU_COUNT_MODEL_DIR"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
_TMP_PREFIX = ".nalu-tmp-"


# --------------------------------------------------------------------------------------------
# directories and names


def user_model_dir() -> Path:
    """Directory of user models: ``$NALU_COUNT_MODEL_DIR`` if set, else the platformdirs user
    data directory of ``napari-nalu-count`` plus ``models``. It is created on the first save."""
    env = os.environ.get(ENV_MODEL_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-nalu-count", appauthor=False)) / "models"


def bundled_model_dir() -> Path:
    """Directory of the models shipped inside the package (read-only, offline)."""
    return Path(__file__).resolve().parent / "bundled"


def name_taken(name: str, directory: str | os.PathLike | None = None) -> str | None:
    """Why a new model may not be saved as ``name`` without replacing one, or None when free:
    ``"bundled"`` (a bundled model has it; never replaced) or ``"exists"`` (a model file of
    that name is in ``directory``, default :func:`user_model_dir`)."""
    name = check_name(name)
    dest = Path(directory).expanduser() if directory is not None else user_model_dir()
    is_user_dir = directory is None or dest.resolve() == user_model_dir().expanduser().resolve()
    if is_user_dir and _card_path(bundled_model_dir() / name).is_file():
        return "bundled"
    if _card_path(dest / name).exists() or _weights_path(dest / name).exists():
        return "exists"
    return None


def free_name(base: str, directory: str | os.PathLike | None = None) -> str:
    """``base``, or ``base-2``, ``base-3`` ... : the first name :func:`name_taken` calls free."""
    name, k = check_name(base), 2
    while name_taken(name, directory) is not None:
        name, k = f"{base}-{k}", k + 1
    return name


def _card_path(base: Path) -> Path:
    return base.parent / (base.name + CARD_SUFFIX)


def _weights_path(base: Path) -> Path:
    return base.parent / (base.name + WEIGHTS_SUFFIX)


def _strip_suffix(path: Path) -> Path:
    for suffix in (CARD_SUFFIX, WEIGHTS_SUFFIX):
        if path.name.lower().endswith(suffix):
            return path.parent / path.name[: -len(suffix)]
    return path


def _names_in(directory: Path) -> list[str]:
    """Model base names in ``directory`` (from either file), sorted; temp files are ignored."""
    if not directory.is_dir():
        return []
    names = set()
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name.endswith((CARD_SUFFIX, WEIGHTS_SUFFIX)) and entry.is_file():
            names.add(_strip_suffix(entry).name)
    return sorted(names)


def _is_pathlike(spec: str | os.PathLike) -> bool:
    if isinstance(spec, os.PathLike):
        return True
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in spec for s in seps) or spec.lower().endswith((CARD_SUFFIX, WEIGHTS_SUFFIX))


def _source_of(card_path: Path) -> str:
    parent = card_path.parent.resolve()
    if parent == bundled_model_dir().resolve():
        return "bundled"
    try:
        if parent == user_model_dir().expanduser().resolve():
            return "user"
    except OSError:  # pragma: no cover
        pass
    return "file"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Path of the card (``.json``) of a bundled or user model name, or of a model path.

    A path may name the ``.json``, the ``.safetensors`` or the common stem. Bundled names win
    over user names. Raises :class:`ModelFileError` for an unknown name (listing the available
    ones) or a path without a card.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ModelFileError(f"expected a model name or path, got {name_or_path!r}")
    try:
        return _resolve_model(name_or_path)
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ModelFileError | InputError):
            raise
        # an embedded NUL, a name too long for the file system, an unreadable folder ...
        raise ModelFileError(
            f"cannot use {str(name_or_path)[:200]!r} as a model name or path: {exc}"
        ) from None


def _resolve_model(name_or_path: str | os.PathLike) -> Path:
    spec = name_or_path
    if not _is_pathlike(spec):
        if is_valid_name(spec):
            for directory in (bundled_model_dir(), user_model_dir()):
                card = _card_path(directory / str(spec))
                if card.is_file():
                    return card
        local = _card_path(Path(spec))
        if local.is_file():
            return local
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            available = list_models()
        listing = ", ".join(available) if available else "none installed"
        raise ModelFileError(
            f"unknown model {str(spec)!r}; available models: {listing} "
            f"(user models are in {user_model_dir()})"
        )
    base = _strip_suffix(Path(spec).expanduser())
    card = _card_path(base)
    if card.is_file():
        return card
    weights = _weights_path(base)
    if weights.is_file():
        raise ModelFileError(f"weights file {weights} has no model card: {card} is missing")
    raise ModelFileError(f"model file not found: {card}")


# --------------------------------------------------------------------------------------------
# saving


def _registry():
    return importlib.import_module("napari_nalu_count.nn.registry")


def _state_tensors(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent, contiguous CPU tensors (safetensors rejects shared ones)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def _compare_state(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
) -> list[str]:
    """Human-readable differences between two state dicts (names and shapes)."""
    problems = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {tuple(got[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]

    def few(items: list[str]) -> str:
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    if missing:
        problems.append(f"missing tensors: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {few(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped tensors: {few(shapes)}")
    return problems


def _destination(
    name_or_dir: str | os.PathLike | None,
    card: Mapping[str, Any],
    directory: str | os.PathLike | None,
) -> tuple[Path, str]:
    """(directory, name) of a save."""
    if name_or_dir is None:
        name = card.get("name")
        return (Path(directory) if directory is not None else user_model_dir()), check_name(name)
    if not _is_pathlike(name_or_dir):
        dest = Path(directory) if directory is not None else user_model_dir()
        return dest, check_name(str(name_or_dir))
    if directory is not None:
        raise InputError("give either a path as name_or_dir or a directory, not both")
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path, check_name(card.get("name"))
    base = _strip_suffix(path)
    return base.parent, check_name(base.name)


def _write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _install(src: Path, dst: Path) -> None:
    """Atomically move ``src`` over ``dst`` (a seam for crash tests)."""
    os.replace(src, dst)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """Mode for saved model files: ``0o666`` minus the process umask (so ``0o644`` under the
    usual 022), as ``open()`` would give; ``tempfile.mkstemp`` alone would leave ``0o600``."""
    umask = None
    try:  # Linux: read the umask without changing it (os.umask is process-wide, not atomic)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        umask = None
    if umask is None:
        return 0o644
    return 0o666 & ~umask


def _temp_path(directory: Path, name: str, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{name}.", suffix=suffix, dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def save_model(
    net: torch.nn.Module,
    card: Mapping[str, Any],
    name_or_dir: str | os.PathLike | None = None,
    *,
    directory: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``net``'s weights and ``card`` as a model; return the path of the written card.

    ``name_or_dir`` is a model name (saved into ``directory``, default :func:`user_model_dir`),
    a path ``DIR/NAME`` (with or without extension), an existing directory (the name is
    ``card["name"]``), or None (``card["name"]`` in ``directory``). The card's ``name``,
    ``weights_sha256`` and ``n_parameters`` are set here; ``created`` and ``package_version``
    are filled in when absent. The card's config must describe ``net`` exactly.

    The save is atomic: both files go to temporary files in the destination, are fsynced, then
    renamed into place, weights first and card last. On any error the temporary files are
    removed and an existing model of that name is left as it was. Raises :class:`InputError`
    for a bad name, a name that exists (without ``overwrite=True``), a user model that would
    shadow a bundled one, or a card that does not match the network.
    """
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"save_model expects a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(card, Mapping):
        raise InputError(f"save_model expects a card dict, got {type(card).__name__}")
    dest, name = _destination(name_or_dir, card, directory)
    card_file, weights_file = _card_path(dest / name), _weights_path(dest / name)

    is_user_dir = dest.expanduser().resolve() == user_model_dir().expanduser().resolve()
    if is_user_dir and _card_path(bundled_model_dir() / name).is_file():
        raise InputError(f"model name {name!r} is taken by a bundled model; choose another")
    if not overwrite and (card_file.exists() or weights_file.exists()):
        raise InputError(f"model {name!r} already exists in {dest}; pass overwrite=True to replace")

    from napari_nalu_count import __version__

    out = dict(card)
    out["name"] = name
    out.setdefault("created", utc_now_iso())
    out.setdefault("package_version", __version__)
    if not out.get("created"):
        out["created"] = utc_now_iso()
    if not out.get("package_version"):
        out["package_version"] = __version__

    tensors = _state_tensors(net)
    from safetensors.torch import save as st_save

    blob = st_save(tensors, metadata={"format": "pt", "name": name})
    out["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    out["n_parameters"] = int(sum(p.numel() for p in net.parameters()))
    try:
        out = jsonable(out)
    except TypeError as exc:
        raise InputError(f"cannot save model {name!r}: {exc}") from exc
    try:
        validate_card(out, card_file)
    except ModelFileError as exc:
        raise InputError(f"cannot save model {name!r}: {exc}") from exc
    out["config"] = _registry().validate_config(dict(out["config"]))  # store it complete
    reference = _registry().build_model(out["config"]).state_dict()
    problems = _compare_state(reference, tensors)
    if problems:
        raise InputError(
            f"cannot save model {name!r}: the card's config does not describe this network "
            f"({'; '.join(problems)})"
        )
    card_bytes = (json.dumps(out, indent=2, allow_nan=False) + "\n").encode("utf-8")

    dest.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    backup: Path | None = None
    weights_installed = False
    try:
        tmp_w = _temp_path(dest, name, WEIGHTS_SUFFIX)
        temps.append(tmp_w)
        tmp_c = _temp_path(dest, name, CARD_SUFFIX)
        temps.append(tmp_c)
        _write_durable(tmp_w, blob)
        _write_durable(tmp_c, card_bytes)
        if weights_file.exists():
            # keep the old weights reachable so that a failure between the two renames can
            # restore them; a hard link keeps weights_file in place the whole time
            backup = _temp_path(dest, name, ".bak")
            temps.append(backup)
            backup.unlink()
            try:
                os.link(weights_file, backup)
            except OSError:
                import shutil

                shutil.copy2(weights_file, backup)
        _install(tmp_w, weights_file)
        weights_installed = True
        _install(tmp_c, card_file)
        _fsync_dir(dest)
    except BaseException:
        if weights_installed:
            try:
                if backup is not None and backup.exists():
                    os.replace(backup, weights_file)
                else:
                    weights_file.unlink(missing_ok=True)
            except OSError:  # pragma: no cover
                pass
        for tmp in temps:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # pragma: no cover
                pass
        raise
    if backup is not None:
        backup.unlink(missing_ok=True)
    return card_file


# --------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class LoadedModel:
    """A checked model: ``net`` (eval mode, on the requested device) and its card.

    ``path`` is the card (``.json``); ``source`` is ``"bundled"``, ``"user"`` or ``"file"``.
    """

    net: torch.nn.Module
    card: dict[str, Any]
    config: dict[str, Any]
    name: str
    task: str
    path: Path
    source: str = "file"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def weights_path(self) -> Path:
        return _weights_path(_strip_suffix(self.path))

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.card["normalization"])

    @property
    def density_scale(self) -> float | None:
        return self.card.get("density_scale")

    @property
    def diameter(self) -> float | None:
        return self.card.get("diameter")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if not (device is None or isinstance(device, (str, torch.device))):
        raise InputError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} "
            f"({type(device).__name__})"
        )
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {device!r}: {exc}") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPUs)")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise InputError(f"device {device!r} requested but Apple MPS is not available")
    return dev


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the card at ``path`` (its ``.json``); raise :class:`ModelFileError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelFileError(f"model card {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model card {path} cannot be read: {exc}") from exc
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"model card {path} is not valid JSON: {exc}") from None
    return validate_card(card, path)


def _read_weights(weights: Path, card: Mapping[str, Any], card_path: Path) -> dict:
    try:
        blob = weights.read_bytes()
    except FileNotFoundError as exc:
        raise ModelFileError(
            f"weights file {weights} is missing (its card {card_path} exists)"
        ) from exc
    except OSError as exc:
        raise ModelFileError(f"weights file {weights} cannot be read: {exc}") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card["weights_sha256"]:
        raise ModelFileError(
            f"weights file {weights} is truncated or corrupt: sha256 mismatch with its card "
            f"{card_path} ({len(blob)} bytes)"
        )
    from safetensors.torch import load as st_load

    try:
        return st_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelFileError(
            f"weights file {weights} is corrupt: its safetensors header cannot be parsed ({exc})"
        ) from exc


def _load_uncached(card_path: Path, device: torch.device) -> LoadedModel:
    card = read_card(card_path)
    weights = _weights_path(_strip_suffix(card_path))
    state = _read_weights(weights, card, card_path)
    config = dict(card["config"])
    try:
        net = _registry().build_model(config)
    except ModelFileError as exc:
        raise ModelFileError(f"model card {card_path}: {exc}") from exc
    problems = _compare_state(net.state_dict(), state)
    if problems:
        raise ModelFileError(
            f"weights file {weights} does not match the architecture in its card "
            f"{card_path}: {'; '.join(problems)}"
        )
    n_params = int(sum(p.numel() for p in net.parameters()))
    if n_params != card["n_parameters"]:
        raise ModelFileError(
            f"model card {card_path} says n_parameters={card['n_parameters']} but its config "
            f"builds a network with {n_params}"
        )
    net.load_state_dict(state, strict=True)
    net.to(device).eval()
    return LoadedModel(
        net=net,
        card=card,
        config=config,
        name=_strip_suffix(card_path).name,
        task=card["task"],
        path=card_path,
        source=_source_of(card_path),
        device=device,
    )


#: small LRU cache of checked models; see :func:`load_model`
_CACHE_SIZE = 8
_cache: collections.OrderedDict[tuple, LoadedModel] = collections.OrderedDict()
_cache_lock = threading.RLock()


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def clear_model_cache() -> None:
    """Forget every cached model (the next :func:`load_model` reads the files again)."""
    with _cache_lock:
        _cache.clear()


def _fresh_copy(loaded: LoadedModel) -> LoadedModel:
    try:
        net = copy.deepcopy(loaded.net)
    except Exception:  # pragma: no cover - modules that refuse deepcopy
        net = _registry().build_model(loaded.config)
        net.load_state_dict(loaded.net.state_dict())
        net.to(loaded.device).eval()
    return LoadedModel(
        net=net,
        card=copy.deepcopy(loaded.card),
        config=copy.deepcopy(loaded.config),
        name=loaded.name,
        task=loaded.task,
        path=loaded.path,
        source=loaded.source,
        device=loaded.device,
    )


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and check a model by bundled/user name or by path (``.json``, ``.safetensors`` or
    the common stem); the network is in eval mode on ``device`` (``"auto"`` picks CUDA, MPS or
    the CPU).

    Every problem with the files raises :class:`ModelFileError` naming the file: unreadable or
    invalid JSON, missing keys, unknown ``format_version``/architecture/task, task/config
    mismatch, weights that fail the card's sha256 or cannot be parsed, missing, unexpected or
    mis-shaped tensors.

    Checked models are kept in a small LRU cache keyed by the card path, both files' mtime,
    size and inode, and the device, so repeated loads skip the file reads, hashing and checks.
    Each call returns its own deep copy of the cached network, so callers may move, train or
    modify it freely, and the function is safe to call from several threads at once (the
    cache is guarded by a lock). Run inference under ``torch.inference_mode()``; call
    ``net.train()`` to fine-tune. An in-place edit of a file that keeps its size within one
    mtime tick is not noticed: call :func:`clear_model_cache` after such edits.
    """
    return _fresh_copy(_load_cached(name_or_path, device))


def load_model_shared(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> LoadedModel:
    """The cached, checked model itself (no copy): for read-only use inside the package (the
    inference engine, which never modifies a network and runs its own prepared copy). The same
    object comes back on every call while the files are unchanged, so the engine's prepared
    network cache can hit. Never train, move or edit what this returns; use :func:`load_model`.
    """
    return _load_cached(name_or_path, device)


def _load_cached(name_or_path: str | os.PathLike, device: str | torch.device) -> LoadedModel:
    dev = _resolve_device(device)
    card_path = resolve_model(name_or_path)
    try:
        card_path = card_path.resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise ModelFileError(f"model card {card_path} cannot be resolved: {exc}") from None
    weights = _weights_path(_strip_suffix(card_path))
    try:
        key = (str(card_path), str(dev), _file_key(card_path), _file_key(weights))
    except OSError:
        key = None  # let the uncached path produce the specific error
    with _cache_lock:
        if key is not None and key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loaded = _load_uncached(card_path, dev)
        if key is not None:
            _cache[key] = loaded
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return loaded


# --------------------------------------------------------------------------------------------
# models sent to other processes (dask workers)


@dataclass(frozen=True)
class ModelPayload:
    """A checked model as plain data for another process (a dask worker): its card (JSON-able),
    its weights as safetensors bytes and their SHA-256. Nothing in it is pickled code, so a
    worker rebuilds the network from the card's config exactly as :func:`load_model` does.

    ``name``, ``path`` and ``source`` are the client's, so results and messages name the same
    model. Make one with :func:`model_payload`; rebuild it with :func:`load_model_payload`.
    """

    name: str
    card: dict[str, Any]
    weights: bytes
    sha256: str
    path: str = ""
    source: str = "file"


def model_payload(loaded: LoadedModel) -> ModelPayload:
    """The model's current weights (in memory, so an unsaved fine-tune travels as it is) and
    card as a :class:`ModelPayload`."""
    from safetensors.torch import save as st_save

    blob = st_save(_state_tensors(loaded.net))
    return ModelPayload(
        name=str(loaded.name),
        card=jsonable(dict(loaded.card)),
        weights=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        path=str(loaded.path),
        source=str(loaded.source),
    )


def load_model_payload(payload: ModelPayload, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a :class:`ModelPayload` as a checked :class:`LoadedModel` on ``device`` (the
    weights' SHA-256, the tensors' names and shapes against the card's architecture).

    Raises :class:`ModelFileError` when the payload does not hold together.
    """
    from safetensors.torch import load as st_load

    dev = _resolve_device(device)
    where = f"model {payload.name!r} sent by the client"
    if hashlib.sha256(payload.weights).hexdigest() != payload.sha256:
        raise ModelFileError(f"{where}: its weights arrived corrupt (sha256 mismatch)")
    card = validate_card(
        dict(payload.card), Path(payload.path or payload.name), check_weight_fields=False
    )
    try:
        state = st_load(payload.weights)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelFileError(f"{where}: its weights cannot be parsed ({exc})") from exc
    config = dict(card["config"])
    net = _registry().build_model(config)
    problems = _compare_state(net.state_dict(), state)
    if problems:
        raise ModelFileError(f"{where}: weights do not match its card: {'; '.join(problems)}")
    net.load_state_dict(state, strict=True)
    net.to(dev).eval()
    return LoadedModel(
        net=net,
        card=card,
        config=config,
        name=payload.name,
        task=card["task"],
        path=Path(payload.path or payload.name),
        source=payload.source,
        device=dev,
    )


# --------------------------------------------------------------------------------------------
# listing


@dataclass(frozen=True)
class ModelInfo:
    """One entry of :func:`describe_models`: a model's card, or why it is broken."""

    name: str
    source: str  # "bundled" or "user"
    path: Path  # the card (.json)
    card: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": str(self.path),
            "ok": self.ok,
            "error": self.error,
            "card": self.card,
        }


def _inspect(directory: Path, name: str, source: str, verify: bool, taken: set[str]) -> ModelInfo:
    base = directory / name
    card_path, weights = _card_path(base), _weights_path(base)
    info = {"name": name, "source": source, "path": card_path}
    if not is_valid_name(name):
        return ModelInfo(**info, error=f"{card_path}: {name!r} is not a valid model name")
    if name in taken:
        return ModelInfo(**info, error=f"{card_path}: shadowed by the bundled model {name!r}")
    if not card_path.is_file():
        return ModelInfo(**info, error=f"weights file {weights} has no model card {card_path}")
    try:
        card = read_card(card_path)
    except ModelFileError as exc:
        return ModelInfo(**info, error=str(exc))
    if not weights.is_file():
        return ModelInfo(**info, card=card, error=f"weights file {weights} is missing")
    if verify:
        try:
            _read_weights(weights, card, card_path)
        except ModelFileError as exc:
            return ModelInfo(**info, card=card, error=str(exc))
    return ModelInfo(**info, card=card)


def _scan(verify: bool) -> list[ModelInfo]:
    bundled_dir, user_dir = bundled_model_dir(), user_model_dir()
    infos = [_inspect(bundled_dir, n, "bundled", verify, set()) for n in _names_in(bundled_dir)]
    if user_dir.expanduser().resolve() != bundled_dir.resolve():
        taken = {i.name for i in infos}
        infos += [_inspect(user_dir, n, "user", verify, taken) for n in _names_in(user_dir)]
    return infos


def describe_models(*, verify: bool = True) -> list[ModelInfo]:
    """Every bundled, then user model, with its card, including broken ones with the reason.

    ``verify=True`` also checks each weights file against its card's sha256 (reads the file).
    """
    return _scan(verify)


def list_models() -> list[str]:
    """Names of the usable models: bundled first, then user, each group sorted.

    Broken model files (bad card, missing weights, a user model shadowing a bundled name) are
    skipped with a ``UserWarning``; :func:`describe_models` reports them with the reason.
    """
    names = []
    for info in _scan(verify=False):
        if info.ok:
            names.append(info.name)
        else:
            warnings.warn(f"skipping broken {info.source} model {info.name!r}: {info.error}")
    return names
