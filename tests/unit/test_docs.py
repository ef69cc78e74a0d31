"""The docs hold together with the code: every `§N` the code cites is a section of
docs/behaviour.md, docs/configuration.md is what its generator prints, docs/architecture.md has a
row for every room, and every collectors/ or streams/ path the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from procwarden import docs_config

ROOT = Path(__file__).resolve().parents[2]
BEHAVIOUR = ROOT / "docs" / "behaviour.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
CITING = ("collectors", "streams", "schemas", "sinks", "transport", "procwarden", "tests",
          "bench", "docs", "examples")
CITING_SUFFIXES = {".py", ".c", ".md", ".yaml", ".yml"}
# `§7.1`, `§4.2–§4.4`; not another document's sections ("RFC 5424 §6").
_CITATION = re.compile(r"(?<!RFC \d{4} )§(\d+(?:\.\d+)?)")
_LABEL = re.compile(r"\bD(\d{1,2})\b")
_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)


def _citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in CITING:
        files += [p for p in (ROOT / top).rglob("*")
                  if p.suffix in CITING_SUFFIXES and p.is_file()
                  and p not in (BEHAVIOUR, Path(__file__).resolve()) and "__pycache__" not in p.parts]
    return sorted(files)


def citations(files: list[Path], pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """Each cited label, with the files that cite it."""
    found: dict[str, list[str]] = {}
    for path in files:
        for label in set(pattern.findall(path.read_text(errors="replace"))):
            found.setdefault(label, []).append(str(path.relative_to(ROOT)))
    return found


def sections(text: str) -> set[str]:
    return set(_HEADING.findall(text))


def test_the_citation_pattern_reads_what_the_code_writes() -> None:
    text = "spec §4.2–§4.4, (§7 step 8), §14: …; HOSTNAME is printable (RFC 5424 §6)"
    assert set(_CITATION.findall(text)) == {"4.2", "4.4", "7", "14"}
    assert sections("## 4. Rules\n### 4.2 Matching\n## 15. Differences\n") == {"4", "4.2", "15"}


def test_the_code_cites_sections() -> None:
    # Guards the test below against finding nothing (a moved tree, a changed pattern).
    assert len(citations(_citing_files(), _CITATION)) >= 20


def test_every_cited_section_is_in_behaviour_md() -> None:
    have = sections(BEHAVIOUR.read_text())
    missing = {label: where for label, where in citations(_citing_files(), _CITATION).items()
               if label not in have}
    assert not missing, ("sections cited in the code but not headed in docs/behaviour.md "
                         f"(`## N. ` or `### N.M `): {missing}")


def test_every_cited_decision_label_is_in_behaviour_md() -> None:
    text = BEHAVIOUR.read_text()
    named = set(_LABEL.findall(text))
    missing = {label: where for label, where in citations(_citing_files(), _LABEL).items()
               if label not in named}
    assert not missing, f"D labels cited in the code but absent from docs/behaviour.md: {missing}"


def test_behaviour_md_ends_with_the_deliberate_differences() -> None:
    headings = re.findall(r"^## (\d+)\. (.*)$", BEHAVIOUR.read_text(), re.MULTILINE)
    number, title = headings[-1]
    assert (number, title) == ("15", "Deliberate differences from NeuVector")
    assert [int(n) for n, _ in headings] == list(range(1, 16))


def test_no_code_names_the_old_spec_file() -> None:
    stale = [str(p.relative_to(ROOT)) for p in _citing_files()
             if p.suffix == ".py" and "spec/semantics.md" in p.read_text(errors="replace")]
    assert not stale, f"name docs/behaviour.md instead of spec/semantics.md in {stale}"


def test_configuration_md_is_generated() -> None:
    expected = docs_config.render()
    actual = CONFIGURATION.read_text() if CONFIGURATION.exists() else ""
    assert actual == expected, (
        "docs/configuration.md differs from the settings classes; regenerate it with\n"
        "    .venv/bin/python -m procwarden.docs_config > docs/configuration.md")


def test_every_setting_says_what_it_is() -> None:
    blank = [r.variable for r in docs_config.rows() if not r.description.strip()]
    assert blank == [], "give these settings a Field(description=...)"


@pytest.mark.parametrize("name", ["PROCWARDEN_KAFKA_SASL_PASSWORD", "PROCWARDEN_CLICKHOUSE_PASSWORD",
                                  "STREAMS_API_TOKEN", "SIEM_WEBHOOK_TOKEN"])
def test_secrets_show_no_default(name: str) -> None:
    row = next(r for r in docs_config.rows() if r.variable == name)
    assert row.secret and row.default == ""
    line = next(ln for ln in docs_config.render().splitlines() if ln.startswith(f"| `{name}`"))
    assert "(secret)" in line


def test_connection_variables_are_the_ones_the_reader_reads() -> None:
    # schemas/connections.py builds each variable name from its prefix and a field name, and
    # names a few outright in its messages: every one of them has a row.
    source = (ROOT / "schemas" / "connections.py").read_text()
    named = set(re.findall(r"PROCWARDEN_(?:KAFKA|CLICKHOUSE)_[A-Z_]+[A-Z]", source))
    documented = {r.variable for r in docs_config.rows()}
    assert named - documented == set()
    assert {"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS", "PROCWARDEN_CLICKHOUSE_SECURE"} <= documented


def test_architecture_md_lists_every_topic_as_schemas_defines_it() -> None:
    from schemas.topics import ALL_TOPICS

    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z.-]+)` \|.*$", text,
                                                          re.MULTILINE)}
    for spec in ALL_TOPICS:
        compacted = "yes" if spec.compacted else "no"
        days = spec.retention_ms // (24 * 3600 * 1000)
        expected = f"| `{spec.name}` | {spec.key} | {spec.partitions} | {compacted} | {days} d |"
        assert spec.name in rows, f"docs/architecture.md has no row for {spec.name}"
        assert rows[spec.name].startswith(expected), (
            f"docs/architecture.md's row for {spec.name} should start {expected!r}")


def _rooms() -> set[str]:
    """collectors/ and streams/ rooms: their packages and each stage's composition root."""
    found = {"collectors/agent.py", "streams/app.py"}
    for stage in ("collectors", "streams"):
        found |= {f"{stage}/{p.parent.name}/" for p in (ROOT / stage).glob("*/__init__.py")}
    return found


