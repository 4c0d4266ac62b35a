"""Every flag honoured or refused before any work (issue 20, items 4, 8, 9, 11): each bad input ends in one line,
`rurk: error: <what> = <value>: expected <…>`, exit code 2, and no model was trained before it."""

import json
import subprocess
import sys

import pytest
import torch

import rurk.pipeline as pipeline
from rurk.run import study as tune
from rurk.cli import build_parser, main
from rurk.cli.checks import _audit_spec, _check_args, _scenario
from rurk.cli.parser import DEFAULT_TUNING_SEED
from rurk.config import MAX_BOOTSTRAP, ConfigError, load_scenario, parse_overrides
from rurk.threads import available_cpus

TINY = ["--set", "train.epochs=2", "--quiet", "--device", "cpu"]


@pytest.fixture
def no_training(monkeypatch):
    """Training anything fails the test: a refusal must come before Original is trained."""
    def fit(*args, **kwargs):
        raise AssertionError("a model was trained before the input was refused")

    monkeypatch.setattr(pipeline, "fit", fit)


def refused(capsys, argv, *needles) -> str:
    """Run ``argv``; it must exit 2 with exactly one line on stderr, `rurk: error: ...`, holding every needle."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rurk: error: "), err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- item 4: flags
def test_audit_refuses_a_method_with_an_unlearned_file(tmp_path, capsys, no_training):
    refused(capsys, ["audit", "digits5", "--method", "gd", "--unlearned", "/does/not/exist.safetensors",
                     "--out", str(tmp_path), *TINY],
            "--method = 'gd' with --unlearned = '/does/not/exist.safetensors': expected one of them")
    refused(capsys, ["audit", "digits5", "--tuned", "none", "--out", str(tmp_path), *TINY],
            "--tuned = 'none' without --method")
    assert not (tmp_path / "models").exists()


def test_seed_with_seeds_is_refused(tmp_path, capsys, no_training):
    for cmd in ("run", "plan"):
        refused(capsys, [cmd, "digits5", "--seed", "5", "--seeds", "131", "--out", str(tmp_path), *TINY],
                "--seed = 5 with --seeds = '131': expected one of them")
    assert not (tmp_path / "models").exists()


def test_robust_with_no_attacks_is_refused(tmp_path, capsys, no_training):
    refused(capsys, ["run", "digits5", "--robust", "--no-attacks", "--out", str(tmp_path), *TINY],
            "--robust with --no-attacks")


def test_tune_help_states_the_real_seed_default_and_takes_methods_or_method():
    assert DEFAULT_TUNING_SEED == tune.DEFAULT_TUNING_SEED
    parser = build_parser()
    tune_parser = parser._subparsers._group_actions[0].choices["tune"]
    seed_help = next(a.help for a in tune_parser._actions if a.dest == "seed")
    assert f"[default: {tune.DEFAULT_TUNING_SEED}]" in seed_help and "first run seed" not in seed_help
    for flag in ("--methods", "--method"):  # one vocabulary (--methods), the old spelling kept
        assert parser.parse_args(["tune", "digits5", flag, "gd,ga"]).methods == "gd,ga"


def test_tune_refuses_a_reported_seed_before_work(tmp_path, capsys, no_training):
    refused(capsys, ["tune", "digits5", "--methods", "gd", "--seed", "131", "--out", str(tmp_path), *TINY],
            "--seed = 131")
    refused(capsys, ["tune", "digits5", "--methods", "", "--out", str(tmp_path), *TINY], "--methods = ''")


def _spec(argv):
    args = build_parser().parse_args(argv)
    _check_args(args)
    return _audit_spec(args, _scenario(args))


def test_scenario_toml_sets_the_audit_noise_seed_and_probe_params(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('name = "mine"\n[data]\ndataset = "digits"\nclasses = 5\ntest_fraction = 0.5\n'
                    '[train]\nepochs = 2\n[audit]\nprobe = "pgd"\nprobe_params = {steps = 3}\nnoise_seed = 7\n')
    spec = _spec(["audit", str(toml)])
    assert (spec.probe, spec.probe_params, spec.noise_seed) == ("pgd", {"steps": 3}, 7)
    spec = _spec(["audit", str(toml), "--noise-seed", "9", "--probe-set", "alpha=0.01"])
    assert (spec.noise_seed, spec.probe_params) == (9, {"steps": 3, "alpha": 0.01})  # flags win, params add up
    spec = _spec(["audit", str(toml), "--probe", "gaussian"])  # pgd's parameters do not follow to another probe
    assert (spec.probe, spec.probe_params, spec.noise_seed) == ("gaussian", {}, 7)
    for bad, needle in (("audit.noise_seed=-1", "audit.noise_seed = -1: expected an integer >= 0"),
                        (f"audit.bootstrap={MAX_BOOTSTRAP + 1}", f"audit.bootstrap = {MAX_BOOTSTRAP + 1}: expected")):
        with pytest.raises(ConfigError, match=needle):
            load_scenario(toml, parse_overrides([bad]))


# ---------------------------------------------------------------------------------------------- item 8: checks
def test_missing_unlearned_file_is_refused_before_training(tmp_path, capsys, no_training):
    fresh = tmp_path / "fresh"
    refused(capsys, ["audit", "digits5", "--unlearned", "missing.safetensors", "--out", str(fresh), *TINY],
            "--unlearned = 'missing.safetensors': expected a safetensors file, but no such file")
    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00")
    refused(capsys, ["audit", "digits5", "--reference", str(tmp_path / "short.safetensors"), "--out", str(fresh),
                     *TINY], "--reference = ", "not a safetensors file")
    assert not (fresh / "models").exists()


@pytest.mark.parametrize("argv, line", [
    (["run", "digits5", "--noise-seed", "-1"], "rurk: error: --noise-seed = -1: expected an integer >= 0"),
    (["audit", "digits5", "--noise-seed", "-1"], "rurk: error: --noise-seed = -1: expected an integer >= 0"),
    (["run", "digits5", "--seeds=-5"], "rurk: error: --seeds = '-5': expected comma-separated integers >= 0"),
    (["train", "digits5", "--seed", "-3"], "rurk: error: --seed = -3: expected an integer >= 0"),
    (["run", "digits5", "--bootstrap", "100000000"],
     f"rurk: error: --bootstrap = 100000000: expected an integer from 0 to {MAX_BOOTSTRAP}"),
    (["audit", "digits5", "--draws", "0"], "rurk: error: --draws = 0: expected an integer >= 1"),
    (["run", "digits5", "--methods", ""], "rurk: error: --methods = '': expected comma-separated methods"),
    (["run", "digits5", "--seeds", ""], "rurk: error: --seeds = '': expected comma-separated integers"),
    (["run", "digits5", "--taus", ""], "rurk: error: --taus = '': expected comma-separated numbers >= 0"),
    (["audit", "digits5", "--taus", "0,nan"], "rurk: error: --taus = '0,nan': expected comma-separated numbers"),
    (["run", "digits5", "--seeds", "131,,7"], "rurk: error: --seeds = '131,,7': expected"),
    (["plan", "digits5", "--workers", "0,2"], "rurk: error: --workers = '0,2': expected comma-separated integers >= 1"),
    (["train", "digits5", "--set", "train.epochs=0"], "rurk: error: train.epochs = 0: expected an integer >= 1"),
    (["run", "digits5", "--set", "retrain.epochs=0"], "rurk: error: retrain.epochs = 0: expected an integer >= 1"),
    (["run", "digits5", "--device", "bogus"], "rurk: error: --device = 'bogus': expected auto, cpu, cuda"),
    (["train", "digits5", "--device", "meta"], "rurk: error: --device = 'meta': expected auto, cpu, cuda"),
])
def test_bad_values_are_one_line_before_training(tmp_path, capsys, no_training, argv, line):
    got = refused(capsys, [*argv, "--out", str(tmp_path / "store"), "--quiet"])
    assert got.startswith(line), got
    assert not (tmp_path / "store" / "models").exists()


def test_cuda_on_a_cpu_only_torch_is_one_line(tmp_path, capsys, no_training, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch, also on a GPU machine
    for cmd in ("train", "run", "audit", "demo"):
        argv = [cmd] + ([] if cmd == "demo" else ["digits5"])
        refused(capsys, [*argv, "--device", "cuda", "--out", str(tmp_path), "--quiet"],
                "--device = 'cuda': expected auto or cpu: this torch", "sees no CUDA device")


def test_out_that_is_a_file_is_refused(tmp_path, capsys, no_training):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for argv in (["run", "digits5"], ["train", "digits5"], ["audit", "digits5"], ["demo"], ["tune", "digits5",
                 "--methods", "gd"],
                 ["audit", "--arch", "user_nets:make_net", "--unlearned", "m.safetensors", "--reference",
                  "a.safetensors", "--forget", "f.npz"]):
        refused(capsys, [*argv, "--out", str(afile), "--quiet"], f"--out = '{afile}': expected a directory (it is a file)")
    refused(capsys, ["run", "digits5", "--out", str(afile / "sub"), "--quiet"], f"({afile} is a file)")


def test_damaged_store_database_is_one_line_naming_it(tmp_path, capsys, no_training):
    (tmp_path / "rurk.sqlite").write_bytes(b"this is not an SQLite database" * 40)
    for argv in (["run", "digits5"], ["train", "digits5"], ["audit", "digits5"]):
        refused(capsys, [*argv, "--out", str(tmp_path), *TINY],
                f"store database = '{tmp_path / 'rurk.sqlite'}': expected an SQLite database", "move it away")


def test_methods_into_a_closed_pipe_is_quiet():
    """`rurk methods | head`: the reader is gone before rurk writes; no traceback, the SIGPIPE exit status."""
    p = subprocess.Popen([sys.executable, "-m", "rurk.cli", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err
    # and the usual case: the reader takes a line, then leaves
    p = subprocess.run(f"{sys.executable} -m rurk.cli methods | head -n 1", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert p.stdout.count("\n") == 1 and p.stderr == "", p.stderr


def test_data_dir_without_the_data_is_refused(tmp_path, capsys, no_training):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, ["train", "fmnist5", "--data-dir", str(empty), "--out", str(tmp_path / "s"), "--quiet"],
            f"--data-dir (data.data_dir) = '{empty}': expected the four Fashion-MNIST files")
    refused(capsys, ["train", "digits5", "--data-dir", str(empty), "--out", str(tmp_path / "s"), "--quiet"],
            f"--data-dir = '{empty}': expected none: digits5's data (digits) is bundled")
    assert not (tmp_path / "s" / "models").exists()


def test_threads_above_the_cpus_are_capped_with_one_warning(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["scenarios", "--threads", "999"]) == 0
        cpus = available_cpus()
        assert torch.get_num_threads() == cpus
        warnings = [line for line in capsys.readouterr().err.splitlines() if line]
        assert warnings == [f"rurk: warning: --threads = 999: more than the {cpus} CPU{'s' * (cpus > 1)} this "
                            f"process may use; using {cpus}"]
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny `rurk run` (digits5, gd, one seed): its store, its summary and its audit files."""
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "digits5", "--methods", "gd", "--seeds", "131", "--taus", "0,0.1", "--draws", "2",
                 "--bootstrap", "10", "--no-relearn", "--no-attacks", "--out", str(out),
                 "--set", "methods.gd.epochs=1", *TINY]) == 0
    return out


