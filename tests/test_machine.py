"""The machine fingerprint (rurk.machine) and the report's record of it (rurk.report.summary.machine_of)."""

from __future__ import annotations

from types import SimpleNamespace

from rurk import machine
from rurk.report.summary import machine_of

ZEN1 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
stepping	: 2
flags		: fpu sse4_1 sse4_2 avx avx2 fma f16c

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
"""
ZEN4 = ZEN1.replace("cpu family	: 23", "cpu family	: 25").replace("model		: 1", "model		: 17") \
           .replace("fma f16c", "fma f16c avx512f avx512bw")


def test_cpu_reads_identity_and_simd_flags_of_the_first_processor(tmp_path):
    (tmp_path / "zen1").write_text(ZEN1)
    c = machine.cpu(str(tmp_path / "zen1"))
    assert c["name"] == "AMD EPYC" and (c["vendor"], c["family"], c["model"], c["stepping"]) == \
        ("AuthenticAMD", "23", "1", "2")
    assert c["simd"] == ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"]


def test_one_model_name_two_generations_two_fingerprints(tmp_path):
    """The README check's failure: 'AMD EPYC' on Zen 1 and on Zen 4 must not look like one machine."""
    (tmp_path / "a").write_text(ZEN1)
    (tmp_path / "b").write_text(ZEN4)
    a, b = machine.cpu(str(tmp_path / "a")), machine.cpu(str(tmp_path / "b"))
    assert a["name"] == b["name"]
    fa, fb = {**machine.machine(), "cpu": a}, {**machine.machine(), "cpu": b}
    assert machine.digest(fa) != machine.digest(fb)
    assert machine.digest(fa) == machine.digest(dict(fa))  # a content hash: same content, same digest
    assert "family 23 model 1" in machine.short(fa) and "family 25 model 17" in machine.short(fb)


def test_fingerprint_holds_what_changes_the_floats():
    fp = machine.fingerprint([1], "cpu")
    assert {"cpu", "torch", "numpy", "blas", "capability", "config", "env", "threads", "device"} <= set(fp)
    assert machine.digest(fp) != machine.digest(machine.fingerprint([2], "cpu"))  # the thread count counts
    assert machine.digest(fp) != machine.digest({**fp, "env": {"ATEN_CPU_CAPABILITY": "avx2"}})


def _results(*machines):
    return [SimpleNamespace(spent=[{"threads": 1, "machine": m} if m else {"threads": 1} for m in machines])]


def test_report_fingerprint_is_known_only_when_every_cell_names_its_machine():
    here = machine.digest(machine.machine())
    same = machine_of(_results(here, here), "cpu")
    assert same["digest"] and same["fingerprint"]["cpu"] == machine.machine()["cpu"]
    assert same["digest"] == machine_of(_results(here), "cpu")["digest"]
    assert same["digest"] != machine_of(_results(here), "cuda")["digest"]
    old = machine_of(_results(here, None), "cpu")  # a record of an older rurk: unknown machine
    assert old["digest"] is None and "unknown" in old["short"] and "fingerprint" not in old
    other = machine_of(_results("0123456789abcdef"), "cpu")  # cells computed elsewhere: not this machine's line
    assert other["digest"] and other["digest"] != same["digest"] and "fingerprint" not in other
