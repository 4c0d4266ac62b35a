"""rurk.threads: thread count from an explicit request, RURK_THREADS, OMP_NUM_THREADS, affinity and cgroup quota."""

import os

import pytest
import torch

from rurk import threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("RURK_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def fake_files(monkeypatch, files: dict[str, str]):
    """Replace the cgroup file reader: only ``files`` exist."""
    monkeypatch.setattr(threads, "_read_text", lambda path: files.get(path))


def fake_affinity(monkeypatch, cpus):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus), raising=False)


def test_override_wins(monkeypatch):
    monkeypatch.setenv("RURK_THREADS", "3")
    fake_affinity(monkeypatch, range(8))
    fake_files(monkeypatch, {})
    assert threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_env_var_honoured(monkeypatch):
    fake_affinity(monkeypatch, range(8))
    fake_files(monkeypatch, {})
    monkeypatch.setenv("RURK_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.configure_threads() == 2
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("RURK_THREADS")
    assert threads.configure_threads() == 4  # OpenMP's variable next
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # an OpenMP list: not ours, ignored
    assert threads.configure_threads() == 8


def test_affinity_mask_honoured(monkeypatch):
    fake_affinity(monkeypatch, [0, 5, 7])
    fake_files(monkeypatch, {})
    assert threads.available_cpus() == 3
    assert threads.configure_threads() == 3
    assert torch.get_num_threads() == 3


def test_cgroup_v2_quota(monkeypatch):
    fake_affinity(monkeypatch, range(8))
    fake_files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "250000 100000"})
    assert threads.available_cpus() == 2  # 2.5 CPUs, rounded down
    fake_files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "max 100000"})
    assert threads.available_cpus() == 8
    fake_files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "50000 100000"})
    assert threads.available_cpus() == 1  # at least 1


def test_cgroup_v2_own_path(monkeypatch):
    fake_affinity(monkeypatch, range(8))
    fake_files(monkeypatch, {"/proc/self/cgroup": "0::/job/42", "/sys/fs/cgroup/job/42/cpu.max": "300000 100000"})
    assert threads.available_cpus() == 3


def test_cgroup_v1_quota_and_minimum(monkeypatch):
    files = {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "400000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}
    fake_files(monkeypatch, files)
    fake_affinity(monkeypatch, range(8))
    assert threads.available_cpus() == 4
    fake_affinity(monkeypatch, [1, 2])  # the smaller limit wins
    assert threads.available_cpus() == 2
    fake_files(monkeypatch, {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                             "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    fake_affinity(monkeypatch, range(6))
    assert threads.available_cpus() == 6  # -1: no quota


def test_no_affinity_no_cgroup(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    fake_files(monkeypatch, {})
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert threads.available_cpus() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.available_cpus() == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "abc", [2]])
def test_bad_requested_rejected(bad):
    with pytest.raises(ValueError, match="expected an integer >= 1") as e:
        threads.configure_threads(bad)
    assert repr(bad) in str(e.value)


def test_numeric_string_requested():
    assert threads.configure_threads("1") == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_env_rejected(monkeypatch, bad):
    monkeypatch.setenv("RURK_THREADS", bad)
    before = torch.get_num_threads()
    with pytest.raises(ValueError) as e:
        threads.configure_threads()
    assert "RURK_THREADS" in str(e.value) and repr(bad) in str(e.value) and "integer >= 1" in str(e.value)
    assert torch.get_num_threads() == before  # nothing set on error


def test_empty_env_means_unset(monkeypatch):
    monkeypatch.setenv("RURK_THREADS", "")
    fake_affinity(monkeypatch, [0, 1])
    fake_files(monkeypatch, {})
    assert threads.configure_threads() == 2


def test_cli_threads_flag_sets_torch_threads_and_rejects_bad_values(capsys, monkeypatch):
    import torch

    from rurk.cli import main

    fake_affinity(monkeypatch, range(8))  # room for 3 threads on any test machine (more are capped)
    fake_files(monkeypatch, {})
    before = torch.get_num_threads()
    try:
        assert main(["scenarios", "--threads", "3"]) == 0 and torch.get_num_threads() == 3
        assert main(["--threads=2", "scenarios"]) == 0 and torch.get_num_threads() == 2
        assert main(["scenarios", "--threads", "0"]) == 2
        assert "threads = '0': expected an integer >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def before_torch(monkeypatch):
    """As before torch loads, with no spin setting in the environment (all restored after the test)."""
    monkeypatch.delitem(__import__("sys").modules, "torch")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def loadavg(running: int) -> dict[str, str]:
    return {"/proc/loadavg": f"1.50 1.20 0.90 {running}/312 4242"}


@pytest.mark.parametrize("running, cpus, env, short", [
    (1, 2, {}, False),                      # only this process: libgomp's default spin
    (2, 2, {}, True),                       # one other busy task on 2 CPUs, 2 threads: short spin
    (2, 3, {}, True),                       # 3 threads (all 3 CPUs) + 1 other > 3
    (2, 3, {"RURK_THREADS": "2"}, False),   # 2 threads + 1 other <= 3: room for both
    (4, 8, {"RURK_THREADS": "6"}, True),    # 6 threads + 3 others > 8
    (4, 8, {"RURK_THREADS": "5"}, False),   # 5 + 3 <= 8
    (2, 2, {"RURK_THREADS": "1"}, False),   # one thread + one other fits
    (3, 2, {"OMP_WAIT_POLICY": "ACTIVE"}, False),   # the user's choice is kept
    (3, 2, {"GOMP_SPINCOUNT": "300000"}, False),
])
def test_prefer_short_spin_counts_other_runnable_tasks(monkeypatch, before_torch, running, cpus, env, short):
    fake_affinity(monkeypatch, range(cpus))
    fake_files(monkeypatch, loadavg(running))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert threads.prefer_short_spin() is short
    expected = threads.SPIN_COUNT if short else env.get("GOMP_SPINCOUNT")
    assert os.environ.get("GOMP_SPINCOUNT") == expected


@pytest.mark.parametrize("text", [None, "", "garbage", "1.0 1.0 1.0 x/9 1"])
def test_prefer_short_spin_without_loadavg_does_nothing(monkeypatch, before_torch, text):
    fake_affinity(monkeypatch, range(2))
    fake_files(monkeypatch, {} if text is None else {"/proc/loadavg": text})
    assert threads.prefer_short_spin() is False and "GOMP_SPINCOUNT" not in os.environ


def test_prefer_short_spin_does_nothing_once_torch_is_loaded(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    fake_affinity(monkeypatch, range(1))
    fake_files(monkeypatch, loadavg(5))  # busy, but torch is loaded: libgomp has read its environment already
    assert threads.prefer_short_spin() is False and "GOMP_SPINCOUNT" not in os.environ


def test_rurk_command_decides_the_spin_before_torch_loads():
    """The console script's import chain: rurk.threads does not load torch, and rurk.cli calls
    prefer_short_spin before it does (the decision is seen as its return value before torch is in sys.modules)."""
    import subprocess
    import sys

    code = ("import sys, os, rurk.threads as t\n"
            "assert 'torch' not in sys.modules, 'rurk.threads must not import torch'\n"
            "seen = []\n"
            "real = t.prefer_short_spin\n"
            "t.prefer_short_spin = lambda: seen.append('torch' in sys.modules) or real()\n"
            "import rurk.cli\n"
            "rurk.cli.main(['scenarios'])\n"
            "assert seen == [False], seen\n"
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # the user's choice: never overridden
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "None"
