"""Many files on a ``dask.distributed`` cluster: the batch engine's per-file work on workers.

:func:`~napari_nalu_count.infer.batch.run_batch` (and so ``nalu-count count|segment
--scheduler``) hands its files here when given ``client=``: a ``distributed.Client``, or a
scheduler spec, ``"local:N"`` (a ``LocalCluster`` of N worker processes, one thread each,
started for the run and closed after it) or ``"tcp://HOST:PORT"`` (a running scheduler, e.g.
``dask scheduler`` plus ``dask worker`` on other machines).

- The same function runs per file as in a local batch
  (:func:`~napari_nalu_count.infer.batch.process_file`): same reading, engine call, rows,
  outputs and measurements, so the table is byte for byte the local one.
- One model load per worker: the client sends the model once to every worker as plain data
  (:class:`~napari_nalu_count.models.store.ModelPayload`: the card and safetensors bytes, no
  pickled code); each worker process rebuilds and checks it on first use and keeps it, keyed
  by the weights' SHA-256 and the device (:func:`worker_stats` counts the loads). The
  engine's options (:data:`napari_nalu_count.infer.engine.OPTIONS`) travel with it.
- Results come back in any order and are handed on in input order (a bounded window of files
  in flight, so a long run never holds more than a few results), which lets the caller write
  the CSV as they arrive.
- A file that fails is an outcome like any other (reported, not fatal); a worker that dies is
  reported for the files it held (``worker failed: ...``) and the others go on.

Install the extra: ``pip install "napari-nalu-count[distributed]"``. The workers read the
input files and write the output files by the client's paths: on a remote cluster they must
see the same file system, and they need this package installed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_nalu_count.errors import CancelToken, InputError

#: what ``--scheduler`` accepts, for messages
SCHEDULER_FORMS = "local:N (a local cluster of N worker processes) or tcp://HOST:PORT"
INSTALL_HINT = 'pip install "napari-nalu-count[distributed]"'

_LOCAL = re.compile(r"local:(\d{1,4})")
_ADDRESS = re.compile(
    r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})"
)


def parse_scheduler(text: str) -> str:
    """Check a scheduler spec: ``local:N`` (1 <= N <= 1024) or ``tcp://HOST:PORT`` /
    ``tls://HOST:PORT``; return it stripped. Raises :class:`InputError` saying what is
    expected. Only the form is checked here (no connection is made)."""
    if not isinstance(text, str):
        raise InputError(f"scheduler must be {SCHEDULER_FORMS}, got {text!r}")
    spec = text.strip()
    m = _LOCAL.fullmatch(spec)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= 1024:
            raise InputError(f"scheduler {text!r}: the number of workers must be 1 to 1024")
        return spec
    m = _ADDRESS.fullmatch(spec)
    if m:
        if not 1 <= int(m.group(3)) <= 65535:
            raise InputError(f"scheduler {text!r}: the port must be 1 to 65535")
        return spec
    raise InputError(f"scheduler must be {SCHEDULER_FORMS}, got {text!r}")


def require_distributed() -> Any:
    """The ``distributed`` module, or :class:`InputError` telling how to install it."""
    try:
        import distributed
    except ImportError:
        raise InputError(
            f"running on a dask cluster needs dask.distributed, which is not installed: "
            f"{INSTALL_HINT}"
        ) from None
    return distributed


def check_client(client: Any) -> Any:
    """``client`` checked before any work: a scheduler spec (see :func:`parse_scheduler`) or
    something with a ``submit`` method (a ``distributed.Client``). Returns it (a spec
    stripped); the ``distributed`` package must be importable either way."""
    if isinstance(client, str):
        spec = parse_scheduler(client)
        require_distributed()
        return spec
    if not (hasattr(client, "submit") and hasattr(client, "scatter")):
        raise InputError(
            f"client must be a distributed.Client or a scheduler ({SCHEDULER_FORMS}), "
            f"got {type(client).__name__}"
        )
    return client


#: dask configuration of the LocalCluster of ``local:N``. dask's nannies set
#: ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which turns glibc's dynamic mmap threshold
#: off: each large tensor is then mmapped afresh and page-faulted in, and a file took 1.9x the
#: CPU time of the same call in a plain process (0.19 s vs 0.10 s, 256 x 256, one thread).
#: ``None`` drops the variable (glibc's defaults; a value set in the environment still wins).
_LOCAL_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _close_quietly(obj: Any) -> None:
    """Close a client or cluster; a slow or failing shutdown must not fail a finished batch
    (its table is already written)."""
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - e.g. a TimeoutError of a busy machine
        pass


@contextmanager
def open_client(scheduler: Any) -> Iterator[tuple[Any, int | None]]:
    """``(client, torch threads per worker or None)`` for a checked scheduler; a cluster or
    connection made here is closed on exit, a given client is left open. Raises
    :class:`InputError` (one line) when the cluster cannot be started or reached."""
    if not isinstance(scheduler, str):
        yield scheduler, None
        return
    distributed = require_distributed()
    import dask

    m = _LOCAL.fullmatch(scheduler)
    if m:
        n = int(m.group(1))
        try:
            with dask.config.set(_LOCAL_CONFIG):
                cluster = distributed.LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # no fixed port
                    scheduler_kwargs={"dashboard": False},
                    silence_logs=logging.ERROR,
                )
        except Exception as exc:  # noqa: BLE001 - said in one line
            why = _why(exc)
            raise InputError(f"cannot start a local dask cluster of {n} workers: {why}") from None
        try:
            try:
                client = distributed.Client(cluster)
            except Exception as exc:  # noqa: BLE001 - said in one line
                raise InputError(f"cannot connect to the local dask cluster: {_why(exc)}") from None
            try:
                yield client, max(1, _cpu_count() // n)
            finally:
                _close_quietly(client)
        finally:
            _close_quietly(cluster)
        return
    try:
        client = distributed.Client(scheduler)
    except Exception as exc:  # noqa: BLE001 - OSError / TimeoutError from the comm layer
        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {_why(exc)}") from None
    try:
        if not client.scheduler_info().get("workers"):
            wait = dask.config.get("distributed.comm.timeouts.connect", "30s")
            try:
                client.wait_for_workers(1, timeout=wait)
            except Exception:  # noqa: BLE001 - a timeout, said in one line
                raise InputError(
                    f"the dask scheduler at {scheduler} has no workers (waited {wait})"
                ) from None
        yield client, None
    finally:
        _close_quietly(client)


# ------------------------------------------------------------------------------------------
# worker side


@dataclass(frozen=True)
class WorkerJob:
    """What every worker receives once per batch: the per-file settings, the model (and the
    seed counter of a segmentation) as payloads, the other engine keyword arguments, the
    engine's :data:`OPTIONS` and, for a local cluster, the torch threads per worker."""

    settings: Any
    model: Any
    count_model: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    engine_options: dict[str, Any] = field(default_factory=dict)
    torch_threads: int | None = None


