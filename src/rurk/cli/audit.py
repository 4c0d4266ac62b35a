"""`rurk audit`: a scenario's model (a method's, a checkpoint, Original) or your own model (`--arch`) against a
reference, written as JSON, CSV, PNG and the leak gallery."""

from __future__ import annotations

from pathlib import Path

from ..audit.attacks import RobustSettings, robust_curves, subsample
from ..audit.gallery import write_per_sample
from ..audit.kernel import residual_knowledge
from ..audit.metric_specs import cell_failure
from ..audit.spec import check_audit_memory
from ..config import ConfigError, Scenario
from ..pipeline import load_run_model, pick_device, prepare, reference_models
from ..report.attack_report import write_robust
from ..report.plots import plot_residual_curves
from ..run.experiment import RunOptions, audit_settings, unlearned_model
from ..store import Store, atomic_output, load_checkpoint
from ..usermodel import (
    build_user_model,
    check_model_fits,
    load_samples,
    parse_normalize,
    with_normalization,
)
from .checks import _audit_options, _audit_spec, _checkpoint_name, _scenario, _seeds


def cmd_audit(args) -> None:
    """`rurk audit SCENARIO ...` (a method's model or a checkpoint of the scenario's architecture against Re-train)
    or `rurk audit --arch MODULE:FUNCTION --unlearned M --reference A --forget F` (any model, no scenario).

    A scenario audit writes to its own folder, OUT/SCENARIO/audits/seed-S/NAME/ (:func:`audit_dir`), never into a
    run's seed-S/NAME/, whose files the run's report.md links."""
    free = _free_mode(args)
    if args.arch:
        return _audit_user_free(args) if free else _audit_user_model(args)

    if args.scenario is None:
        raise ConfigError("audit needs a scenario (e.g. `rurk audit fmnist5 --method rurk`) or --arch MODULE:FUNCTION "
                          "with --unlearned, --reference and --forget")
    for flag in ("forget", "normalize", "retain", "test", "original", "calibration"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag} is for auditing your own model: use it with --arch MODULE:FUNCTION")
    if free:
        return _audit_scenario_free(args)
    scenario = _scenario(args)
    spec = _audit_spec(args, scenario)  # every audit setting checked before any training
    robust = _robust_settings(args)
    store = Store(args.out)
    prepared = prepare(scenario, store)
    _check_memory(spec, prepared)  # before any model is trained
    seed = _seeds(args, scenario)[0]
    refs = reference_models(scenario, prepared, seed, store, device=args.device)

    def model_from(path: str | None, fallback):
        if path is None:
            return fallback
        model = load_run_model(store, refs.keys["original"], scenario, prepared, args.device)
        return load_checkpoint(model, path).eval()  # rurk's checkpoints or a plain safetensors of this architecture

    if args.method:
        m, rec, _ = unlearned_model(args.method, scenario, prepared, refs, seed, store)
        if m is None:
            raise ValueError(f"method {args.method!r} produced no model: {cell_failure(rec)}")
        name = args.method
    else:
        m = model_from(args.unlearned, refs.original)
        name = _checkpoint_name(args.unlearned) if args.unlearned else "original"
    a = model_from(args.reference, refs.retrain)
    d = prepared.data
    sets = None
    if robust is not None:
        sets = {"forget": d.forget, **{k: subsample(getattr(d, k), robust.max_samples, seed, k)
                                       for k in ("retain", "test") if len(getattr(d, k))}}
    _audit_and_write(args, spec, m, a, d.forget, audit_dir(args.out, scenario.name, seed, name), seed,
                     name=name, ref_name="retrain" if args.reference is None else _checkpoint_name(args.reference),
                     ref_label="Re-train" if args.reference is None else None,
                     reference=f"retrain@{seed}" if args.reference is None else str(args.reference),
                     scenario=scenario.name, num_classes=prepared.num_classes, robust=robust, robust_sets=sets)


