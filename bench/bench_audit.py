"""Benchmark of the residual-knowledge audit against the best plain loop on the same model. Prints tables; never a test.

    .venv/bin/python bench/bench_audit.py --threads 1            # ~1 min of CPU time (wall: more on a busy machine)
    .venv/bin/python bench/bench_audit.py --threads 1 --quick    # ~25 s of CPU time
    .venv/bin/python bench/bench_audit.py --n 100 --draws 100    # the issue's size (gaussian: 100 x 100 x 6 tau)

Two model kinds: rurk's own SmallCNN (``rurk.models.build_model("smallcnn", ...)``) and a user-style plain
``nn.Sequential`` defined here (conv32-pool-conv64-pool-fc128, nothing from rurk), each on 1x28x28 inputs.

**Bare** is the best configuration of a plain loop found by a sweep on the same model: batch size {64, 128,
256, 512} x NCHW / channels_last (``model.to(memory_format=torch.channels_last)`` on a copy) x
``torch.inference_mode`` / ``torch.no_grad``, fed one pre-made batch over and over (no data preparation at all)
and taking ``argmax`` and the correct count like the audit. For attacks the plain loop is a hand-written
targeted PGD / FGSM (the same steps, random start and projection) over batch size x layout, evaluating in
inference mode. The bare loop does exactly the audit's work (the same number of images through each model,
the tau = 0 shortcut included).

Method: (1) sweep: every configuration is timed on a short run in ``--sweep-rounds`` interleaved rounds and the
best is chosen; (2) ``--repeats`` interleaved rounds of [audit, bare at the chosen configuration on the same
work]; the table shows the best round of each and the median of the per-round ratios. ``--clock cpu`` (default)
times the process's CPU time, which with one thread ignores other jobs' use of the machine; ``--clock wall``
times wall clock. Target: audit / bare <= 1.15.

The naive paper-style loop (per tau and repeat, perturb the forget set and run both models, NCHW, batch 128) is
timed once for information; it is not a target.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rurk.threads import configure_threads
from rurk.audit.spec import default_batch_size
from rurk.audit.kernel import residual_knowledge

CL = torch.channels_last
SWEEP_BATCHES = (64, 128, 256, 512)
CTX = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


# ----------------------------------------------------------------------------------------------------- models
def user_cnn(classes: int = 5) -> nn.Module:
    """What a user would write, knowing nothing of rurk."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes),
    )


def rurk_cnn(classes: int = 5) -> nn.Module:
    from rurk.models import build_model

    return build_model("smallcnn", classes, (1, 28, 28))


KINDS = {"rurk SmallCNN": rurk_cnn, "user Sequential": user_cnn}


# ----------------------------------------------------------------------------------------------------- clocks
class Clock:
    def __init__(self, kind: str):
        self.kind = kind
        self.now = time.process_time if kind == "cpu" else time.perf_counter

    @contextmanager
    def measure(self, out: list):
        t0 = self.now()
        yield
        out.append(self.now() - t0)


# ----------------------------------------------------------------------------------------------------- bare loops
def plain_copy(model: nn.Module, channels_last: bool) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=CL) if channels_last else m


def bare_forward(m, a, images: int, bs: int, cl: bool, ctx: str) -> None:
    """``images`` images through each of m and a (models already in their layout), batch ``bs``."""
    x = torch.rand(bs, 1, 28, 28)
    if cl:
        x = x.contiguous(memory_format=CL)
    y = torch.randint(0, 5, (bs,))
    hits = torch.zeros((), dtype=torch.long)
    with CTX[ctx]():
        done = 0
        while done < images:
            b = min(bs, images - done)
            xb, yb = (x, y) if b == bs else (x[:b], y[:b])
            hits += (m(xb).argmax(1) == yb).sum() + (a(xb).argmax(1) == yb).sum()
            done += b
    int(hits)