_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()
_stats = {"model_loads": 0, "files": 0}


def worker_stats() -> dict[str, int]:
    """This process's counters: ``model_loads`` (models rebuilt from payloads) and ``files``
    (files processed). Run it on every worker with ``client.run(worker_stats)``."""
    with _models_lock:
        return {**_stats, "pid": os.getpid()}


def _worker_model(payload: Any, device: str) -> Any:
    from napari_nalu_count.infer.device import resolve_device
    from napari_nalu_count.models.store import load_model_payload

    dev = str(resolve_device(device))
    key = (payload.sha256, dev)
    with _models_lock:
        hit = _models.get(key)
        if hit is None:
            hit = _models[key] = load_model_payload(payload, dev)
            _stats["model_loads"] += 1
        return hit


def _prepare_worker(job: WorkerJob) -> tuple[Any, dict[str, Any]]:
    from napari_nalu_count.infer import engine

    if job.torch_threads:
        import torch

        if torch.get_num_threads() != job.torch_threads:
            torch.set_num_threads(job.torch_threads)
    if job.engine_options and any(
        engine.OPTIONS.get(k) != v for k, v in job.engine_options.items()
    ):
        engine.OPTIONS.update(job.engine_options)
    loaded = _worker_model(job.model, job.settings.device)
    options = dict(job.options)
    if job.count_model is not None:
        options["count_model"] = _worker_model(job.count_model, job.settings.device)
    return loaded, options