def _check_memory(spec, prepared) -> None:
    """The audit's copies of the scenario's forget set fit this machine's memory
    (:func:`rurk.audit.spec.check_audit_memory`)."""
    f = prepared.data.forget
    n = len(f) if spec.max_forget is None else min(len(f), spec.max_forget)
    check_audit_memory(spec, n, tuple(f.x.shape[1:]))


def audit_dir(out: str | Path, scenario: str, seed: int, name: str) -> Path:
    """Where `rurk audit SCENARIO` writes: OUT/SCENARIO/audits/seed-S/NAME/, beside (never inside) the run's
    seed-S/NAME/ folders. A later standalone audit of the same model replaces the earlier one's files; a run's
    files stay those of the run's own audits."""
    return Path(out) / scenario / "audits" / f"seed-{seed}" / name


def _audit_user_model(args) -> None:
    """`rurk audit --arch`: the user's factory, two plain safetensors files and a forget set; no scenario."""
    if args.scenario is not None:
        raise ConfigError(f"give a scenario ({args.scenario!r}) or --arch, not both")
    needs = [f"--{f}" for f in ("unlearned", "reference", "forget") if not getattr(args, f)]
    if needs:
        raise ConfigError(f"--arch needs {', '.join(needs)} (e.g. --unlearned m.safetensors --reference "
                          "a.safetensors --forget forget.npz)")
    for flag in ("method", "set", "data_dir", "tuned", "seed"):
        if getattr(args, flag, None) not in (None, []):
            raise ConfigError(f"--{flag.replace('_', '-')} needs a scenario; with --arch the audit settings come "
                              "from --probe, --taus, --draws, --bootstrap and --noise-seed")
    if (args.retain or args.test) and not args.robust:
        raise ConfigError("--retain and --test are used by --robust only; add --robust")
    spec = audit_settings(Scenario(), _audit_options(args, RunOptions(), Scenario()))  # an empty scenario's defaults
    robust = _robust_settings(args)
    norm = parse_normalize(args.normalize) if args.normalize else None
    forget = load_samples(args.forget, "--forget")
    check_audit_memory(spec, len(forget), tuple(forget.x.shape[1:]))  # before the models are loaded
    sets = {"forget": forget, **{k: load_samples(getattr(args, k), f"--{k}") for k in ("retain", "test")
                                 if getattr(args, k)}}
    device = pick_device(args.device)

    def load(path: str, what: str):
        model = load_checkpoint(build_user_model(args.arch), path).to(device)
        model = with_normalization(model, forget.x.shape[1:], *norm) if norm else model
        for k, data in sets.items():
            n_out = check_model_fits(model, data, f"the {what} model", f"--{k}")
        return model.eval(), n_out

    (m, n_m), (a, n_a) = load(args.unlearned, "unlearned"), load(args.reference, "reference")
    if n_m != n_a:
        raise ValueError(f"the unlearned model has {n_m} outputs but the reference has {n_a}")
    seed = spec.noise_seed if spec.noise_seed is not None else 0
    name, ref_name = _checkpoint_name(args.unlearned), _checkpoint_name(args.reference)
    if ref_name == name:
        name, ref_name = f"unlearned ({name})", f"reference ({ref_name})"
    _audit_and_write(args, spec, m, a, forget, Path(args.out), seed, name=name, ref_name=ref_name,
                     reference=str(args.reference), scenario=None, num_classes=n_m, robust=robust,
                     robust_sets=sets, arch=args.arch, forget_file=str(args.forget))


def _robust_settings(args):
    """`--robust` (with `--robust-eps`): the robust-accuracy settings, or None."""
    if not args.robust:
        if args.robust_eps:
            raise ConfigError("--robust-eps needs --robust")
        return None

    try:
        return RobustSettings(eps=_eps_list(args.robust_eps)) if args.robust_eps else RobustSettings()
    except ValueError as e:
        raise ConfigError(f"--robust-eps: {e}") from None


