"""`rurk run --jobs K`: worker processes on one store give exactly the numbers of a one-thread local run."""

from __future__ import annotations

import json

import pytest

from rurk.cli import main

RUN = ["digits5", "--methods", "gd,rurk,ssd", "--seeds", "131,42,7", "--taus", "0,0.1", "--draws", "4",
       "--no-relearn", "--no-attacks", "--set", "train.epochs=4", "--quiet", "--device", "cpu", "--threads", "1"]


def numbers(summary: dict) -> dict:
    """The summary without what legitimately differs between two runs (wall times, the run section)."""
    out = {k: v for k, v in summary.items() if k != "run"}
    for e in out["methods"].values():
        e.pop("wall_s", None)
    return out


def test_workers_give_the_numbers_of_a_one_thread_run(tmp_path, capfd):
    assert main(["run", *RUN, "--out", str(tmp_path / "seq")]) == 0
    assert main(["run", *RUN, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    out = capfd.readouterr().out  # the workers write to the process's stdout
    assert "[worker 0]" in out and "[worker 1]" in out  # both workers computed cells
    import re

    rows = re.findall(r"\[worker \d\]  seed (\d+) (\w+) +retain", out)
    assert sorted(rows) == sorted(set(rows)) and len(rows) == 3 * 5  # each row printed once, by whoever computed it
    seq, par = (json.loads((tmp_path / d / "digits5" / "summary.json").read_text()) for d in ("seq", "par"))
    assert numbers(seq) == numbers(par)
    # every per-seed file a run writes is there too
    assert (tmp_path / "par" / "digits5" / "seed-7" / "rurk" / "residual-gaussian.npz").is_file()


@pytest.mark.parametrize("extra,match", [
    (["--jobs", "0"], "--jobs = 0: expected an integer >= 1"),
    (["--jobs", "2", "--executor", "ray"], "worker processes are for --executor local"),
])
def test_bad_jobs_are_refused_before_any_work(tmp_path, capsys, extra, match):
    assert main(["run", *RUN, "--out", str(tmp_path), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of `rurk run --jobs 2` leaves no worker computing on (Linux: PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    rurk = os.path.join(os.path.dirname(sys.executable), "rurk")
    parent = subprocess.Popen([rurk, "run", *RUN, "--out", str(tmp_path), "--jobs", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout
        kids = [int(p) for p in out.split()]
        return [k for k in kids if "spawn_main" in open(f"/proc/{k}/cmdline").read().replace("\0", " ")]

    deadline = time.time() + 60
    while len(workers()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    kids = workers()
    assert len(kids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(os.path.exists(f"/proc/{k}") and
                                         open(f"/proc/{k}/stat").read().split()[2] != "Z" for k in kids):
        time.sleep(0.2)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z"]
    assert not alive


PARENT = """
import multiprocessing, sys, time
from rurk import workers

class StartsForever:  # unpickling it never ends: a worker stuck in its start-up, however fast the machine
    def __reduce__(self):
        return (time.sleep, (3600,))

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    if sys.argv[1] == "process":
        p = workers.process(ctx, "w", print, StartsForever())
        p.start()
        pid = p.pid
    else:  # a ProcessPoolExecutor's worker, started from a thread that then ends (as `rurk tune`'s trial threads)
        import threading
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(1, mp_context=ctx, **workers.pool_initializer(print, StartsForever()))
        t = threading.Thread(target=pool.submit, args=(print,))
        t.start(), t.join()
        pid = next(iter(pool._processes))
    print(pid, flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("kind", ["process", "pool"])
def test_a_worker_dies_with_its_parent_even_during_its_start_up(tmp_path, kind):
    """kill -9 of the parent while its worker is still starting (unpickling its work, which imports torch for
    rurk's real work and here never ends) ends the worker at once: rurk.workers arms the parent-death signal before
    it unpickles anything, so the test holds on any machine at any load."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), kind], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while time.time() < deadline and os.path.exists(f"/proc/{child}") and \
            open(f"/proc/{child}/stat").read().split()[2] != "Z":
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"


def test_a_claim_that_does_not_wait_skips_a_held_cell(tmp_path):
    from rurk.store import Store

    store = Store(tmp_path)
    with store.claim("model", "k") as held:
        assert held
        with store.claim("model", "k", wait=False) as again:  # another open file: flock refuses it
            assert again is False
        with store.claim("model", "other", wait=False) as free:
            assert free
    with store.claim("model", "k", wait=False) as after:  # released
        assert after


def test_workers_train_every_reference_first_skipping_one_being_trained(tmp_path):
    from rurk.config import load_scenario, parse_overrides
    from rurk.pipeline import prepare, reference_keys
    from rurk.run.pool_exec import train_references
    from rurk.store import Store

    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2"]))
    store = Store(tmp_path)
    prepared = prepare(scenario, store)
    keys = {s: reference_keys(scenario, prepared, s) for s in (131, 42)}
    with store.claim("model", keys[42]["original"]):  # "another worker" is training seed 42's Original
        train_references(scenario, prepared, [42, 131], store, "cpu", w=1)
    trained = {(s, k) for s in keys for k, key in keys[s].items() if store.load_meta(key) is not None}
    assert trained == {(42, "retrain"), (131, "original"), (131, "retrain")}  # the held one was skipped, not waited for


def test_progress_counts_finished_rows_of_this_split_and_estimates_the_time_left(tmp_path, monkeypatch):
    from rurk.run import pool_exec
    from rurk.store import Store

    store, lines = Store(tmp_path), []
    put = lambda i, seed, split="s1": store.put("eval", f"k{i}", scenario="fm", seed=seed,  # noqa: E731
                                                 config={"split": split, "row": i}, metrics={})
    put(0, 1), put(1, 2, "other split"), put(2, 9)  # one row of this run done before it started
    clock = iter([0.0, 60.0, 120.0])
    monkeypatch.setattr(pool_exec.time, "monotonic", lambda: next(clock))
    prog = pool_exec.Progress(store, "fm", "s1", [1, 2], rows_per_seed=3, log=lines.append)
    assert prog.total == 6 and prog.start == 1
    put(3, 1), put(4, 2)
    prog.tick()  # 2 new rows in 60 s, 3 left: 1.5 min
    prog.tick()  # nothing changed: no line
    assert lines == ["progress: 3 of 6 rows finished (1 from the store), about 2 min left"]
