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


def test_cli_threads_flag_sets_torch_threads_and_rejects_bad_values(capsys):
    import torch

    from rurk.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["scenarios", "--threads", "3"]) == 0 and torch.get_num_threads() == 3
        assert main(["--threads=2", "scenarios"]) == 0 and torch.get_num_threads() == 2
        assert main(["scenarios", "--threads", "0"]) == 2
        assert "threads = '0': expected an integer >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