def _audit_and_write(args, spec, m, a, forget, out: Path, seed: int, *, name: str, ref_name: str, reference: str,
                     scenario: str | None, num_classes: int, robust=None, robust_sets=None,
                     ref_label: str | None = None, **extra) -> None:
    """Audit m against a on the forget set and write, under ``out``: residual-<probe>.json, .csv, .png and .npz,
    leaks-<probe>.png and, with ``robust``, robust.csv and robust.png (m and a side by side); print the table.
    ``ref_label`` names the reference in plot legends (default ``ref_name``)."""
    res = residual_knowledge(m, a, forget.x, forget.y, seed=seed, index=forget.index, spec=spec)
    stem = f"residual-{res.probe}"
    where = f"{scenario}: " if scenario else ""
    res.write_json(out / f"{stem}.json", scenario=scenario, seed=seed, method=name, reference=reference, **extra)
    res.write_csv(out / f"{stem}.csv")
    plot_residual_curves({name: res}, out / f"{stem}.png", reference=ref_label or ref_name,
                         title=f"{where}{name} vs {ref_name} ({res.probe} probe, c = {res.c}, seed {seed})")
    gallery = write_per_sample(res, spec.make_probe(), forget.x, forget.y, forget.index, m, a, out, k=args.gallery,
                               num_classes=num_classes,
                               title=f"{where}{name} vs {ref_name}: {res.probe} probe, tau = {max(res.taus):.4g}")
    print(f"{'tau':>7s} {'r_paper':>8s} {'n_unb':>5s} {'r_pooled':>8s} {'prev':>6s} {'acc_m':>6s} {'acc_a':>6s} {'disagr':>6s}")
    for t in res.per_tau:
        fmt = lambda v: "   –" if v is None else f"{v:.3f}"
        print(f"{t.tau:7.4f} {fmt(t.r_paper):>8s} {t.n_unbounded:5d} {fmt(t.r_pooled):>8s} {t.prevalence:6.1%} "
              f"{t.acc_m:6.3f} {t.acc_a:6.3f} {fmt(t.disagreement):>6s}")
    print(f"wrote {out}/{stem}.json, .csv, .png, .npz and {gallery.path.name} ({res.timing.seconds:.1f} s, "
          f"{res.timing.forward_passes} forward passes)")
    if robust is not None:
        curves = {n: robust_curves(model, robust_sets, seed, num_classes, robust) for n, model in ((name, m), (ref_name, a))}
        lines = write_robust([(seed, curves)], out, f"{where}{name} vs {ref_name}: robust accuracy under L∞ PGD")
        print("\n".join(line for line in lines if line.startswith(("|", "###"))))
        print(f"wrote {out}/robust.csv, robust.png")


