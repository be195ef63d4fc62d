import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from workbench.errors import ConfigError, RunError, WriteError
from workbench.runlock import LOCK, RunLock
from workbench.runs import Run, atomic_write_json, atomic_write_text, check_run_name, list_runs
from workbench.tracking import Tracker


def test_create_open_and_metrics(tmp_path):
    run = Run.create("sae", {"k": 4}, name="a", root=tmp_path)
    run.append_metrics({"step": 1, "loss": 2.0})
    run.append_metrics({"step": 2, "loss": 1.0})
    again = Run.open(tmp_path / "a")
    assert again.kind == "sae" and again.config == {"k": 4}
    assert [r["loss"] for r in again.metrics()] == [2.0, 1.0]
    again.truncate_metrics(1)
    assert [r["step"] for r in again.metrics()] == [1]
    with pytest.raises(RunError, match="already exists"):
        Run.create("sae", {}, name="a", root=tmp_path)


def test_torn_metrics_line_is_skipped(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    run.append_metrics({"step": 1})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # crash mid-write
    with pytest.warns(UserWarning, match=r"dropped 1 metrics row.*line 2"):
        assert run.metrics() == [{"step": 1}]


def test_listing_reports_broken_runs_and_keeps_going(tmp_path):
    Run.create("sae", {}, name="good", root=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    (tmp_path / "nokind").mkdir()
    (tmp_path / "nokind" / "config.json").write_text("{}")
    rows = {r.path.name: r for r in list_runs(tmp_path)}
    assert rows["good"].error is None and rows["good"].run.kind == "sae"
    assert "no config.json" in rows["empty"].error
    assert rows["corrupt"].run is None and "unreadable" in rows["corrupt"].error
    assert "no 'kind' field" in rows["nokind"].error
    with pytest.raises(RunError, match="unreadable"):
        Run.open(tmp_path / "corrupt").meta()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left


def test_tracker_writes_metrics_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run.create("test", {}, name="w", root=tmp_path)
    tr = Tracker(run, project="workbench-tests", config={"a": 1})
    tr.log({"loss": 0.5}, step=3)
    tr.finish()
    assert run.metrics() == [{"step": 3, "loss": 0.5}]
    assert list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert json.loads((run.path / "wandb.json").read_text())["mode"] == "offline"


def test_tracker_survives_wandb_failure(tmp_path, monkeypatch):
    import wandb

    def fail(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", fail)
    run = Run.create("test", {}, name="w", root=tmp_path)
    with pytest.warns(UserWarning, match="wandb could not start"):
        tr = Tracker(run, project="p")
    tr.log({"x": 1}, step=1)
    assert run.metrics() == [{"step": 1, "x": 1}]


# ---- the reliability sweep (issue 17) -----------------------------------------------------------
def test_non_utf8_config_is_a_broken_run_not_a_crash(tmp_path):
    Run.create("sae", {}, name="good", root=tmp_path)
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "config.json").write_bytes(b'{"kind": "sae", "note": "caf\xe9"}')
    rows = {r.path.name: r for r in list_runs(tmp_path)}
    assert rows["good"].error is None
    assert rows["latin1"].run is None and "unreadable" in rows["latin1"].error and "utf-8" in rows["latin1"].error
    run = Run(tmp_path / "latin1")
    (run.path / "status.json").write_bytes(b"\xff\xfe")
    (run.path / "eval.json").write_bytes(b"\xff\xfe")
    assert run.status() == "unknown"
    with pytest.raises(RunError, match="corrupt"):
        run.read_json("eval.json")


def test_metrics_lines_that_are_not_objects_or_not_utf8_are_dropped_with_a_warning(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    run.append_metrics({"step": 1})
    with open(run.path / "metrics.jsonl", "ab") as f:
        f.write(b'[1, 2]\n"text"\n\xff\xfe\n{"step": 3}\n')
    with pytest.warns(UserWarning, match=r"dropped 3 metrics row.*line 2, 3, 4"):
        assert run.metrics() == [{"step": 1}, {"step": 3}]
    with pytest.warns(UserWarning):
        run.truncate_metrics(2)  # resume keeps the good rows up to the checkpoint
    assert run.metrics() == [{"step": 1}]


def test_every_json_file_is_strict(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    run.write_json("eval.json", {"fvu": float("inf"), "modes": {"batch": {"x": float("nan"), "y": 1.5}}})
    run.append_metrics({"step": 1, "loss": float("-inf")})
    strict = lambda s: json.loads(s, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))  # noqa: E731
    assert strict((run.path / "eval.json").read_text()) == {"fvu": None, "modes": {"batch": {"x": None, "y": 1.5}}}
    assert strict((run.path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}


@pytest.mark.parametrize("name", [".hidden", "../x", "a/b/c", "-flag", "", "a" * 201])
def test_bad_run_names_are_rejected(tmp_path, name):
    with pytest.raises(ConfigError, match="not a valid run name"):
        check_run_name(name)
    with pytest.raises(ConfigError, match="not a valid run name"):
        Run.create("sae", {}, name=name, root=tmp_path / "runs")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs" / "a").exists()


def test_leftover_tmp_files_are_cleaned(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    (run.path / ".eval.json.abc123.tmp").write_text("half")
    (run.path / "checkpoints" / ".step-00000004.pt.x1.tmp").write_bytes(b"half")
    (run.path / "keep.json").write_text("{}")
    assert sorted(p.name for p in run.clean_tmp()) == [".eval.json.abc123.tmp", ".step-00000004.pt.x1.tmp"]
    assert sorted(p.name for p in run.path.rglob("*") if p.is_file()) == ["config.json", "keep.json"]


# ---- one writer per run dir ---------------------------------------------------------------------
def _holder(tmp_path):
    """A live child process that holds the lock of tmp_path/a (it prints 'held' and waits for stdin)."""
    code = ("import sys; from workbench.runs import Run; lock = Run(sys.argv[1]).lock().acquire(); "
            "print('held', flush=True); sys.stdin.read(); lock.release()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_gets_an_error_naming_the_first(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    p = _holder(tmp_path)
    try:
        with pytest.raises(RunError) as e:
            run.lock().acquire()
        msg = str(e.value)
        assert f"in use by pid {p.pid} on host {socket.gethostname()}" in msg and str(run.path / LOCK) in msg
    finally:
        p.communicate("")
    assert not (run.path / LOCK).exists()  # released on exit
    with run.lock():  # free again
        assert json.loads((run.path / LOCK).read_text())["pid"] == os.getpid()
    assert not (run.path / LOCK).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run.path / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}))
    with pytest.warns(UserWarning, match="stale lock"):
        lock = run.lock().acquire()
    assert json.loads((run.path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_from_another_host_is_respected(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    (run.path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0, "command": "workbench sae train"}))
    with pytest.raises(RunError, match=r"in use by pid 1 on host elsewhere .*\(workbench sae train\)"):
        RunLock(run.path).acquire()


# ---- write failures: one line naming the path ---------------------------------------------------
def test_read_only_runs_dir(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only directories: let the kernel's answer be simulated
        real = os.mkdir

        def mkdir(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        with pytest.raises(WriteError, match=f"cannot write {ro / 'a'}.*Permission denied.*not writable"):
            Run.create("sae", {}, name="a", root=ro)
    finally:
        ro.chmod(0o755)


def test_runs_path_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'runs'}.*a file stands where a directory"):
        Run.create("sae", {}, name="a", root=tmp_path / "runs")


def test_full_disk(tmp_path, monkeypatch):
    run = Run.create("sae", {}, name="a", root=tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=f"cannot write {run.path / 'eval.json'}: No space left on device; the disk is full"):
        atomic_write_json(run.path / "eval.json", {"a": 1})
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []


def test_cli_prints_write_failures_as_one_line(tmp_path, tiny_model_dir, capsys):
    from cli.main import main

    (tmp_path / "runs").write_text("")
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0  # a file lists as no runs
    rc = main(["acts", "cache", "--model", str(tiny_model_dir), "--tokens", "10", "--runs-dir", str(tmp_path / "runs"),
               "--name", "x", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"workbench acts: error: cannot write {tmp_path / 'runs'}")


# ---- wandb online with no network -----------------------------------------------------------------
def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting to it is refused


def test_reachable_says_why_not():
    from workbench.tracking import reachable

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        assert reachable(f"http://127.0.0.1:{srv.getsockname()[1]}") is None
    assert "refused" in reachable(f"http://127.0.0.1:{_unused_port()}").lower()
    assert reachable("not a url") is not None


def test_wandb_online_without_a_server_goes_offline_with_a_warning(tmp_path, monkeypatch):
    """A bogus key and no server: a warning and an offline run, not wandb's 90 s init timeout."""
    import time

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_unused_port()}")
    run = Run.create("test", {}, name="w", root=tmp_path)
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match=r"wandb: cannot reach http://127.0.0.1:\d+ .*logging offline under .*wandb sync"):
        tr = Tracker(run, project="p")
    started = time.perf_counter() - t0
    tr.log({"x": 1}, step=1)
    tr.finish()
    assert os.environ["WANDB_MODE"] == "offline" and json.loads((run.path / "wandb.json").read_text())["mode"] == "offline"
    assert list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert started < 60  # a hang check (wandb alone would wait 90 s), not a speed target


def test_the_lock_works_where_hard_links_do_not(tmp_path, monkeypatch):
    def no_links(*a, **k):
        raise PermissionError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    run = Run.create("sae", {}, name="a", root=tmp_path)
    with run.lock():
        assert json.loads((run.path / LOCK).read_text())["pid"] == os.getpid()
        (run.path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # as if another host took it
        with pytest.raises(RunError, match="in use by pid 1 on host elsewhere"):
            RunLock(run.path).acquire()
    assert (run.path / LOCK).exists()  # not ours any more: release leaves it
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []


def test_json_of_arrays_and_scalars():
    import numpy as np

    from workbench.runs import json_text

    assert json.loads(json_text({"a": np.array([1.0, np.inf]), "b": np.float32(2.5), "c": np.int64(3)})) == \
        {"a": [1.0, None], "b": 2.5, "c": 3}


def test_runs_listing_flags_a_running_status_no_process_holds(tmp_path, capsys):
    from cli.main import main

    held, orphan = Run.create("sae", {}, name="held", root=tmp_path), Run.create("sae", {}, name="orphan", root=tmp_path)
    for r in (held, orphan):
        r.set_status("running")
    with held.lock():
        assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert out["held"].split()[-1] == "running" and "running? (no process holds it: killed?)" in out["orphan"]
