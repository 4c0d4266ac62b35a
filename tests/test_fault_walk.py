"""The fault walk: every bad input ends in one line, `rurk: error: <what> = <value>: expected <…>` (exit code 2),
before any work (data loaded, a model trained), or is healed with nothing lost; a failing disk never leaves a
truncated file or a traceback."""

import builtins
import errno
import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import user_nets
from rurk.audit import estimate
from rurk.cli import main
from rurk.config import ConfigError, load_scenario, parse_overrides
from rurk.data.tensordata import TensorData
from rurk.store import DamagedRecord, Store, atomic_write, load_checkpoint
from test_cli_checks import TINY, no_training, refused  # noqa: F401 (a fixture)


def _toml(path: Path, body: str = "", name: str = "mine") -> Path:
    path.write_text(f'name = "{name}"\n[data]\ndataset = "digits"\nclasses = 5\ntest_fraction = 0.5\n'
                    f'[train]\nepochs = 2\n{body}')
    return path


# ---------------------------------------------------------------------------------------------- 1: method tables
def test_a_typo_in_a_method_table_is_refused_naming_it(tmp_path, capsys, no_training):
    out = ["--out", str(tmp_path / "o"), *TINY]
    refused(capsys, ["run", "digits5", "--set", "methods.neggradplus.lr=0.1", *out],
            "methods.neggradplus = {'lr': 0.1}: expected a table named after a method", "did you mean neggrad_plus?",
            "known: bad_teacher,")
    refused(capsys, ["run", str(_toml(tmp_path / "s.toml", "[methods.nosuch]\nlr = 0.1\n")), *out],
            "methods.nosuch = {'lr': 0.1}: expected a table named after a method")
    tuned = tmp_path / "t.toml"
    tuned.write_text("[methods.gdd]\nlr = 0.1\n")
    refused(capsys, ["run", "digits5", "--tuned", str(tuned), *out], f"tuned file {tuned}: methods.gdd = ",
            "did you mean gd?")
    # an unknown key in a known method's table, also of a method this run does not run
    refused(capsys, ["run", "digits5", "--methods", "gd", "--set", "methods.rurk.lambdaf=0.1", *out],
            "unknown setting 'methods.rurk.lambdaf'")
    refused(capsys, ["run", "digits5", "--methods", "gd", "--set", "methods.gd.lrr=0.1", *out],
            "unknown setting 'methods.gd.lrr'")
    assert not (tmp_path / "o" / "models").exists()


# ---------------------------------------------------------------------------------------------- 2: damaged caches
def _sets():
    g = torch.Generator().manual_seed(0)
    make = lambda n: TensorData(torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 2,  # noqa: E731
                                torch.arange(n))
    return make(40), make(10), make(10)


@pytest.mark.parametrize("damage", ["{garbage", "[1, 2]", "SETS_WITHOUT_SHIFT", "\xff\xfe"])
def test_a_damaged_difficulty_shift_file_is_fitted_again_and_rewritten(tmp_path, capsys, damage):
    retain, forget, calib = _sets()
    estimate._SHIFTS.clear()
    shift = estimate.difficulty_shift(retain, forget, calib, cache_dir=tmp_path)
    (path,) = tmp_path.glob("difficulty-shift-*.json")
    good = path.read_text()
    key = json.loads(good)["sets"]
    path.write_bytes((json.dumps({"sets": key}) if damage == "SETS_WITHOUT_SHIFT" else damage).encode("latin-1"))
    estimate._SHIFTS.clear()  # a later process: only the file
    capsys.readouterr()
    assert estimate.difficulty_shift(retain, forget, calib, cache_dir=tmp_path) == shift
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"rurk: warning: {path}: damaged"), warning
    assert path.read_text() == good  # healed: written again
    estimate._SHIFTS.clear()


