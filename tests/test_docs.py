"""The repository explains itself: every specification citation in the code resolves to a numbered heading of
docs/science/<name>.md, and every relative link in docs/ points at an existing file.

A citation is ``<name>.md §N[.M]`` or ``<name>.md N.M`` for the four science notes (residual-knowledge, rurk,
baselines, evaluation), optionally continued by a range or list (``rurk.md §2-3``, ``§5.2-5.3``, ``§5, §8``,
``§2/§5/§6``): each number must be a heading of the note (``## §5 …``, ``### §5.2 …``, ``## 5. …``). Other ``.md``
names in the code (``report.md``, a run's output file) are not citations.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rurk"
DOCS = ROOT / "docs"
SCIENCE = DOCS / "science"
NOTES = ("residual-knowledge", "rurk", "baselines", "evaluation")

_NUM = r"\d+(?:\.\d+)*"
# "<name>.md §N" (section sign) or "<name>.md N.M" (bare numbers need a dot, so "rurk.md 2 epochs" is not one);
# then optional continuations: "-N" / "–N" (ranges, § optional), or ", §N" / "/§N" (lists, § required).
CITATION = re.compile(
    r"(?<![\w-])(?P<name>" + "|".join(map(re.escape, NOTES)) + r")\.md"
    r"(?:\s*§\s*(?P<sec>" + _NUM + r")|\s+(?P<bare>\d+\.\d+(?:\.\d+)*))"
    r"(?P<more>(?:\s*[-–]\s*§?\s*" + _NUM + r"|\s*[,/]\s*§\s*" + _NUM + r")*)"
)
HEADING = re.compile(r"^#{1,6}\s+§?\s*(" + _NUM + r")\.?(?=\s|$)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def citations(root: Path) -> list[tuple[str, int, str, str]]:
    """(file, line, note name, section) for every citation in the *.py and *.toml files under ``root``."""
    out = []
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.toml")]):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITATION.finditer(line):
                secs = [m.group("sec") or m.group("bare")]
                secs += re.findall(_NUM, m.group("more") or "")
                where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
                out += [(where, lineno, m.group("name"), s) for s in secs]
    return out


def headings(note: Path) -> set[str]:
    """The section numbers of a note's headings ("5", "5.2", ...); fenced code blocks are skipped."""
    nums, fenced = set(), False
    for line in note.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            nums.add(m.group(1))
    return nums


def unresolved(root: Path, science: Path) -> list[str]:
    """Every citation under ``root`` whose note is missing or has no heading with its number."""
    cache: dict[str, set[str] | None] = {}
    bad = []
    for file, line, name, sec in citations(root):
        if name not in cache:
            note = science / f"{name}.md"
            cache[name] = headings(note) if note.is_file() else None
        if cache[name] is None:
            bad.append(f"{file}:{line}: {name}.md is missing (cited as {name}.md §{sec})")
        elif sec not in cache[name]:
            bad.append(f"{file}:{line}: {name}.md has no heading numbered {sec}")
    return bad


def test_the_code_cites_the_science_notes():
    found = citations(SRC)
    assert len(found) >= 40, f"only {len(found)} citations found: the pattern no longer matches the code's style"
    assert {name for _, _, name, _ in found} == set(NOTES)


def test_every_citation_in_the_code_resolves():
    bad = unresolved(SRC, SCIENCE)
    assert not bad, "citations without a matching heading in docs/science:\n" + "\n".join(bad)


def test_a_missing_section_is_reported(tmp_path):
    """The checker itself: a bogus section, a range end and a missing note are caught; good ones are not."""
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text('"""See rurk.md §5 and rurk.md §99, evaluation.md 4.7, baselines.md §2-13."""\n'
                              "x = 1  # report.md 4.2 is a run's output, not a citation\n")
    (pkg / "s.toml").write_text("# spec residual-knowledge.md §5.1, §5.9\n")
    science = tmp_path / "science"
    science.mkdir()
    (science / "rurk.md").write_text("# RURK\n\n## §5 The ambiguity\n\n```\n## §99 inside a code block\n```\n")
    (science / "baselines.md").write_text("## 2. GD\n\n## §12 Later\n")
    (science / "evaluation.md").write_text("## §4 CPU\n\n### §4.1 fmnist5\n")
    bad = unresolved(pkg, science)
    assert any(b.endswith("rurk.md has no heading numbered 99") for b in bad)
    assert any(b.endswith("evaluation.md has no heading numbered 4.7") for b in bad)
    assert any(b.endswith("baselines.md has no heading numbered 13") for b in bad)
    assert any("residual-knowledge.md is missing" in b for b in bad)
    assert not any(b.endswith(("rurk.md has no heading numbered 5", "baselines.md has no heading numbered 2"))
                   for b in bad)
    assert not any("report.md" in b for b in bad)
    assert len(bad) == 5  # §99, 4.7, 13, and the missing note twice (§5.1 and §5.9)


def _markdown_files() -> list[Path]:
    return sorted([*DOCS.glob("*.md"), *SCIENCE.glob("*.md")])


def test_docs_exist():
    for name in ("README.md", "design.md", *(f"science/{n}.md" for n in NOTES)):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_point_at_existing_files(doc: Path):
    bad = []
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # no links inside code blocks
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # an absolute URL (http:, mailto:) or an anchor in the same file
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            bad.append(target)
    assert not bad, f"{doc.relative_to(ROOT)}: links to missing files: {bad}"