def test_readme_refuses_unknown_rows_and_columns(run_dir, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- BEGIN rurk:b -->\nold\n<!-- END rurk:b -->\n")
    summary = run_dir / "digits5"
    common = ["readme", str(summary), "--block", "b", "--readme", str(readme)]
    refused(capsys, [*common, "--rows", "nosuch,gd"], "--rows = 'nosuch,gd': expected methods of", "unknown: nosuch;")
    refused(capsys, [*common, "--columns", "Zzz"], "--columns = 'Zzz': expected prefixes", "unknown: Zzz;")
    refused(capsys, [*common, "--columns", "wall"], "unknown: wall;")  # the block never shows wall times
    refused(capsys, [*common, "--rows", ""], "--rows = '': expected")
    assert readme.read_text() == "<!-- BEGIN rurk:b -->\nold\n<!-- END rurk:b -->\n"  # nothing written
    assert main([*common, "--rows", "retrain,gd", "--columns", "Retain,r_pooled"]) == 0
    block = readme.read_text()
    assert "| gd |" in block and "| original |" not in block and "Retain" in block and "Test" not in block


# ---------------------------------------------------------------------------------------------- item 9
def test_standalone_audit_writes_its_own_folder_never_the_runs(run_dir, capsys):
    seed_dir = run_dir / "digits5" / "seed-131" / "gd"
    files = sorted(p.name for p in seed_dir.iterdir() if p.is_file())
    assert {"residual-gaussian.csv", "residual-gaussian.npz", "leaks-gaussian.png"} <= set(files)
    before = {name: (seed_dir / name).read_bytes() for name in files}
    assert main(["audit", "digits5", "--method", "gd", "--taus", "0,0.1", "--draws", "5", "--bootstrap", "10",
                 "--out", str(run_dir), "--set", "methods.gd.epochs=1", *TINY]) == 0
    assert {name: (seed_dir / name).read_bytes() for name in files} == before  # the run's files untouched
    own = run_dir / "digits5" / "audits" / "seed-131" / "gd"
    assert json.loads((own / "residual-gaussian.json").read_text())["c"] == 5
    assert {"residual-gaussian.csv", "residual-gaussian.png", "residual-gaussian.npz",
            "leaks-gaussian.png"} <= {p.name for p in own.iterdir()}
    assert str(own) in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- item 11
def test_version_names_rurk_and_torch(capsys):
    from rurk import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"rurk {__version__} (torch {torch.__version__}")


