"""The machine fingerprint: everything that changes the floats a run computes.

Training is chaotic: 60 epochs amplify the last bit of every rounding difference, so a run's numbers are
bit-identical only where the *same instructions* run in the *same order*. That depends on more than the CPU's
model name (one "AMD EPYC" string covers Zen 1 with AVX2 only and Zen 4 with AVX-512):

- the CPU: vendor, family, model, stepping, and the vector-instruction flags the kernels dispatch on (a
  hypervisor may hide some of them on the same CPU model);
- what torch's own dispatch picked (``torch.backends.cpu.get_cpu_capability()``) and the environment variables
  that override it or the libraries' dispatch (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, MKL's ...);
- the build: torch's version and its build configuration (BLAS/LAPACK, MKL and oneDNN versions), numpy's version;
- on a GPU, the device's name and the CUDA/cuDNN versions;
- the torch thread count and the device of the run, which the caller adds (:func:`fingerprint`).

:func:`machine` returns the per-process part (cached); :func:`digest` hashes a fingerprint. Every record the store
writes carries the digest of the machine that computed it (``timings.machine``), so a report assembled from cells
of several machines says so instead of claiming one (:mod:`rurk.report`), and the README check compares blocks
exactly only when their whole fingerprints match (:mod:`rurk.report.readme`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform

#: /proc/cpuinfo flags that select different kernels (SIMD width, FMA, dot-product and matrix extensions)
SIMD_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
              "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8")
#: environment variables that change which kernels torch, oneDNN or MKL run (recorded when set)
DISPATCH_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                "MKL_CBWR", "MKL_DEBUG_CPU_TYPE")


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's fields of ``/proc/cpuinfo`` ({} where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), " ".join(value.split()))
    except OSError:
        pass
    return fields


def cpu(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's identity: model name, vendor, family, model, stepping and its SIMD flags."""
    info = _cpuinfo(path)
    flags = set(info.get("flags", info.get("Features", "")).split())
    return {"name": info.get("model name") or platform.processor() or platform.machine() or "unknown CPU",
            "vendor": info.get("vendor_id", ""), "family": info.get("cpu family", ""), "model": info.get("model", ""),
            "stepping": info.get("stepping", ""), "arch": platform.machine(),
            "simd": [f for f in SIMD_FLAGS if f in flags]}


def _build() -> dict:
    import numpy
    import torch

    config = torch.__config__.show()
    libs = [line.strip(" -") for line in config.splitlines()
            if any(k in line for k in ("Math Kernel Library", "MKL-DNN", "oneDNN", "OpenMP", "LAPACK", "NNPACK"))]
    blas = next((part.split("=", 1)[1] for part in config.replace(",", "\n").split()
                 if part.startswith("BLAS_INFO=")), "")
    out = {"torch": torch.__version__, "numpy": numpy.__version__, "blas": blas, "libraries": libs,
           "capability": torch.backends.cpu.get_cpu_capability(),
           "config": hashlib.sha1(config.encode()).hexdigest()[:16]}
    if torch.cuda.is_available():
        out["cuda"] = {"device": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version()}
    return out


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """This process's CPU, build and dispatch environment (without thread count and device: see
    :func:`fingerprint`). Computed once per process."""
    return {"cpu": cpu(), **_build(), "env": {k: os.environ[k] for k in DISPATCH_ENV if k in os.environ}}


def digest(fp: dict) -> str:
    """A short content hash of a fingerprint (canonical JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(threads, device) -> dict:
    """The whole fingerprint of a run: :func:`machine` plus the torch thread count(s) and the device."""
    return {**machine(), "threads": threads, "device": device}


def short(fp: dict) -> str:
    """A readable one-line form: ``AMD EPYC (AuthenticAMD family 25 model 17 stepping 1, AVX512)``."""
    c = fp.get("cpu", {})
    ident = " ".join(p for p in (c.get("vendor"), c.get("family") and f"family {c['family']}",
                                 c.get("model") and f"model {c['model']}",
                                 c.get("stepping") and f"stepping {c['stepping']}") if p)
    extra = ", ".join(p for p in (ident, fp.get("capability"),
                                  *(f"{k}={v}" for k, v in sorted(fp.get("env", {}).items()))) if p)
    return f"{c.get('name', 'unknown CPU')} ({extra})" if extra else c.get("name", "unknown CPU")