def process_on_worker(job: WorkerJob, path: str, names: Any) -> Any:
    """One file on a worker: :func:`~napari_nalu_count.infer.batch.process_file` with the
    worker's copy of the model (loaded on its first file)."""
    from napari_nalu_count.infer.batch import process_file

    loaded, options = _prepare_worker(job)
    outcome = process_file(Path(path), job.settings, loaded, options, names)
    with _models_lock:
        _stats["files"] += 1
    return outcome


# ------------------------------------------------------------------------------------------
# client side


def make_job(
    settings: Any, loaded: Any, options: dict[str, Any], torch_threads: int | None = None
) -> WorkerJob:
    """The :class:`WorkerJob` of a batch (models turned into payloads)."""
    from napari_nalu_count.infer import engine
    from napari_nalu_count.models.store import model_payload

    opts = dict(options)
    cm = opts.pop("count_model", None)
    count_payload = None
    if cm is not None:
        if not hasattr(cm, "net"):  # a name or a path: the batch engine loads it first
            raise InputError("count_model must be loaded before it is sent to workers")
        count_payload = model_payload(cm)
    return WorkerJob(
        settings=settings,
        model=model_payload(loaded),
        count_model=count_payload,
        options=opts,
        engine_options=dict(engine.OPTIONS),
        torch_threads=torch_threads,
    )


def run_files(
    client: Any,
    torch_threads: int | None,
    settings: Any,
    loaded: Any,
    options: dict[str, Any],
    items: list[tuple[int, Path, Any]],
    *,
    submitted: Callable[[int], Any] | None = None,
    cancel: CancelToken | None = None,
    window: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Process ``items`` (``(index, path, output names)``) on the cluster; yield ``(index,
    FileOutcome)`` in the order of ``items``, each as soon as it and all before it are done.

    ``client``: a ``distributed.Client`` (see :func:`open_client`); ``torch_threads``: torch
    threads each worker sets (None: as it is). At most ``window`` files (default: 4 per
    worker thread, at least 8) are in flight or waiting for an earlier one.
    ``submitted(index)`` is called as each file is sent. A ``cancel`` stops between files:
    the files not yet handed on are cancelled and :class:`Cancelled` is raised.
    """
    from napari_nalu_count.infer.batch import FileOutcome

    if not items:
        return
    distributed = require_distributed()
    job = make_job(settings, loaded, options, torch_threads)
    [job_future] = client.scatter([job], broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:12]
    if window is None:
        window = max(8, 4 * sum(client.nthreads().values()))
    pending: dict[Any, int] = {}  # future -> position in items
    ready: dict[int, Any] = {}
    sent = 0
    nxt = 0

    def send() -> None:
        nonlocal sent
        while sent < len(items) and sent - nxt < window:
            index, path, names = items[sent]
            fut = client.submit(
                process_on_worker,
                job_future,
                str(path),
                names,
                key=f"nalu-count-{run_id}-{index}",
                pure=False,
            )
            pending[fut] = sent
            sent += 1
            if submitted is not None:
                submitted(index)

    try:
        send()
        while nxt < len(items):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if nxt not in ready:
                try:
                    done, _ = distributed.wait(
                        list(pending), timeout=0.5, return_when="FIRST_COMPLETED"
                    )
                except TimeoutError:
                    continue
                for fut in done:
                    pos = pending.pop(fut)
                    try:
                        ready[pos] = fut.result()
                    except Exception as exc:  # noqa: BLE001 - the worker, not the file
                        reason = str(exc) or type(exc).__name__
                        ready[pos] = FileOutcome(
                            str(items[pos][1]), None, error=f"worker failed: {reason}"
                        )
                    fut.release()
            while nxt in ready:
                # a stop asked for while the last file was handed on takes effect before the
                # next one, even when the workers have finished it already
                if cancel is not None:
                    cancel.raise_if_cancelled()
                outcome = ready.pop(nxt)
                yield items[nxt][0], outcome
                nxt += 1
                send()
    finally:
        if pending:
            client.cancel(list(pending))
        job_future.release()
