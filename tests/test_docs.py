"""The README and docs/ say what is true: the pipeline picture is the graph `dvc dag` draws, and every command
in their shell blocks names a make target, module, flag or DVC command line that exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY = re.compile(r"@[\w.-]+-\d+$")  # a sweep entry, sweep@resnet18-42, drawn once as sweep@ARCH-SEED


def blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file."""
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", path.read_text(), flags=re.S | re.M)


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: comments dropped, continuation lines joined, split at newlines,
    `&&`, `;` and `|` outside quotes."""
    text = re.sub(r"(^|\s)#.*$", "", text, flags=re.M).replace("\\\n", " ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|\n")
    lexer.whitespace, lexer.whitespace_split = " \t", True
    found, command = [], []
    for token in [*lexer, ";"]:
        if token.strip(";&|\n"):
            command.append(token)
        elif command:
            found.append(command)
            command = []
    return found


def shell_commands() -> list[tuple[str, list[str]]]:
    return [(p.name, c) for p in DOCS for b in blocks(p, "bash") for c in commands(b)]


def test_the_readmes_pipeline_picture_is_the_graph_dvc_dag_draws():
    (mermaid,) = blocks(ROOT / "README.md", "mermaid")
    labels = dict(re.findall(r'(\w+)\["([^"]+)"\]', mermaid))
    drawn = set()
    for line in mermaid.splitlines()[1:]:
        names = [labels[n] for n in re.findall(r'(\w+)(?:\["[^"]+"\])?', line) if n in labels]
        drawn |= set(zip(names, names[1:]))
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    nodes = {n: ENTRY.sub("@ARCH-SEED", label) for n, label in re.findall(r'(node\d+)\["([^"]+)"\]', out)}
    edges = {(nodes[a], nodes[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", out)}
    assert drawn == {e for e in edges if e[0] != "check_params"}
    reached, todo = set(), ["check_params"]  # every stage runs after check_params
    while todo:
        node = todo.pop()
        todo += [b for a, b in edges if a == node and b not in reached]
        reached |= set(todo)
    assert reached == set(nodes.values()) - {"check_params"}


def test_every_make_target_in_the_docs_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    used = {c[1] for _, c in shell_commands() if c[0] == "make" and len(c) > 1}
    used |= {c[2] for _, c in shell_commands() if c[0] == "make" and len(c) > 2 and "=" not in c[2]}
    assert used, "no make command found: the parser is broken"
    assert used - {t for t in used if "=" in t} <= targets


def test_every_python_module_and_flag_in_the_docs_exists():
    checked = 0
    for doc, cmd in shell_commands():
        if not re.fullmatch(r"(\.venv/bin/)?python3?", cmd[0]) or cmd[1:2] != ["-m"]:
            continue
        module = cmd[2]
        if module in ("pytest", "dvc"):
            continue
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"{doc}: python -m {module}: no such module"
        source = path.read_text()
        for flag in (a.split("=")[0] for a in cmd[3:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{doc}: python -m {module}: no option {flag}"
        checked += 1
    assert checked >= 4


def test_every_dvc_command_in_the_docs_parses():
    """DVC's own argument parser takes each `dvc ...` line as written (a wrong flag or subcommand fails)."""
    from dvc.cli import DvcParserError, parse_args

    lines = [(doc, cmd) for doc, cmd in shell_commands() if cmd[0] == "dvc"]
    bad = []
    for doc, cmd in lines:
        try:
            parse_args(cmd[1:])
        except DvcParserError:
            bad.append(f"{doc}: {shlex.join(cmd)}")
    assert len(lines) >= 10 and not bad
