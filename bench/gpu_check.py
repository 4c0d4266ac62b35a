"""GPU check (run through ``bench/gpu_check.sh``): what a CUDA machine must show before long GPU runs. Prints
tables and a PASS/WARN line per check; exit 1 only when something *fails* (an error, NaN losses, a run that
does not finish), never on slow numbers. Sized for < 5 min on one GPU.

1. ResNet-18 on synthetic 3x32x32 data through ``rurk.train.fit``, bf16 autocast and fp32: images/s, and the
   ratio to a bare loop (forward, cross-entropy, backward, SGD step) under the same precision.
2. The audit (``rurk.audit.kernel.residual_knowledge``, Gaussian probe) against a bare forward loop over the same
   number of forward passes (same batch size, inference mode): seconds and the ratio, fp32 and bf16.
3. One small ``rurk run`` of a cifar5-shaped synthetic scenario (ResNet-18, 5 classes, pre-train + fine-tune,
   forget 50) written as TOML into a temporary directory, on ``--device cuda``; with Ray installed, the same grid
   again with ``--executor ray --gpus-per-task 0.5`` and its summary.json compared with the local one
   (GPU kernels may round differently, so differences are reported, not failed).

``--dry-run-cpu`` runs the same code on the CPU at toy sizes (to check the script itself on a machine without
a GPU); without it and without CUDA the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS: list[tuple[str, str, str]] = []


def report(name: str, ok: bool | None, detail: str) -> None:
    status = "PASS" if ok else ("WARN" if ok is None else "FAIL")
    RESULTS.append((status, name, detail))
    print(f"[{status}] {name}: {detail}", flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- 1. training
def bare_train(model, x, y, bs: int, amp: str, device) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    perm = torch.randperm(x.shape[0], device=device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16" and device.type == "cuda"
           else torch.autocast(device.type, enabled=False))
    for i in range(0, x.shape[0], bs):
        rows = perm[i : i + bs]
        with ctx:
            loss = F.cross_entropy(model(x[rows]), y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)


def check_training(device, n: int, epochs: int, width: float = 1.0) -> None:
    import copy

    from rurk.data import TensorData
    from rurk.models import build_model
    from rurk.train import OptimConfig, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    data = TensorData(x, y, torch.arange(n))
    torch.manual_seed(0)
    init = build_model("resnet18", 10, (3, 32, 32), width=width).to(device)
    xd, yd = x.to(device), y.to(device)
    print(f"\n1. ResNet-18 training, {n} synthetic 32x32 images x {epochs} epoch(s), batch 128")
    print(f"   {'precision':9s} {'fit img/s':>10s} {'bare img/s':>11s} {'fit/bare':>9s} {'final loss':>10s}")
    for amp in ("bf16", "off"):
        cfg = OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=epochs, batch_size=128, amp=amp)
        fit(copy.deepcopy(init), data, OptimConfig(epochs=1, batch_size=128, amp=amp, max_steps=3), 0,
            progress=False)  # warm-up (cuDNN autotuning, allocator)
        bare_train(copy.deepcopy(init), xd[:384], yd[:384], 128, amp, device)
        sync(device)
        t = time.perf_counter()
        rec = fit(copy.deepcopy(init), data, cfg, 0, progress=False)
        sync(device)
        t_fit = time.perf_counter() - t
        m = copy.deepcopy(init)
        t = time.perf_counter()
        for _ in range(epochs):
            bare_train(m, xd, yd, 128, amp, device)
        t_bare = time.perf_counter() - t
        losses = rec.history.get("loss") or [float("nan")]
        finite = all(math.isfinite(v) for v in losses) and not rec.diverged
        name = "bf16" if amp == "bf16" else "fp32"
        ratio = (n * epochs / t_fit) / (n * epochs / t_bare)
        print(f"   {name:9s} {n * epochs / t_fit:10.0f} {n * epochs / t_bare:11.0f} {ratio:9.2f} {losses[-1]:10.4f}")
        report(f"train {name}", finite and (ratio >= 0.85 or None), f"fit/bare throughput {ratio:.2f} "
               f"(target >= 0.85), loss finite: {finite}")


# ----------------------------------------------------------------------------------------------- 2. audit
def check_audit(device, n: int, draws: int, width: float = 1.0) -> None:
    from rurk.audit.spec import default_batch_size
    from rurk.audit.kernel import residual_knowledge
    from rurk.models import build_model

    torch.manual_seed(1)
    m = build_model("resnet18", 5, (3, 32, 32), width=width).to(device).eval()
    torch.manual_seed(2)
    a = build_model("resnet18", 5, (3, 32, 32), width=width).to(device).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)
    taus = [i * (8 / 255) / 10 for i in range(11)]
    bs = default_batch_size(device)
    print(f"\n2. audit throughput: {n} forget samples x {draws} draws x {len(taus)} taus (Gaussian), batch {bs}")
    print(f"   {'precision':9s} {'audit s':>8s} {'bare s':>8s} {'audit/bare':>10s} {'forward img/s':>13s}")
    for bf16 in (False, True):
        kw = dict(taus=taus, probe="gaussian", draws=draws, seed=0, bootstrap=0, bf16=bf16, progress=False)
        residual_knowledge(m, a, x[: min(n, 64)], y[: min(n, 64)], **(kw | {"draws": 2}))  # warm-up
        sync(device)
        t = time.perf_counter()
        res = residual_knowledge(m, a, x, y, **kw)
        sync(device)
        t_audit = time.perf_counter() - t
        images = res.timing.forward_passes // 2  # through each of m and a
        xb = torch.rand(bs, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        mc, ac = (mod.to(memory_format=torch.channels_last) for mod in (m, a))
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
               else torch.autocast(device.type, enabled=False))
        with torch.inference_mode(), ctx:
            for _ in range(2):
                mc(xb), ac(xb)
            sync(device)
            t = time.perf_counter()
            done, hits = 0, torch.zeros((), dtype=torch.long, device=device)
            while done < images:
                b = min(bs, images - done)
                hits += (mc(xb[:b]).argmax(1) == 0).sum() + (ac(xb[:b]).argmax(1) == 0).sum()
                done += b
            int(hits)
            sync(device)
            t_bare = time.perf_counter() - t
        name = "bf16" if bf16 else "fp32"
        ratio = t_audit / t_bare
        print(f"   {name:9s} {t_audit:8.2f} {t_bare:8.2f} {ratio:10.2f} {res.timing.forward_passes / t_audit:13.0f}")
        report(f"audit {name}", ratio <= 1.25 or None, f"audit/bare time {ratio:.2f} (target <= 1.25)")


# ----------------------------------------------------------------------------------------------- 3. rurk run
SCENARIO = """\
description = "cifar5-shaped synthetic data (bench/gpu_check): ResNet-18, 5 classes, pre-train + fine-tune"
preset = "small"