def test_architecture_md_has_a_row_for_every_room() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("### Rooms"):]
    rows = set(re.findall(r"^\| `((?:collectors|streams)/[\w./]+)` \|", table, re.MULTILINE))
    assert rows == _rooms()


def test_every_room_says_its_role() -> None:
    for room in _rooms() - {"collectors/agent.py", "streams/app.py"}:
        text = (ROOT / room / "__init__.py").read_text()
        assert text.startswith('"""'), f"{room}__init__.py has no docstring"


def test_every_stage_path_the_docs_name_exists() -> None:
    named = set()
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        named |= set(re.findall(r"(?<![\w./-])((?:collectors|streams)/[\w./-]*\w/?)",
                                doc.read_text()))
    assert len(named) >= 10
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_procwarden_variable_the_code_reads_is_documented() -> None:
    # Variables named outright in the code (the CLI, the runner, the codec, the stack), beside
    # those the settings classes and connection readers derive from field names.
    documented = {r.variable for r in docs_config.rows()}
    named: dict[str, str] = {}
    for top in ("schemas", "transport", "collectors", "streams", "sinks", "procwarden"):
        for path in (ROOT / top).rglob("*.py"):
            for name in re.findall(r"[\"'](PROCWARDEN_[A-Z][A-Z_]*[A-Z])[\"']", path.read_text()):
                named.setdefault(name, str(path.relative_to(ROOT)))
    assert {n: p for n, p in named.items() if n not in documented} == {}