def test_a_store_record_that_is_not_json_is_an_error_naming_it_and_the_file(tmp_path):
    store = Store(tmp_path)
    store.put("eval", "abc123", scenario="s", seed=1, config={"a": 1}, metrics={"retain_acc": 0.9})
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE records SET metrics = '{garbage' WHERE kind = 'eval'")
    for read in (lambda: store.get("eval", "abc123"), lambda: store.records("eval")):
        with pytest.raises(DamagedRecord) as e:
            read()
        msg = str(e.value)
        assert "kind 'eval', key 'abc123'" in msg and str(store.db_path) in msg and "its metrics = '{garbage'" in msg
        assert "\n" not in msg and isinstance(e.value, ValueError)  # the CLI's one line, exit code 2


# ---------------------------------------------------------------------------------------------- 3: the file system
def test_store_folders_that_are_files_or_read_only_are_refused_before_work(tmp_path, capsys, no_training,
                                                                        monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "locks").write_text("not a folder")
    refused(capsys, ["run", "digits5", "--out", str(out), *TINY],
            f"store folder locks/ = '{out / 'locks'}': expected a directory (it is a file")
    (out / "locks").unlink()
    # a read-only report folder (root writes anywhere, so the system's answer is simulated): it was found only
    # when the report was written, after all the work
    (out / "digits5").mkdir()
    real = os.access

    def read_only(folder):
        return lambda p, mode, **kw: False if Path(p) == folder else real(p, mode, **kw)

    monkeypatch.setattr(os, "access", read_only(out / "digits5"))
    refused(capsys, ["run", "digits5", "--out", str(out), *TINY],
            f"the scenario's report folder = '{out / 'digits5'}': expected a directory you may write to")
    monkeypatch.setattr(os, "access", read_only(out / "models"))
    (out / "models").mkdir()
    refused(capsys, ["train", "digits5", "--out", str(out), *TINY], "store folder models/ = ", "read-only")
    assert not list((out / "models").iterdir())


def test_a_scenario_path_that_is_a_directory_is_one_line(tmp_path, capsys, no_training):
    for d in (tmp_path / "somedir", tmp_path / "looks.toml"):
        d.mkdir()
        refused(capsys, ["run", str(d), "--out", str(tmp_path / "o"), *TINY],
                f"scenario = '{d}': expected a shipped scenario's name or a .toml file (it is a directory)")


def test_absurd_epochs_are_refused_before_training(tmp_path, capsys, no_training):
    refused(capsys, ["run", "digits5", "--out", str(tmp_path), "--quiet", "--set", "train.epochs=99999999999"],
            "optim.epochs = 99999999999: expected an integer from 0 to 100000")
    refused(capsys, ["run", "digits5", "--out", str(tmp_path), *TINY, "--set", "methods.gd.epochs=100001"],
            "epochs = 100001")


def _user_files(root: Path, dtype=None) -> dict:
    torch.manual_seed(0)
    paths = {}
    for name in ("m", "a"):
        state = user_nets.make_net().state_dict()
        if dtype is not None and name == "m":
            state = {k: (v * 10).to(dtype) for k, v in state.items()}
        paths[name] = root / f"{name}.safetensors"
        save_file(state, str(paths[name]))
    rng = np.random.default_rng(0)
    np.savez(root / "forget.npz", x=rng.random((12, 1, 8, 8), dtype=np.float32), y=np.arange(12) % 5)
    paths["forget"] = root / "forget.npz"
    return paths


def _arch(paths: dict, out: Path, draws: int = 4) -> list[str]:
    return ["audit", "--arch", "user_nets:make_net", "--unlearned", str(paths["m"]), "--reference", str(paths["a"]),
            "--forget", str(paths["forget"]), "--out", str(out), "--draws", str(draws), "--taus", "0,0.1",
            "--bootstrap", "10", "--gallery", "2", "--quiet", "--device", "cpu"]