def test_version_help_and_usage_errors_never_import_torch():
    """`rurk --version`, `--help` and a usage error answer without loading torch (4.8 s of CPU, 31 s at load 8)."""
    import subprocess
    import sys

    for argv, rc in ((["--version"], 0), (["run", "--help"], 0), (["run"], 2), (["bogus"], 2)):
        code = (f"import sys\nfrom rurk.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
                "    assert 'torch' not in sys.modules, 'torch was imported'\n    raise")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == rc, (argv, out.stderr)
        assert "torch was imported" not in out.stderr


def test_the_parsers_copy_of_max_bootstrap_is_the_configs():
    from rurk.cli import parser

    assert parser.MAX_BOOTSTRAP == MAX_BOOTSTRAP


def test_demo_is_fmnist5_on_three_seeds_with_its_own_copies_and_tau_grid(tmp_path, monkeypatch):
    import rurk.cli.commands as cli
    from rurk.cli.commands import DEMO_DRAWS, DEMO_TAUS

    seen = {}

    class Stop(Exception):
        pass

    def run_experiment(scenario, opts, out, **kw):
        seen.update(scenario=scenario.name, opts=opts, executor=kw.get("executor"))
        raise Stop

    monkeypatch.setattr(cli, "run_experiment", run_experiment)
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path), "--quiet"])
    opts = seen["opts"]
    assert seen["scenario"] == "fmnist5" and opts.seeds == [131, 42, 7] and not opts.attacks
    assert opts.draws == DEMO_DRAWS == 32 and opts.taus == DEMO_TAUS
    # exactly the three τ every table and claim reads
    assert DEMO_TAUS == [0.0, 0.03, max(load_scenario("fmnist5").audit.taus)]