def bare_attack(m, a, x, y, taus, c: int, bs: int, cl: bool, probe: str, steps: int, alpha: float, gen) -> None:
    """A plain targeted PGD (``steps`` steps, random start) / FGSM (one step, no start) / pgd-recall (true label,
    crafted on both models) over c copies of every sample at every tau; tau = 0 as one clean pass per sample."""
    fmt = CL if cl else torch.contiguous_format
    both = probe == "pgd-recall"
    with torch.inference_mode():
        (m(x.contiguous(memory_format=fmt)).argmax(1) == y).sum(), (a(x.contiguous(memory_format=fmt)).argmax(1) == y).sum()
    xr, yr = x.repeat_interleave(c, 0), y.repeat_interleave(c, 0)
    for tau in taus:
        if tau == 0:
            continue
        for s in range(0, xr.shape[0], bs):
            x0, yb = xr[s : s + bs].contiguous(memory_format=fmt), yr[s : s + bs]
            target = yb if both else (yb + torch.randint(1, 5, yb.shape, generator=gen)) % 5
            start = (torch.rand(x0.shape, generator=gen) * 2 - 1) * tau if probe != "fgsm" else None
            advs = []
            for crafter in (m, a) if both else (m,):
                xa = x0 if start is None else (x0 + start).clamp(0, 1)
                with torch.enable_grad():
                    for _ in range(1 if probe == "fgsm" else steps):
                        xa = xa.detach().requires_grad_(True)
                        (g,) = torch.autograd.grad(F.cross_entropy(crafter(xa), target, reduction="sum"), xa)
                        step = tau if probe == "fgsm" else alpha
                        xa = (x0 + (xa.detach() - step * g.sign() - x0).clamp(-tau, tau)).clamp(0, 1)
                advs.append(xa)
            with torch.inference_mode():
                xm, xa_ = advs[0], advs[-1]
                (m(xm).argmax(1) == yb).sum(), (a(xa_).argmax(1) == yb).sum()


def naive_paper_loop(m, a, x, y, taus, c: int, bs: int = 128) -> None:
    """The paper's procedure written plainly: per tau, per repeat, perturb the forget set in batches (NCHW)."""
    n = len(y)
    with torch.no_grad():
        for tau in taus:
            km, ka = np.zeros(n, int), np.zeros(n, int)
            for _ in range(c):
                for s in range(0, n, bs):
                    xb = x[s : s + bs]
                    xp = torch.clamp(xb + tau * torch.randn_like(xb), 0, 1)
                    km[s : s + bs] += (m(xp).argmax(1) == y[s : s + bs]).numpy()
                    ka[s : s + bs] += (a(xp).argmax(1) == y[s : s + bs]).numpy()


# ----------------------------------------------------------------------------------------------------- main
def fmt_cfg(cfg) -> str:
    bs, cl, ctx = cfg
    return f"batch {bs}, {'channels_last' if cl else 'NCHW'}" + (f", {ctx}" if ctx else "")