def _failing_disk(monkeypatch, under: Path) -> None:
    """Every file opened for writing under ``under`` takes half of the first write and then fails: the disk is full
    (a failed write() names no file)."""
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __getattr__(self, name):
            return getattr(self._f, name)

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(under.resolve()):
            return Full(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_truncated_file(tmp_path, capsys, monkeypatch):
    paths = _user_files(tmp_path)
    out = tmp_path / "audit"
    assert main(_arch(paths, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"residual-gaussian.json", "residual-gaussian.csv", "residual-gaussian.npz"} <= set(before)
    _failing_disk(monkeypatch, out)
    line = refused(capsys, _arch(paths, out, draws=6),  # other numbers: a half-written file would differ
                   f"{out / 'residual-gaussian.json'}: No space left on device (ENOSPC)")
    monkeypatch.undo()
    assert "Traceback" not in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the complete files of the first audit, only


def test_a_failed_atomic_write_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    atomic_write(path, b"complete\n")
    _failing_disk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as e:
        atomic_write(path, b"new contents that do not fit\n")
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == b"complete\n" and [p.name for p in tmp_path.iterdir()] == ["x.csv"]


# ---------------------------------------------------------------------------------------------- 4: dtypes
def test_integer_weights_for_a_float_model_are_refused_naming_file_tensor_and_dtypes(tmp_path, capsys):
    paths = _user_files(tmp_path, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"wrong dtypes: 1\.weight: file int64 vs model float32"):
        load_checkpoint(user_nets.make_net(), paths["m"])
    refused(capsys, _arch(paths, tmp_path / "out"), f"{paths['m']} does not fit the model: wrong dtypes:",
            "1.weight: file int64 vs model float32")
    assert not (tmp_path / "out" / "residual-gaussian.json").exists()
    # a float file of another precision still loads (cast, as safetensors and torch do)
    save_file({k: v.double() for k, v in user_nets.make_net().state_dict().items()}, str(tmp_path / "f64.safetensors"))
    load_checkpoint(user_nets.make_net(), tmp_path / "f64.safetensors")


# ---------------------------------------------------------------------------------------------- 5, 6: values
@pytest.mark.parametrize("setting, needle", [
    ("methods.gd.lr=0", "methods.gd: lr = 0.0: expected a finite number > 0"),
    ("methods.gd.epochs=0", "methods.gd: epochs = 0: expected an integer >= 1"),
    ("methods.gd.lr=nan", "methods.gd: lr = nan: expected a finite number > 0"),
    ("train.lr=1e400", "optim.lr = inf: expected a finite number >= 0"),
    ("train.lr=0", "train.lr = 0.0: expected a finite number > 0"),
    ("retrain.lr=0", "retrain.lr = 0.0: expected a finite number > 0"),
    ("relearn.lr=inf", "relearn.lr = inf: expected a finite number >= 0"),
    ("audit.draws=10000000", "audit.draws = 10000000: expected an integer from 1 to 100000"),
])
def test_settings_that_do_nothing_or_cannot_fit_are_refused_before_training(tmp_path, capsys, no_training, setting,
                                                                            needle):
    refused(capsys, ["run", "digits5", "--methods", "gd", "--out", str(tmp_path), *TINY, "--set", setting], needle)
    assert not (tmp_path / "models").exists()


def test_draws_beyond_the_memory_are_refused_with_the_size_before_training(tmp_path, capsys, no_training,
                                                                           monkeypatch):
    import rurk.audit.spec as audit

    refused(capsys, ["run", "digits5", "--draws", "10000000", "--out", str(tmp_path), *TINY],
            "--draws = 10000000: expected an integer from 1 to 100000")
    monkeypatch.setattr(audit, "machine_memory", lambda: 10**9)  # a 1 GB machine
    for argv in (["run", "digits5"], ["audit", "digits5"], ["audit", "digits5", "--reference", "none"]):
        refused(capsys, [*argv, "--draws", "100000", "--out", str(tmp_path), *TINY],
                "--draws = 100000: expected fewer copies: the audit of 35 forget samples of shape 1x8x8",
                "this machine has 1.0 GB")
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------------------------------------- 7, 8: names, TOML
@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "/abs"])
def test_a_scenario_name_that_is_not_a_plain_file_name_is_refused(tmp_path, capsys, no_training, name):
    refused(capsys, ["run", str(_toml(tmp_path / "s.toml", name=name)), "--out", str(tmp_path / "o"), *TINY],
            f"name = {name!r}: expected a plain file-name component")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "o" / "models").exists()


