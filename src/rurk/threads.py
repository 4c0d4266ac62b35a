"""How many CPU threads torch should use, and setting it.

PyTorch's default intra-op thread count is the number of cores of the *machine*. In a container or a job
limited by an affinity mask (``taskset``, Slurm, ``docker --cpuset-cpus``) or a CPU quota (``docker --cpus``,
Kubernetes limits, systemd ``CPUQuota``) that is more threads than the process may run at once: they
oversubscribe the cores it has, the quota throttles all of them at the end of every period, and small CNNs
run several times slower than with the right count. :func:`available_cpus` reads both limits;
:func:`configure_threads` sets torch to a count chosen from (in this order) an explicit request,
``RURK_THREADS``, ``OMP_NUM_THREADS`` and :func:`available_cpus`, capped at :func:`available_cpus` with a
one-line warning (more threads than CPUs never help).

What to do on a shared server
-----------------------------
* Give rurk the cores that are *yours*, not the machine's: if other jobs run on the same cores, set
  ``RURK_THREADS`` (or ``--threads``) to the number of cores left free, often 1. Two jobs that each use every
  core run slower than the same two jobs with one core each, because torch's threads wait for each other.
* Prefer an affinity mask (``taskset -c 0-3 rurk ...``) or a scheduler allocation to a bare thread count:
  rurk then picks the count up by itself, and your job stays off other people's cores.
* Several rurk processes at once (e.g. one per seed): give each ``RURK_THREADS`` = cores / processes.
* Time things with the same thread count you will run with; on a busy machine compare runs made in the same
  process, in interleaved rounds (see ``bench/``), not wall times taken at different moments.

Waiting threads on a shared machine
-----------------------------------
Between two parallel regions (every layer of a forward pass) torch's OpenMP threads (libgomp) *spin* for about
300,000 iterations before they sleep. On an idle machine that saves a wake-up; beside another busy process the
spinning thread takes the core the other thread needs, and the whole team waits for it. Measured on 2 cores
(``bench/bench_threads.py``, the full CPU demo): idle 169 s; beside one competing busy process 560 s at 2
threads, 290 s with a spin count of 100 and 290 s at one thread; but idle the spin count of 100 cost 25%
(211 s). libgomp itself drops to 100 when *its* threads outnumber the CPUs; it cannot see other processes. So
the ``rurk`` command applies the same rule counting them (:func:`prefer_short_spin`): when this process's
threads plus the other runnable tasks at start (``/proc/loadavg``) outnumber the CPUs it may use, it sets
``GOMP_SPINCOUNT=100`` before torch loads. It never overrides ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set by
the user (``OMP_WAIT_POLICY=PASSIVE`` for always-short, ``GOMP_SPINCOUNT=300000`` for libgomp's default). It
changes when threads sleep, never what they compute: results are bit-identical. Work that starts after rurk
is not seen. Code that imports rurk as a library keeps torch's behaviour; set the variable in its environment.

Inter-op threads are not capped. rurk does no inter-op parallel work (no ``torch.jit.fork``), so the inter-op
pool stays idle, and :func:`torch.set_num_interop_threads` may be called only once per process and only before
any inter-op work starts -- capping it here would make :func:`configure_threads` fail or not depending on what
ran before it.
"""

from __future__ import annotations

import math
import operator
import os
import sys
import warnings
from typing import Callable

ENV_VAR = "RURK_THREADS"
#: libgomp's spin count when its threads outnumber the CPUs (its documentation); see "Waiting threads".
SPIN_COUNT = "100"

#: cgroup v2 quota files (``"<quota> <period>"`` or ``"max <period>"``), root first; :func:`_cgroup_paths` adds
#: the process's own cgroup.
_V2_ROOT = "/sys/fs/cgroup"
#: cgroup v1 mount points of the cpu controller.
_V1_ROOTS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu")