def run_kind(kind: str, args, clock: Clock, probes: list[str]) -> list[tuple]:
    torch.manual_seed(0)
    m = KINDS[kind]().eval()
    torch.manual_seed(1)
    a = KINDS[kind]().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 1, 28, 28, generator=g)
    y = torch.randint(0, 5, (args.n,), generator=g)
    xs, ys = x[: args.attack_n], y[: args.attack_n]
    copies = {cl: (plain_copy(m, cl), plain_copy(a, cl)) for cl in (False, True)}
    rows = []
    for probe in probes:
        attack = probe in ("fgsm", "pgd", "pgd-recall")
        taus = args.attack_taus if attack else args.taus
        c = args.attack_draws if attack else args.draws
        xx, yy = (xs, ys) if attack else (x, y)
        params = {"steps": args.steps} if probe in ("pgd", "pgd-recall") else {}

        def audit():
            return residual_knowledge(m, a, xx, yy, taus, probe, draws=c, seed=0, bootstrap=0, progress=False,
                                      probe_params=params, batch_size=args.batch_size)

        res = audit()  # warm-up; also gives the work actually done
        images = res.timing.forward_passes // 2  # per model (random probes)
        gen = torch.Generator().manual_seed(0)
        configs = [(bs, cl, ctx) for bs in SWEEP_BATCHES for cl in (False, True)
                   for ctx in ((None,) if attack else tuple(CTX))]

        sweep_steps = 1 if probe == "fgsm" else min(2, args.steps)

        def bare(cfg, work=None):
            """The plain loop at ``cfg``: the audit's whole work, or (``work`` given) a short sweep measurement:
            ``work`` image pairs (random probes) or one batch of copies at tau = 8/255 with ``work`` PGD steps."""
            bs, cl, ctx = cfg
            mm, aa = copies[cl]
            if attack:
                if work is None:
                    bare_attack(mm, aa, xx, yy, taus, c, bs, cl, probe, args.steps, 2 / 255, gen)
                else:
                    bare_attack(mm, aa, xx[:1], yy[:1], [taus[-1]], bs, bs, cl, probe, work, 2 / 255, gen)
            else:
                bare_forward(mm, aa, images if work is None else work, bs, cl, ctx)

        # (1) sweep; each configuration warmed up once at its own batch shape first
        sweep_work = sweep_steps if attack else min(images, args.sweep_images)
        per_img = {cfg: [] for cfg in configs}
        for cfg in configs:
            bare(cfg, 1 if attack else cfg[0])
        for _ in range(args.sweep_rounds):
            for cfg in configs:
                t = []
                with clock.measure(t):
                    bare(cfg, sweep_work)
                per_img[cfg].append(t[0] / (cfg[0] * sweep_work if attack else sweep_work))
        best_cfg = min(configs, key=lambda k: min(per_img[k]))
        # (2) interleaved rounds of audit vs bare at the chosen configuration, same work
        t_audit, t_bare, other_a, other_b = [], [], [], []
        other = Clock("wall" if clock.kind == "cpu" else "cpu")
        for r in range(args.repeats):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                with clock.measure(t_audit if which == 0 else t_bare), other.measure(other_a if which == 0 else other_b):
                    audit() if which == 0 else bare(best_cfg)
        ratios = [ta / tb for ta, tb in zip(t_audit, t_bare)]
        rows.append(dict(kind=kind, probe=probe, n=xx.shape[0], c=c, taus=len(taus), fwd=res.timing.forward_passes,
                         bwd=res.timing.backward_passes, bs=res.batch_size, cfg=best_cfg, audit=min(t_audit),
                         bare=min(t_bare), ratio=min(t_audit) / min(t_bare), median=statistics.median(ratios),
                         other=min(other_a) / min(other_b), sweep=per_img))
        print(f"  {kind:<16} {probe:<11} audit {min(t_audit):6.2f}s  bare {min(t_bare):6.2f}s  "
              f"ratio {rows[-1]['ratio']:.3f}  ({fmt_cfg(best_cfg)})", flush=True)
    if args.naive is not False:
        t = []
        with clock.measure(t):
            naive_paper_loop(copies[False][0], copies[False][1], x, y, args.taus, args.draws)
        gauss = next((r for r in rows if r["probe"] == "gaussian"), None)
        rows.append(dict(kind=kind, probe="naive", t=t[0], audit_t=None if gauss is None else gauss["audit"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, 3 rounds, 1 sweep round, no paper-style loop")
    ap.add_argument("--n", type=int, default=None, help="forget samples, random probes (default 32; quick 24)")
    ap.add_argument("--draws", type=int, default=None, help="c for random probes (default 25; quick 16)")
    ap.add_argument("--n-tau", type=int, default=6, help="tau grid linspace(0, 8/255, N) for random probes (default 6)")
    ap.add_argument("--attack-n", type=int, default=None, help="forget samples for attacks (default 8; quick 6)")
    ap.add_argument("--attack-draws", type=int, default=None, help="c for attacks (default 8; quick 6)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps (default 10, the paper's)")
    ap.add_argument("--probes", default="gaussian,pgd",
                    help="comma list of gaussian, uniform-linf, uniform-l2, fgsm, pgd, pgd-recall")
    ap.add_argument("--kinds", default="rurk,user", help="model kinds: rurk, user")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved audit/bare rounds (default 5; quick 3)")
    ap.add_argument("--sweep-rounds", type=int, default=None, help="rounds of the bare sweep (default 2; quick 1)")
    ap.add_argument("--sweep-images", type=int, default=None, help="images per model per sweep measurement (default 512; quick 384)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: rurk.threads.configure_threads(); use 1 on a busy machine)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="what the ratios are taken on")
    ap.add_argument("--batch-size", type=int, default=None, help="audit batch size (default: rurk's default)")
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=None,
                    help="time the paper-style loop once, for information (default: on; off with --quick)")
    args = ap.parse_args(argv)
    threads = configure_threads(args.threads)
    q = args.quick
    args.n = args.n or (24 if q else 32)
    args.draws = args.draws or (16 if q else 25)
    args.attack_n = args.attack_n or (6 if q else 8)
    args.attack_draws = args.attack_draws or (6 if q else 8)
    args.repeats = args.repeats or (3 if q else 5)
    args.sweep_rounds = args.sweep_rounds or (1 if q else 2)
    args.sweep_images = args.sweep_images or (384 if q else 512)
    if q and args.naive is None:
        args.naive = False
    args.taus = [float(t) for t in np.linspace(0, 8 / 255, args.n_tau)]
    args.attack_taus = [0.0, 4 / 255, 8 / 255]
    if args.attack_n > args.n:
        args.n = args.attack_n
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    kinds = [k for k in KINDS if k.split()[0] in {s.strip() for s in args.kinds.split(",")}]
    clock = Clock(args.clock)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {threads} thread(s), clock: {args.clock}; audit batch "
          f"{args.batch_size or default_batch_size('cpu')} (attacks {args.batch_size or default_batch_size('cpu', True)})")
    print(f"random probes: |S_f| = {args.n}, c = {args.draws}, {len(args.taus)} tau; attacks: |S_f| = {args.attack_n}, "
          f"c = {args.attack_draws}, tau = 0, 4/255, 8/255, {args.steps} PGD steps")
    rows = []
    for kind in kinds:
        rows += run_kind(kind, args, clock, probes)

    print(f"\nbare sweep: seconds per image pair (attacks: per crafted copy and PGD step at tau = 8/255), best of "
          f"{args.sweep_rounds} round(s); * = chosen")
    for r in rows:
        if r["probe"] == "naive":
            continue
        print(f"  {r['kind']} / {r['probe']}:")
        for cfg, v in sorted(r["sweep"].items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
            star = "*" if cfg == r["cfg"] else " "
            print(f"    {star} {fmt_cfg(cfg):<45} {min(v) * 1e6:9.1f} us")

    other = "wall" if args.clock == "cpu" else "cpu"
    print(f"\naudit vs bare, best of {args.repeats} interleaved rounds ({args.clock} time); target audit/bare <= 1.15")
    hdr = (f"{'model':<16} {'probe':<11} {'n x c x tau':>13} {'fwd':>8} {'bwd':>8} {'audit bs':>8}  "
           f"{'bare (sweep winner)':<40} {'audit s':>8} {'bare s':>8} {'ratio':>6} {'median':>6} {other:>6}")
    print(hdr)
    for r in rows:
        if r["probe"] == "naive":
            continue
        size = f"{r['n']}x{r['c']}x{r['taus']}"
        print(f"{r['kind']:<16} {r['probe']:<11} {size:>13} {r['fwd']:>8} {r['bwd']:>8} "
              f"{r['bs']:>8}  {fmt_cfg(r['cfg']):<40} {r['audit']:>8.2f} {r['bare']:>8.2f} {r['ratio']:>6.3f} "
              f"{r['median']:>6.3f} {r['other']:>6.3f}")
    naive = [r for r in rows if r["probe"] == "naive"]
    if naive:
        print("\ninformation only (not a target): the naive paper-style loop (per tau, per repeat, NCHW, batch 128), "
              "one run, no tau = 0 shortcut")
        for r in naive:
            extra = "" if r["audit_t"] is None else f"  = {r['t'] / r['audit_t']:.2f} x the audit"
            print(f"  {r['kind']:<16} {r['t']:7.2f}s{extra}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s wall")


if __name__ == "__main__":
    main()
