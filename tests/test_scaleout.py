"""Many files on a dask.distributed cluster (``run_batch(client=)``, ``--scheduler``) and
resumed tables (``resume=True``, ``--resume``): the same table as one process, in input order,
one model load per worker, failures reported and not fatal."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_nalu_count import count_files, segment_files
from napari_nalu_count.cli import main
from napari_nalu_count.errors import CancelToken, InputError, ModelFileError
from napari_nalu_count.infer import batch, scaleout
from napari_nalu_count.infer.batch import BatchEvent, run_batch

distributed = pytest.importorskip("distributed")


def _save_tiny(name: str, task: str, seed: int = 0) -> str:
    from napari_nalu_count.models import make_card, save_model
    from napari_nalu_count.nn.registry import build_model

    torch.manual_seed(seed)
    arch = "unet_count" if task == "count" else "se_unet"
    net = build_model({"architecture": arch, "widths": [4, 8]})
    save_model(net, make_card(name, task, net.config, diameter=10.0), name)
    return name


def _img(seed: int, shape=(40, 48)) -> np.ndarray:
    from napari_nalu_count.data.synthetic import synthetic_cells

    return synthetic_cells(shape, n_cells=5, diameter=10.0, seed=seed).image


@pytest.fixture(scope="module")
def client():
    """Two in-process workers (threads): fast to start, real scheduler and futures."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            dashboard_address=":0",  # no fixed port
            scheduler_kwargs={"dashboard": False},
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", _img(1))
    tifffile.imwrite(d / "b.tif", np.stack([_img(2), _img(3)]), photometric="minisblack")
    (d / "c_broken.tif").write_bytes(b"II*\x00 not a tiff")
    for k in range(4):
        tifffile.imwrite(d / f"d{k}.tif", _img(10 + k))
    return d


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tif"))


def test_cluster_table_is_the_local_table_byte_for_byte(client, folder, tmp_path):
    model = _save_tiny("s-count", "count")
    local, dist = tmp_path / "local.csv", tmp_path / "dist.csv"
    a = run_batch(folder, "count", model, device="cpu", csv=local)
    events: list[BatchEvent] = []
    b = run_batch(folder, "count", model, device="cpu", csv=dist, client=client,
                  progress=events.append)  # fmt: skip
    assert dist.read_bytes() == local.read_bytes()
    assert len(local.read_text().splitlines()) == 1 + 1 + 2 + 4  # header, a, b (2), d0-d3
    assert b.rows == a.rows and b.files == a.files and b.header == a.header
    assert [p for p, _ in b.skipped] == [p for p, _ in a.skipped] == [str(folder / "c_broken.tif")]
    assert b.skipped[0][1] == a.skipped[0][1]  # the same reason, from the worker
    kinds = [e.kind for e in events]
    assert kinds.count("start") == 7 and kinds.count("file") == 6 and kinds.count("skipped") == 1
    assert kinds[-1] == "done"
    # files are handed on in input order
    assert [e.index for e in events if e.kind in ("file", "skipped")] == list(range(7))


def test_cluster_optional_columns_outputs_and_measurements_match(client, folder, tmp_path):
    seg = "nuclei-seg"  # the bundled models, so that there are objects to measure
    mask = np.zeros((40, 48), dtype=np.uint16)
    mask[:, :20] = 3
    mask[5:30, 25:] = 7
    kw = dict(device="cpu", regions=mask, pixel_size=0.5, diameter_column=True, diameter=10.0)
    out = {}
    for label, c in (("local", None), ("dist", client)):
        res = segment_files(folder, seg, csv=tmp_path / f"{label}.csv", client=c,
                            labels_dir=tmp_path / f"lab_{label}",
                            measure_csv=tmp_path / f"{label}_objects.csv", **kw)  # fmt: skip
        out[label] = res
    a, b = out["local"], out["dist"]
    assert a.header[-4:] == ("region", "area_um2", "density_per_mm2", "diameter_px")
    assert (tmp_path / "dist.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "dist_objects.csv").read_bytes() == (
        tmp_path / "local_objects.csv"
    ).read_bytes()
    assert [p.name for p in b.outputs][:-1] == [p.name for p in a.outputs][:-1]
    assert b.outputs[-1].name == "dist_objects.csv"
    labels = [p for p in b.outputs if p.suffix == ".tif"]
    assert len(labels) == 6
    for p in labels:
        other = tmp_path / "lab_local" / p.name
        assert np.array_equal(tifffile.imread(p), tifffile.imread(other))
    assert len(b.measurements) == len(a.measurements) > 0


