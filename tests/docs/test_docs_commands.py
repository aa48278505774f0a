"""The user docs stay true: the README's two set-up commands are the ones CI and the image use,
every ``kindling`` command shown in README.md and docs/*.md parses with the real CLI (sub-command,
options and setting flags), and every doc the README links to exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _shell_blocks(path: Path) -> list[str]:
    """Commands in the file's ```bash blocks, continuation lines joined, comments dropped."""
    text = path.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_has_exactly_the_two_set_up_commands() -> None:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Set up", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert [b.strip() for b in blocks] == [
        "pip install torch==2.13.0 && pip install -e . && kindling demo", "bash .ci/run"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install --quiet torch==2.13.0" in ci  # the same pin as the README
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in (ROOT / "Dockerfile").read_text()


KINDLING = [(path.name, line) for path in DOCS for part in _shell_blocks(path)
            for line in part.split("&&") if line.strip().startswith("kindling ")]


def test_the_docs_show_commands() -> None:
    assert len(KINDLING) > 30


@pytest.mark.parametrize("doc, command", KINDLING, ids=[f"{d}:{c[:40]}" for d, c in KINDLING])
def test_every_documented_command_parses(doc: str, command: str) -> None:
    from workers.cli import build_parser, settings_from

    argv = shlex.split(command.strip())[1:]
    args = build_parser(argv[0]).parse_args(argv)  # exits (SystemExit) on an unknown option
    if hasattr(args, "settings_source"):
        settings_from(args)  # and the setting flags' values are valid


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/)[^)#]*)", text)
    for name in ("configuration", "design", "quality", "benchmarks", "operations"):
        assert f"docs/{name}.md" in links, name
    for link in links:
        assert (ROOT / link).exists(), link
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([a-z_\-]+\.md)", doc.read_text(encoding="utf-8")):
            assert (ROOT / "docs" / link).exists(), (doc.name, link)