def test_toml_syntax_errors_name_the_file_and_the_line(tmp_path, capsys, no_training):
    bad = _toml(tmp_path / "bad.toml", "[methods.gd]\nlr = = 0.1\n")
    refused(capsys, ["run", str(bad), "--out", str(tmp_path / "o"), *TINY],
            f"scenario = '{bad}': expected a TOML file, but at line 9, column")
    tuned = tmp_path / "tuned.toml"
    tuned.write_text("[methods.gd]\nlr = 0.1\nepochs = \n")
    refused(capsys, ["run", "digits5", "--tuned", str(tuned), "--out", str(tmp_path / "o"), *TINY],
            f"tuned file = '{tuned}': expected a TOML file, but at line 3, column")


# ---------------------------------------------------------------------------------------------- 9: forget file
def test_a_forget_file_with_calibrated_methods_is_refused_before_work(tmp_path, capsys, no_training):
    (tmp_path / "forget.json").write_text("[2, 11, 12]")
    toml = _toml(tmp_path / "s.toml", f'[forget]\nkind = "file"\nfile = "{tmp_path / "forget.json"}"\n')
    for argv, needle in ((["run", str(toml), "--methods", "gd,rurk"], "methods.rurk.calibrate = true: expected false "
                          "with forget.kind = 'file'"),
                         (["unlearn", str(toml), "--method", "rurk"], "methods.rurk.calibrate = true"),
                         (["run", str(toml), "--methods", "ga", "--set", "methods.ga.calibrate=true"],
                          "methods.ga.calibrate = true")):
        refused(capsys, [*argv, "--out", str(tmp_path / "o"), *TINY], needle, "calibrate=false")
    assert not (tmp_path / "o").exists()
    from rurk.run.experiment import RunOptions, method_names

    scenario = load_scenario(toml)  # accepted without calibrated stopping
    assert method_names(scenario, RunOptions(methods=["gd", "rurk:calibrate=false", "rurk:preset=paper"]))


def test_the_documented_forget_file_scenario_loads():
    doc = (Path(__file__).parents[1] / "docs" / "science" / "evaluation.md").read_text()
    section = doc.split("### §4.4 Compare methods on your own forget set")[1].split("\n## ")[0]
    toml = section.split("```toml\n")[1].split("```")[0]
    import tomllib

    from rurk.config import Scenario, from_dict
    from rurk.run.experiment import RunOptions, method_names

    scenario = from_dict(Scenario, tomllib.loads(toml))
    assert scenario.forget.kind == "file" and scenario.forget.file == "forget.json"
    assert "rurk" in method_names(scenario, RunOptions())  # every method, RURK uncalibrated


# ---------------------------------------------------------------------------------------------- 10: progress
def test_reference_training_is_announced_with_worker_seed_model_and_seconds(tmp_path, capsys, monkeypatch):
    from rurk.run import pool_exec
    from rurk.audit.spec import audit_spec
    from rurk.run.experiment import RunOptions

    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2"]))
    threads = torch.get_num_threads()
    monkeypatch.setenv("RURK_PROGRESS", "0")
    args = (scenario, RunOptions(device="cpu", relearn=False, attacks=False), str(tmp_path), [131], [],
            audit_spec(scenario.audit, taus=[0.0], draws=2, bootstrap=0), str(tmp_path / "digits5"), threads)
    try:
        pool_exec._worker(0, *args)  # what each process of `rurk run --jobs K` / `rurk demo` runs
    finally:
        torch.set_num_threads(threads)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "training" in ln or "trained" in ln]
    assert [ln.split(" in ")[0] for ln in lines] == [
        "[worker 0]  seed 131 original: training", "[worker 0]  seed 131 original: trained",
        "[worker 0]  seed 131 retrain: training", "[worker 0]  seed 131 retrain: trained"], lines
    assert all(ln.endswith(" s") for ln in lines[1::2])
    pool_exec._worker(1, *args)  # the models are in the store now: nothing is announced
    torch.set_num_threads(threads)
    assert "training" not in capsys.readouterr().out