def test_results_written_in_input_order_when_they_finish_out_of_order(client, folder, tmp_path):
    model = _save_tiny("s-order", "count")
    finished: list[str] = []
    lock = threading.Lock()

    def regions(path: Path):  # runs on the worker, per file: the first file is the slowest
        if path.name == "a.tif":
            time.sleep(1.5)
        with lock:
            finished.append(path.name)
        return np.ones((40, 48), dtype=np.uint8)

    out = tmp_path / "t.csv"
    res = count_files(folder, model, device="cpu", csv=out, client=client, regions=regions)
    assert finished[0] != "a.tif" and "a.tif" in finished  # the cluster finished out of order
    names = [Path(line.split(",")[0]).name for line in out.read_text().splitlines()[1:]]
    firsts = list(dict.fromkeys(names))
    assert firsts == ["a.tif", "b.tif", "d0.tif", "d1.tif", "d2.tif", "d3.tif"]
    local = run_batch(folder, "count", model, device="cpu", regions=np.ones((40, 48), np.uint8))
    assert res.rows == local.rows


def test_one_model_load_per_worker(client, folder, tmp_path):
    model = _save_tiny("s-loads", "count", seed=7)  # weights no other test sent
    before = client.run(scaleout.worker_stats)
    run_batch(folder, "count", model, device="cpu", client=client)
    after = client.run(scaleout.worker_stats)
    pids = {s["pid"] for s in after.values()}
    loads = sum(after[w]["model_loads"] - before[w]["model_loads"] for w in after) / len(after)
    files = sum(after[w]["files"] - before[w]["files"] for w in after) / len(after)
    # in-process workers share one process (and its model cache): one load for 7 files
    assert len(pids) == 1 and loads == 1 and files == 7
    run_batch(folder, "count", model, device="cpu", client=client)  # same model, same workers
    again = client.run(scaleout.worker_stats)
    assert all(again[w]["model_loads"] == after[w]["model_loads"] for w in again)


def test_resume_skips_files_in_the_table_and_appends(client, folder, tmp_path):
    model = _save_tiny("s-resume", "count")
    full = tmp_path / "full.csv"
    run_batch(folder, "count", model, device="cpu", csv=full)
    part = tmp_path / "part.csv"
    first = [folder / "a.tif", folder / "b.tif"]
    run_batch(first, "count", model, device="cpu", csv=part)
    with open(part, "a") as fh:  # a run killed in the middle of a line
        fh.write(str(folder / "c_broken.tif")[:10])
    before = client.run(scaleout.worker_stats)
    events: list[BatchEvent] = []
    res = run_batch(_files(folder), "count", model, device="cpu", csv=part, resume=True,
                    client=client, progress=events.append)  # fmt: skip
    after = client.run(scaleout.worker_stats)
    w = next(iter(after))
    # a is kept; b, the table's last file, is run again (its rows may have been cut short),
    # then c_broken and d0-d3
    assert after[w]["files"] - before[w]["files"] == 6
    assert part.read_bytes() == full.read_bytes()
    assert res.resumed == [folder / "a.tif"]
    assert [p.name for p in res.files] == ["b.tif", "d0.tif", "d1.tif", "d2.tif", "d3.tif"]
    assert "1 more already in the table" in res.message
    assert [e.path for e in events if e.kind == "resumed"] == [str(folder / "a.tif")]
    # nothing left: a second resume only redoes the last file (and retries the broken one)
    res2 = run_batch(_files(folder), "count", model, device="cpu", csv=part, resume=True)
    assert part.read_bytes() == full.read_bytes()
    assert [p.name for p in res2.files] == ["d3.tif"] and len(res2.resumed) == 5
    assert len(res2.skipped) == 1