[data]
dataset = "synthetic"        # 1000 train / 200 test uniform-noise 3x32x32 images, 10 balanced classes
classes = 5
train_per_class = {per_class}
test_per_class = 20

[forget]
kind = "sample"
forget_class = 0
count = {forget}

[model]
arch = "resnet18"
mean = [0.4914, 0.4822, 0.4465]
std = [0.2470, 0.2435, 0.2616]
{width}
[pretrain]
dataset = "synthetic"
exclude_forget = false

[pretrain.optim]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
epochs = {pre_epochs}
batch_size = 128

[train]
optimizer = "sgd"
lr = 0.01
momentum = 0.9
weight_decay = 5e-4
epochs = {epochs}
batch_size = 128

[retrain]
epochs = {epochs}
"""


def run_cli(args: list[str], timeout: float, env: dict) -> tuple[int, float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "rurk.cli", *args], capture_output=True, text=True, timeout=timeout,
                       env=os.environ | {"RURK_PROGRESS": "0"} | env)
    return p.returncode, time.perf_counter() - t, (p.stdout + p.stderr)[-3000:]


def strip_times(o):
    if isinstance(o, dict):
        return {k: strip_times(v) for k, v in o.items() if not any(t in k for t in ("wall", "seconds", "timing"))}
    if isinstance(o, list):
        return [strip_times(v) for v in o]
    return o


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b))):
        return []
    return [] if a == b else [f"{path}: {a} vs {b}"]


def check_run(device: str, tmp: Path, dry: bool, timeout: float) -> None:
    scen = tmp / "cifar5-synthetic.toml"
    scen.write_text(SCENARIO.format(per_class=20 if dry else 100, forget=5 if dry else 50,
                                    width="width = 0.125\n" if dry else "", pre_epochs=1 if dry else 5,
                                    epochs=1 if dry else 10))
    common = [str(scen), "--seeds", "131", "--methods", "gd,rurk,ssd", "--draws", "4" if dry else "32",
              "--no-relearn", "--no-attacks", "--device", device, "--quiet"]
    print(f"\n3. rurk run {scen.name} ({'toy sizes' if dry else '5 x 100 images, forget 50'}) on {device}")
    # on the CPU one torch thread, as in each Ray task (--cpus-per-task 1), so the two summaries can be identical
    env = {"OMP_NUM_THREADS": "1"} if dry else {}
    rc, wall, out = run_cli(["run", *common, "--out", str(tmp / "local")], timeout, env)
    print("\n".join("   " + line for line in out.splitlines() if line.startswith("|"))[:4000])
    ok = rc == 0 and (tmp / "local" / "cifar5-synthetic" / "summary.json").is_file()
    report("rurk run (local)", ok, f"exit {rc} in {wall:.0f} s" + ("" if ok else f"\n{out}"))
    try:
        import ray  # noqa: F401
    except ImportError:
        report("rurk run --executor ray", None, "skipped: Ray is not installed (RURK_RAY=1 bash scripts/setup.sh)")
        return
    gpus = [] if dry else ["--gpus-per-task", "0.5"]
    rc, wall, out = run_cli(["run", *common, "--out", str(tmp / "ray"), "--executor", "ray", *gpus], timeout, env)
    ok_ray = rc == 0 and (tmp / "ray" / "cifar5-synthetic" / "summary.json").is_file()
    report("rurk run --executor ray", ok_ray, f"exit {rc} in {wall:.0f} s" + ("" if ok_ray else f"\n{out}"))
    if ok and ok_ray:
        a, b = (strip_times(json.loads((tmp / d / "cifar5-synthetic" / "summary.json").read_text()))
                for d in ("local", "ray"))
        diff = differences(a, b)
        report("ray vs local summary", True if not diff else None,
               "identical numbers" if not diff else f"{len(diff)} numbers differ (GPU rounding?), e.g. {diff[:3]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run-cpu", action="store_true", help="run everything on the CPU at toy sizes")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: train, audit, run")
    args = ap.parse_args(argv)
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}); nothing to check. Install a CUDA build of torch into .venv on a GPU machine, "
              "or run `bench/gpu_check.sh --dry-run-cpu` to test the script itself.")
        return 0
    dry = args.dry_run_cpu
    device = torch.device("cpu" if dry else "cuda")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if dry:
        torch.set_num_threads(1)
        print("gpu_check: --dry-run-cpu: the CPU at toy sizes (numbers mean nothing)")
    else:
        p = torch.cuda.get_device_properties(0)
        print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}")
    t0 = time.perf_counter()
    try:
        if "train" not in skip:
            check_training(device, n=256 if dry else 8192, epochs=1 if dry else 2, width=0.125 if dry else 1.0)
        if "audit" not in skip:
            check_audit(device, n=16 if dry else 256, draws=8 if dry else 100, width=0.125 if dry else 1.0)
        if "run" not in skip:
            with tempfile.TemporaryDirectory(prefix="rurk-gpu-check-") as tmp:
                check_run("cpu" if dry else "cuda", Path(tmp), dry, timeout=600 if dry else 150)
    except Exception as e:  # a crash is a failed check, reported on one line, and the summary still printed
        report("gpu_check", False, f"{type(e).__name__}: {e}")
    print(f"\ngpu_check finished in {time.perf_counter() - t0:.0f} s:")
    for status, name, detail in RESULTS:
        print(f"  {status:4s} {name}: {detail.splitlines()[0]}")
    return 1 if any(s == "FAIL" for s, _, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