def _other_runnable() -> int | None:
    """Runnable tasks on the machine besides this process, right now: the 4th field of ``/proc/loadavg``
    (``running/total``) minus this process; None where it cannot be read."""
    text = _read_text("/proc/loadavg")
    try:
        running = int(text.split()[3].split("/")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None
    return max(0, running - 1)


def prefer_short_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` when other work is running: this process's threads
    (:func:`resolve_threads`) plus the machine's other runnable tasks outnumber the CPUs it may use -- libgomp's
    own rule, with other processes counted. Does nothing if ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set,
    if torch (hence libgomp, which reads them once) is already loaded, or if ``/proc/loadavg`` cannot be read.
    Returns whether it set it. Call it before ``import torch``; see "Waiting threads" above."""
    env = os.environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env or "torch" in sys.modules:
        return False
    others = _other_runnable()
    if not others:
        return False
    try:
        threads = resolve_threads()
    except ValueError:  # a bad RURK_THREADS: configure_threads reports it
        return False
    if threads + others <= available_cpus():
        return False
    env["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


def _read_text(path: str) -> str | None:
    """The stripped contents of a small file, None if it cannot be read (tests replace this)."""
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _affinity_cpus() -> int | None:
    """CPUs in this process's affinity mask (None where the platform has no ``sched_getaffinity``)."""
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):
        return None


def _own_cgroups() -> dict[str, str]:
    """Controller -> this process's cgroup path, from ``/proc/self/cgroup`` (``""`` is the v2 hierarchy)."""
    out: dict[str, str] = {}
    text = _read_text("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for ctl in controllers.split(",") if controllers else [""]:
            out[ctl] = path
    return out


def _quota(quota: str | None, period: str | None) -> int | None:
    """floor(quota / period), at least 1; None for no limit or unreadable values.

    Rounded down: with a fractional quota (``--cpus 1.5``) the extra thread would be throttled at the end of
    each period, stalling the others that wait for it."""
    try:
        q, p = int(quota), int(period)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if q <= 0 or p <= 0:  # -1: no limit (v1)
        return None
    return max(1, math.floor(q / p))


def _cgroup_cpus() -> int | None:
    """The smallest CPU quota found in the cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` files (the root of the mount and this process's own cgroup), None if none is set."""
    own = _own_cgroups()
    found: list[int] = []
    v2_dirs = [_V2_ROOT]
    if own.get("", "/") not in ("", "/"):
        v2_dirs.append(_V2_ROOT + own[""])
    for d in v2_dirs:
        text = _read_text(f"{d}/cpu.max")
        if text:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                n = _quota(fields[0], fields[1])
                if n is not None:
                    found.append(n)
    v1_dirs = list(_V1_ROOTS)
    sub = own.get("cpu") or own.get("cpuacct")
    if sub and sub != "/":
        v1_dirs += [r + sub for r in _V1_ROOTS]
    for d in v1_dirs:
        n = _quota(_read_text(f"{d}/cpu.cfs_quota_us"), _read_text(f"{d}/cpu.cfs_period_us"))
        if n is not None:
            found.append(n)
    return min(found) if found else None


def available_cpus() -> int:
    """CPUs this process may use: the minimum of its affinity mask (``os.sched_getaffinity``), its cgroup CPU
    quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, rounded down) and ``os.cpu_count()``
    where neither is available; at least 1."""
    limits = [n for n in (_affinity_cpus(), _cgroup_cpus()) if n is not None]
    if not limits:
        limits = [os.cpu_count() or 1]
    return max(1, min(limits))


def _check(value, source: str) -> int:
    """``value`` (an int, or a string from the environment) as a thread count >= 1, else ValueError."""
    expected = "expected an integer >= 1 (number of CPU threads)"
    try:
        if isinstance(value, str):
            n = int(value.strip())
        elif isinstance(value, bool):
            raise TypeError
        else:
            n = operator.index(value)  # ints and numpy integers; not floats
    except (TypeError, ValueError):
        raise ValueError(f"{source} = {value!r}: {expected}") from None
    if n < 1:
        raise ValueError(f"{source} = {value!r}: {expected}")
    return n


def resolve_threads(requested: int | None = None, *, source: str = "threads",
                    warn: Callable[[str], None] | None = None) -> int:
    """The thread count :func:`configure_threads` would set, without setting it.

    A count above :func:`available_cpus` (asked for, or from ``RURK_THREADS`` / ``OMP_NUM_THREADS``) is capped
    there: more threads than CPUs only make torch's threads wait for each other (a 2-CPU machine ran at a load
    of 400 with ``--threads 999``). The cap is reported through ``warn`` (default :func:`warnings.warn`) as one
    line naming the value; ``source`` names an explicit ``requested`` in it (the CLI passes ``--threads``)."""
    if requested is not None:
        n, where = _check(requested, source), source
    elif (env := os.environ.get(ENV_VAR)) is not None and env.strip() != "":
        n, where = _check(env, ENV_VAR), ENV_VAR
    elif (omp := os.environ.get("OMP_NUM_THREADS", "").strip()).isdigit() and int(omp) >= 1:
        n, where = int(omp), "OMP_NUM_THREADS"  # OpenMP's own variable; torch honours it too. Lists like "4,2" are ignored.
    else:
        return available_cpus()
    cpus = available_cpus()
    if n > cpus:
        message = f"{where} = {n}: more than the {cpus} CPU{'s' * (cpus > 1)} this process may use; using {cpus}"
        if warn is None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        else:
            warn(message)
        return cpus
    return n


def configure_threads(requested: int | None = None, *, source: str = "threads",
                      warn: Callable[[str], None] | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    The count is ``requested`` if given, else the environment variable ``RURK_THREADS``, else
    ``OMP_NUM_THREADS`` (when it is a plain integer >= 1), else :func:`available_cpus` (affinity mask and
    cgroup quota); never more than :func:`available_cpus` (see :func:`resolve_threads` for the cap, its warning
    and ``source``). A ``requested`` or ``RURK_THREADS`` that is not an integer >= 1 raises ValueError naming the
    value. Inter-op threads are left alone (see the module docstring). Call it once, early, before heavy work."""
    import torch

    n = resolve_threads(requested, source=source, warn=warn)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


__all__ = ["ENV_VAR", "SPIN_COUNT", "available_cpus", "configure_threads", "prefer_short_spin", "resolve_threads"]