def test_resume_drops_a_file_cut_short_and_continues_measurements(folder, tmp_path):
    seg = _save_tiny("s-resume-seg", "segment", seed=3)
    kw = dict(device="cpu", engine_options={"seeds": "interior"})
    full, full_m = tmp_path / "full.csv", tmp_path / "full_objects.csv"
    ref = run_batch(folder, "segment", seg, csv=full, measure_csv=full_m, **kw)
    assert len(ref.measurements) > 0
    part, part_m = tmp_path / "part.csv", tmp_path / "part_objects.csv"
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]))  # a and the first of b's two frames: b cut short
    m_lines = full_m.read_text().splitlines(keepends=True)
    part_m.write_text("".join(m_lines[:-1]) + m_lines[-1][:5])  # every file, last line cut
    res = run_batch(folder, "segment", seg, csv=part, measure_csv=part_m, resume=True, **kw)
    assert res.resumed == [folder / "a.tif"]
    assert part.read_bytes() == full.read_bytes()
    assert part_m.read_bytes() == full_m.read_bytes()


def test_resume_without_a_table_is_a_plain_run_and_other_columns_are_refused(folder, tmp_path):
    model = _save_tiny("s-resume2", "count")
    out = tmp_path / "new.csv"
    res = run_batch(folder / "a.tif", "count", model, device="cpu", csv=out, resume=True)
    assert out.read_text().startswith("file,frame,count\n") and len(res.files) == 1
    with pytest.raises(InputError, match="cannot resume .*area_px"):
        run_batch(folder / "a.tif", "count", model, device="cpu", csv=out, resume=True,
                  areas=True)  # fmt: skip
    with pytest.raises(InputError, match="resume needs csv"):
        run_batch(folder / "a.tif", "count", model, device="cpu", resume=True)


def test_a_failing_worker_call_is_reported_and_the_rest_finish(client, folder, tmp_path,
                                                               monkeypatch):  # fmt: skip
    model = _save_tiny("s-fail", "count")
    real = batch.process_file

    def flaky(path, *args, **kwargs):  # in-process workers see the patched module
        if path.name == "d1.tif":
            raise MemoryError("worker ran out of memory")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "process_file", flaky)
    out = tmp_path / "t.csv"
    res = run_batch(folder, "count", model, device="cpu", csv=out, client=client)
    reasons = dict(res.skipped)
    assert reasons[str(folder / "d1.tif")] == "worker failed: worker ran out of memory"
    assert str(folder / "c_broken.tif") in reasons
    assert [p.name for p in res.files] == ["a.tif", "b.tif", "d0.tif", "d2.tif", "d3.tif"]
    assert "d3.tif" in out.read_text() and "d1.tif" not in out.read_text()


def test_cancel_stops_between_files_and_keeps_the_rows(client, folder, tmp_path):
    model = _save_tiny("s-cancel", "count")
    token = CancelToken()

    def progress(event: BatchEvent) -> None:
        if event.kind == "file":
            token.cancel()

    out = tmp_path / "t.csv"
    res = run_batch(folder, "count", model, device="cpu", csv=out, client=client,
                    progress=progress, cancel=token, )  # fmt: skip
    assert res.cancelled and [p.name for p in res.files] == ["a.tif"]
    assert out.read_text().splitlines() == ["file,frame,count", *[",".join(r) for r in res.rows]]
    assert client.run(lambda: 1)  # the given client is still usable (not closed by the run)


