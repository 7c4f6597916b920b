"""Every reference in the repository resolves inside it: cited docs/ files exist, cited sections exist in them, and no
citation points at a document outside the repository."""

import re
from pathlib import Path

import pytest


SELF = Path(__file__).resolve()
ROOT = SELF.parents[1]
SCANNED = ["README.md", "pyproject.toml", "fipo_trl", "configs", "examples", "scripts", "benchmarks", "tests", "docs"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".toml", ".sh", ".sbatch", ".txt", ".cfg"}

# `docs/<name>.md`, optionally followed by sections such as `§2.5`, `§3.1/§3.4`, `§2.1–§2.5, §2.7`
_CITATION = re.compile(r"(?<![\w./-])docs/(?P<name>[\w-]+)\.md`?(?P<sections>(?:(?:[ ,/–-]|\band\b)*§\d+(?:\.\d+)*)*)")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
_RELATIVE_LINK = re.compile(r"\]\((?P<target>[\w-]+\.md)\)")  # links between the files of docs/
# Citation forms of documents that live outside the repository
_OUTSIDE_FORMS = {
    "a section of the outside spec (cite docs/fipo.md instead)": re.compile(r"\b[Ss]pec\s?§"),
    "the outside spec named in prose (cite docs/fipo.md instead)": re.compile(r"\bspec's\b"),
    "the outside TRL notes (cite docs/trl.md instead)": re.compile(r"trl-notes"),
    "the outside FIPO spec file (cite docs/fipo.md instead)": re.compile(r"fipo-spec\.md"),
    "the outside scorer notes (cite docs/scorer.md instead)": re.compile(r"dapo-scorer\.md"),
    "a path into the shared folder next to the repository": re.compile(r"\.\./shared\b"),
    "an absolute path into the shared folder": re.compile(r"/work/shared\b"),
}


def scanned_files():
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            # this file is left out: its samples of dangling references are dangling on purpose
            if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts and file != SELF:
                yield file


def headings(doc: Path) -> set[str]:
    """The section numbers of a markdown file: `### 2.5 Title` gives "2.5", `## 3. Title` gives "3"."""
    return set(_HEADING.findall(doc.read_text(encoding="utf-8")))


def citation_problems(text: str, where: str, docs_dir: Path) -> tuple[list[str], list[str], int]:
    """(missing files, missing sections, number of citations checked) of the `docs/<name>.md §N` citations in text."""
    missing_files, missing_sections, checked = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _CITATION.finditer(line):
            checked += 1
            doc = docs_dir / f"{match['name']}.md"
            if not doc.is_file():
                missing_files.append(f"{where}:{number}: docs/{match['name']}.md does not exist")
                continue
            known = headings(doc)
            for section in _SECTION.findall(match["sections"]):
                if section not in known:
                    missing_sections.append(f"{where}:{number}: docs/{match['name']}.md has no section {section}")
    return missing_files, missing_sections, checked


def outside_citations(text: str, where: str) -> list[str]:
    return [
        f"{where}:{number}: {form}: {line.strip()[:100]}"
        for number, line in enumerate(text.splitlines(), start=1)
        for form, pattern in _OUTSIDE_FORMS.items()
        if pattern.search(line)
    ]


def scan_repository():
    missing_files, missing_sections, outside, checked = [], [], [], 0
    for file in scanned_files():
        text = file.read_text(encoding="utf-8", errors="replace")
        where = str(file.relative_to(ROOT))
        files, sections, count = citation_problems(text, where, ROOT / "docs")
        missing_files += files
        missing_sections += sections
        checked += count
        outside += outside_citations(text, where)
        if file.parent == ROOT / "docs" and file.suffix == ".md":
            for number, line in enumerate(text.splitlines(), start=1):
                for link in _RELATIVE_LINK.finditer(line):
                    if not (file.parent / link["target"]).is_file():
                        missing_files.append(f"{where}:{number}: link to {link['target']}, which does not exist")
    return missing_files, missing_sections, outside, checked


@pytest.fixture(scope="module")
def scan():
    return scan_repository()


def test_every_cited_docs_file_exists(scan):
    missing_files, _, _, checked = scan
    assert checked >= 50, f"only {checked} docs/ citations found: the scanner is broken or the citations are gone"
    assert not missing_files, "\n".join(missing_files)


def test_every_cited_section_exists(scan):
    _, missing_sections, _, _ = scan
    assert not missing_sections, "\n".join(missing_sections)


def test_no_citation_points_outside_the_repository(scan):
    _, _, outside, _ = scan
    assert not outside, "\n".join(outside)


# A dangling citation for the samples below, assembled so that no scanner of this file takes it for a real one
MISSING = "docs" + "/nowhere.md"


def test_the_checks_catch_each_kind_of_dangling_reference():
    docs_dir = ROOT / "docs"
    files, sections, checked = citation_problems(
        f"see {MISSING} §1\nsee docs/fipo.md §2.5, §99.1 and docs/fipo.md §3.1/§98\nok: `docs/trl.md §3`",
        "sample",
        docs_dir,
    )
    assert checked == 4
    assert files == [f"sample:1: {MISSING} does not exist"]
    assert sections == ["sample:2: docs/fipo.md has no section 99.1", "sample:2: docs/fipo.md has no section 98"]
    outside = outside_citations("τ (Spec §3.1)\nsee trl-notes §3\n../shared/" + MISSING, "sample")
    assert [line.split(":")[1] for line in outside] == ["1", "2", "3"]


def test_headings_are_read_with_their_numbers():
    fipo = headings(ROOT / "docs" / "fipo.md")
    assert {"1", "2", "2.5", "2.12", "3.1", "4.3", "6.8"} <= fipo
    assert "3" in headings(ROOT / "docs" / "trl.md")


def numbering_gaps(text: str) -> list[str]:
    """Headings whose number does not follow the one before in reading order (`## 3.`, `### 3.1`, `### 3.2`, ...)."""
    gaps, previous = [], []
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # a `# 2 processes` comment is no heading
    for number in _HEADING.findall(prose):
        parts = [int(part) for part in number.split(".")]
        expected = previous[: len(parts) - 1] + [previous[len(parts) - 1] + 1 if len(previous) >= len(parts) else 1]
        if parts != expected:
            gaps.append(f"{number} after {'.'.join(map(str, previous)) or 'the start'}")
        previous = parts
    return gaps


def test_sections_are_numbered_in_reading_order():
    sample = "## 1. A\n### 1.1 B\n### 1.3 C\n## 2. D\n```\n# 7 not a heading\n```\n### 2.1 E\n## 4. F\n"
    assert numbering_gaps(sample) == [
        "1.3 after 1.1",
        "4 after 2.1",
    ]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert not numbering_gaps(doc.read_text(encoding="utf-8")), (doc.name, numbering_gaps(doc.read_text()))