def _eps_list(text: str) -> list[float]:
    """``0,2/255,0.03`` -> [0.0, 0.00784..., 0.03] (``--robust-eps``; ``k/255`` allowed)."""
    def value(item: str) -> float:
        num, _, den = item.partition("/")
        return float(num) / float(den or 1)

    try:
        return [value(t.strip()) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--robust-eps = {text!r}: expected comma-separated numbers, e.g. 0,2/255,4/255") from None




# ---------------------------------------------------------------------------------------------- without Re-train
def _free_mode(args) -> bool:
    """Whether this audit runs without Re-train: `--reference none` (scenario or `--arch`), or `--arch` with
    `--original` and `--calibration` and no `--reference` (`--reference` was checked to be given at most once)."""
    if isinstance(args.reference, list):
        args.reference = args.reference[0] if args.reference else None
    if args.reference == "none":
        return True
    return bool(args.arch and args.reference is None and (args.original or args.calibration))


def _free_write(res, out: Path, m, forget, probe, *, name: str, scenario: str | None, seed: int, args, **meta):
    """The files of an audit without Re-train in ``out``: residual-free-<probe>.json/.csv/.png and the leak gallery
    leaks-free-<probe>.png (forget samples ranked by the model's per-sample accuracy against its class's
    estimate); then the table."""
    from types import SimpleNamespace

    import numpy as np

    from ..audit.gallery import write_gallery
    from ..report.plots import plot_free_curve

    pr = probe.name
    stem = out / f"residual-free-{pr}"
    if not (scenario or "").startswith("fmnist5"):
        res.notes.append("the estimator's error that sets the interval was validated on fmnist5 only "
                         "(rurk.audit.estimate.VALIDATED): on other data the interval's width, and so the verdicts, assume it")
    res.write_json(f"{stem}.json", scenario=scenario, seed=seed, method=name, reference="none (estimate)", **meta)
    with atomic_output(f"{stem}.csv") as tmp:  # never a truncated CSV (a full disk, a killed run)
        res.write_csv(tmp)
    where = f"{scenario}: " if scenario else ""
    plot_free_curve(res, f"{stem}.png", title=f"{where}{name} without Re-train ({pr} probe, c = {res.c}, seed {seed})")
    per_class = {int(k): np.asarray(v["estimate"]) for k, v in res.estimate.classes.items()}
    expected = np.stack([[per_class[int(lab)][t] * res.c for lab in res.labels] for t in range(len(res.taus))])
    shim = SimpleNamespace(k_m=res.k_m, k_a=np.rint(expected).astype(int), taus=res.taus, c=res.c, index=res.index,
                           label=res.labels, probe=pr, seed=seed, block_size=16, craft_on=None)
    x_rows = forget.x[np.searchsorted(forget.index.numpy(), res.index)] if len(forget) else forget.x
    gallery = write_gallery(shim, probe, x_rows, res.labels, m, out / f"leaks-free-{pr}.png", k=args.gallery,
                            num_classes=int(max(per_class) + 1),
                            title=f"{where}{name} without Re-train: k_a = the estimate of Re-train's count, tau = "
                                  f"{max(res.taus):.4g}")
    print(f"{'tau':>7s} {'acc_m':>6s} {'estimate [95%]':>20s} {'r_free [95%]':>22s}  verdict")
    for t in res.per_tau:
        est = f"{t.estimate:.3f} [{t.estimate_lo:.3f}, {t.estimate_hi:.3f}]" if t.estimate_lo is not None else \
            f"{t.estimate:.3f}"
        r = "–" if t.r_free is None else f"{t.r_free:.3f}" + (f" [{t.lo:.3f}, {t.hi:.3f}]" if t.lo is not None and
                                                                 t.hi is not None else "")
        print(f"{t.tau:7.4f} {t.acc_m:6.3f} {est:>20s} {r:>22s}  {t.verdict}" + (f" ({t.reason})" if t.reason else ""))
    for note in res.notes:
        print(f"note: {note}")
    print(f"wrote {stem}.json, .csv, .png and {gallery.path.name}")


def _audit_scenario_free(args) -> None:
    """`rurk audit SCENARIO [--method M | --unlearned F] --reference none`: the model against the estimate made from
    the seed's Original and the split's calibration and retain sets. Re-train is never trained, loaded or read."""
    from ..audit.free import residual_free
    from ..pipeline import reference_model

    scenario = _scenario(args)
    spec = _audit_spec(args, scenario)
    if spec.make_probe().adversarial:
        raise ConfigError(f"--probe = {spec.make_probe().name!r} with --reference none: expected a random probe "
                          "(gaussian, uniform-linf, uniform-l2); the estimate of Re-train is made for random copies")
    store = Store(args.out)
    prepared = prepare(scenario, store)
    _check_memory(spec, prepared)
    d = prepared.data
    if d.calib is None or not len(d.calib):
        raise ConfigError(f"{scenario.name} has no calibration set (forget.calibration = 0): the audit without "
                          "Re-train needs held-out images of the forget classes; set forget.calibration")
    if prepared.class_unlearning:
        raise ConfigError(f"{scenario.name} forgets a whole class: Re-train's accuracy on it is 0, which held-out "
                          "images cannot estimate; audit against Re-train instead")
    seed = _seeds(args, scenario)[0]
    original, _ = reference_model("original", scenario, prepared, seed, store, device=args.device)
    circular = None
    if args.method:
        from ..pipeline import References, reference_keys

        keys = reference_keys(scenario, prepared, seed)
        refs = References(original, None, None, keys, {})  # Re-train's key only names the cell; it is never loaded
        m, rec, _ = unlearned_model(args.method, scenario, prepared, refs, seed, store)
        if m is None:
            raise ValueError(f"method {args.method!r} produced no model: {cell_failure(rec)}")
        calib = ((rec.get("extra") or {}).get("calibration") or {})
        circular = calib.get("tau")
        name = args.method
    elif args.unlearned:
        from ..pipeline import reference_keys

        model = load_run_model(store, reference_keys(scenario, prepared, seed)["original"], scenario, prepared,
                               args.device)
        m = load_checkpoint(model, args.unlearned).eval()
        name = _checkpoint_name(args.unlearned)
    else:
        m, name = original, "original"
    noise = spec.noise_seed if spec.noise_seed is not None else seed
    res = residual_free(m, original, d.forget, d.calib, num_classes=prepared.num_classes, retain=d.retain, spec=spec,
                        seed=noise, circular_tau=circular, cache_dir=prepared.cache_dir)
    _free_write(res, audit_dir(args.out, scenario.name, seed, name), m, d.forget, spec.make_probe(), name=name,
                scenario=scenario.name, seed=seed, args=args)


def _audit_user_free(args) -> None:
    """`rurk audit --arch F --unlearned M --original O --forget F --calibration C [--retain R]`: your model against
    the estimate made from your Original and held-out images; no Re-train anywhere."""
    from ..audit.estimate import check_images
    from ..audit.free import residual_free

    if args.scenario is not None:
        raise ConfigError(f"give a scenario ({args.scenario!r}) or --arch, not both")
    needs = [f"--{f}" for f in ("unlearned", "original", "forget", "calibration") if not getattr(args, f)]
    if needs:
        raise ConfigError(f"--arch without Re-train needs {', '.join(needs)} (e.g. --unlearned m.safetensors "
                          "--original o.safetensors --forget forget.npz --calibration held-out.npz)")
    for flag in ("method", "set", "data_dir", "tuned", "seed"):
        if getattr(args, flag, None) not in (None, []):
            raise ConfigError(f"--{flag.replace('_', '-')} needs a scenario; with --arch the audit settings come "
                              "from --probe, --taus, --draws, --bootstrap and --noise-seed")
    if args.test or args.robust:
        raise ConfigError("--robust and --test are for the audit against a reference (give --reference)")
    spec = audit_settings(Scenario(), _audit_options(args, RunOptions(), Scenario()))
    if spec.make_probe().adversarial:
        raise ConfigError(f"--probe = {spec.make_probe().name!r} without Re-train: expected a random probe "
                          "(gaussian, uniform-linf, uniform-l2); the estimate of Re-train is made for random copies")
    norm = parse_normalize(args.normalize) if args.normalize else None
    forget = load_samples(args.forget, "--forget")
    check_audit_memory(spec, len(forget), tuple(forget.x.shape[1:]))
    calib = load_samples(args.calibration, "--calibration")
    retain = load_samples(args.retain, "--retain") if args.retain else None
    check_images(forget, calib)
    sets = {"forget": forget, "calibration": calib, **({"retain": retain} if retain is not None else {})}
    device = pick_device(args.device)

    def load(path: str, what: str):
        model = load_checkpoint(build_user_model(args.arch), path).to(device)
        model = with_normalization(model, forget.x.shape[1:], *norm) if norm else model
        for k, data in sets.items():
            n_out = check_model_fits(model, data, f"the {what} model", f"--{k}")
        return model.eval(), n_out

    (m, n_m), (o, n_o) = load(args.unlearned, "unlearned"), load(args.original, "original")
    if n_m != n_o:
        raise ValueError(f"the unlearned model has {n_m} outputs but the original has {n_o}")
    seed = spec.noise_seed if spec.noise_seed is not None else 0
    res = residual_free(m, o, forget, calib, num_classes=n_m, retain=retain, spec=spec, seed=seed)
    _free_write(res, Path(args.out), m, forget, spec.make_probe(), name=_checkpoint_name(args.unlearned),
                scenario=None, seed=seed, args=args, arch=args.arch, forget_file=str(args.forget),
                original_file=str(args.original), calibration_file=str(args.calibration),
                retain_file=None if retain is None else str(args.retain))