def test_scheduler_forms():
    assert scaleout.parse_scheduler(" local:3 ") == "local:3"
    assert scaleout.parse_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert scaleout.parse_scheduler("tls://sched.example.org:8786")
    assert scaleout.parse_scheduler("tcp://[::1]:8786")
    for bad in ("local", "local:0", "local:x", "local:-1", "tcp://", "tcp://host",
                "http://h:1", "tcp://h:0", "tcp://h:99999", "", "h:8786"):  # fmt: skip
        with pytest.raises(InputError, match="scheduler"):
            scaleout.parse_scheduler(bad)
    with pytest.raises(InputError, match="distributed.Client"):
        scaleout.check_client(3)


@pytest.mark.parametrize("value", ["local:0", "local", "tcp://nohost", "ftp://h:1", "banana"])
def test_cli_bad_scheduler_exits_2_with_one_line(value, folder, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["count", str(folder), "--scheduler", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nalu-count count: error: argument --scheduler:")
    assert "local:N" in err[-1] or "1 to 1024" in err[-1]


def test_cli_unreachable_scheduler_and_missing_extra_exit_2(folder, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    import dask

    model = _save_tiny("s-cli-bad", "count")
    out = tmp_path / "never.csv"
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        rc = main(["count", str(folder), "--model", model, "--csv", str(out),
                   "--scheduler", "tcp://127.0.0.1:9"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("nalu-count: error: cannot reach the dask scheduler")
    assert not out.exists()  # nothing written before the cluster was there
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were missing
    rc = main(["count", str(folder), "--model", model, "--scheduler", "local:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "napari-nalu-count[distributed]" in err[-1] and len(err) == 1
    with pytest.raises(InputError, match=r"pip install"):
        count_files(folder, model, client="local:1")
    rc = main(["count", str(folder), "--model", model, "--resume"])
    assert rc == 2 and "--resume needs --csv" in capsys.readouterr().err


@pytest.mark.slow
def test_local_cluster_workers_keep_glibc_malloc_defaults(monkeypatch):
    """dask's nannies set MALLOC_TRIM_THRESHOLD_ in each worker, which doubled the CPU time
    of a file there; ``local:N`` drops it and splits the cores between the workers."""
    import os

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with scaleout.open_client("local:1") as (c, threads):
        env = c.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        assert list(env.values()) == [None]
        assert threads == scaleout._cpu_count()
        assert c.submit(sum, [1, 2], pure=False).result() == 3
    assert c.status == "closed"
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nothing leaks into this process


@pytest.mark.slow
def test_cli_local_cluster_of_worker_processes(folder, tmp_path, capsys):
    """The real thing: a worker process (spawned), the model sent as a payload (the worker
    has no model directory of its own), the same bytes as one process, exit 2 for the broken
    file, and --resume on top."""
    model = _save_tiny("s-cli", "count")
    local, dist = tmp_path / "local.csv", tmp_path / "dist.csv"
    assert main(["count", str(folder), "--model", model, "--csv", str(local)]) == 2
    capsys.readouterr()
    assert main(["count", str(folder), "--model", model, "--csv", str(dist),
                 "--scheduler", "local:1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "c_broken.tif" in err and "1 input(s) could not be processed" in err
    assert dist.read_bytes() == local.read_bytes()
    lines = dist.read_text().splitlines()
    dist.write_text("\n".join(lines[:3]) + "\n")  # a, b (2 frames): d0-d3 still to do
    assert main(["count", str(folder), "--model", model, "--csv", str(dist), "--resume",
                 "--scheduler", "local:1"]) == 2  # fmt: skip
    assert "1 file(s) already in" in capsys.readouterr().err  # a; b was cut short
    assert dist.read_bytes() == local.read_bytes()


def test_model_payload_round_trip_and_corruption():
    from napari_nalu_count.models import load_model
    from napari_nalu_count.models.store import load_model_payload, model_payload

    name = _save_tiny("s-payload", "count")
    loaded = load_model(name)
    payload = model_payload(loaded)
    back = load_model_payload(payload)
    x = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(back.net(x), loaded.net(x))
    assert back.name == loaded.name and back.task == "count" and back.net is not loaded.net
    import dataclasses

    bad = dataclasses.replace(payload, weights=payload.weights[:-8] + b"\0" * 8)
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model_payload(bad)
