"""The commands in README.md and docs/ are the ones that work, so the docs cannot drift from the code.

1. CI (.ci/run) runs the README's test command, verbatim.
2. Runnable blocks run. A fenced ```sh or ```python block on the line right after
   `<!-- run-in-test -->` (or `<!-- run-in-test expect="REGEX" -->`: the block's output must match
   REGEX) is run, all of one document's in order as one bash script (`set -euo pipefail`), in a fresh
   folder holding `fhir_fixtures` and a `.venv/bin` whose `cds-plugin` and `python` run this checkout.
   Rules:
   - install commands (a line with `-m venv` or `pip install`) are skipped: the test's Python is set up;
   - a job started with `&` (a server) runs until the script ends, then gets SIGTERM;
   - each loopback port the block names (`127.0.0.1:PORT`, `--port PORT`) becomes a free one, and so
     does `cds-plugin serve`'s default 8080 (through CDS_PLUGIN_BIND); no other CDS_PLUGIN_ variable of
     the test's environment is passed on, and servers start with one worker;
   - a python block runs as `.venv/bin/python -` with the block on standard input.
3. Every `cds-plugin ...` command line in README.md, docs/ and fhir_fixtures/README.md (code blocks and
   inline code) names a subcommand that exists and only options that subcommand has.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cds_plugin.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(
    r'^<!-- run-in-test(?: expect="((?:[^"\\]|\\.)*)")? -->\n```(sh|python)\n(.*?)^```', re.M | re.S
)
INSTALL = re.compile(r"-m venv\b|\bpip install\b")
PORT = re.compile(r"(?<=127\.0\.0\.1:)(\d{2,5})\b|(?<=--port )(\d{2,5})\b")
DEFAULT_PORT = "8080"  # settings.bind's default, what `cds-plugin serve` uses when no --bind is given
RUNNABLE_DOCS = ["README.md", "docs/sandbox.md"]
COMMAND_DOCS = [
    "README.md",
    "fhir_fixtures/README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
]
SCRIPT_TIMEOUT_S = 240  # under pytest-timeout's 300 s


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        line
        for lang, body in FENCE.findall(readme)
        if lang == "sh"
        for line in body.splitlines()
        if "-m pytest" in line
    ]
    assert len(commands) == 1, commands
    assert commands[0] in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


# -- runnable blocks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    expect: str | None
    line: int  # where the block starts in its document, for messages


def runnable_blocks(text: str) -> list[Block]:
    return [
        Block(
            m.group(2),
            m.group(3),
            m.group(1).replace('\\"', '"') if m.group(1) else None,
            text.count("\n", 0, m.start()) + 2,
        )
        for m in MARKER.finditer(text)
    ]


def logical_lines(body: str) -> list[str]:
    """Lines with their backslash continuations joined, as the shell reads them."""
    lines: list[str] = []
    pending = ""
    for raw in body.splitlines():
        if raw.endswith("\\"):
            pending += raw + "\n"
            continue
        lines.append(pending + raw)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def build_script(blocks: list[Block]) -> tuple[str, dict[str, str]]:
    """One bash script for a document's blocks, each preceded by a marker line; and the port mapping."""
    ports: dict[str, str] = {DEFAULT_PORT: _free_port()}
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT"]
    for i, block in enumerate(blocks):
        parts.append(f"echo '@@block {i}@@'")
        if block.lang == "python":
            assert "__PY_BLOCK__" not in block.body
            parts.append(f".venv/bin/python - <<'__PY_BLOCK__'\n{block.body}__PY_BLOCK__")
            continue
        for line in logical_lines(block.body):
            if INSTALL.search(line):
                continue
            line = PORT.sub(lambda m: ports.setdefault(m.group(0), _free_port()), line)
            parts.append(line)
    return "\n".join(parts) + "\n", ports


def _workspace(tmp_path: Path) -> Path:
    """A fresh folder like a clone after the install command: fixtures, and a .venv/bin running this tree."""
    work = tmp_path / "clone"
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (work / "fhir_fixtures").symlink_to(ROOT / "fhir_fixtures")
    shims = {
        "python": f'exec {shlex.quote(sys.executable)} "$@"\n',
        "cds-plugin": f'exec {shlex.quote(sys.executable)} -m cds_plugin.cli "$@"\n',
    }
    for name, line in shims.items():
        shim = bin_dir / name
        shim.write_text("#!/usr/bin/env bash\n" + line)
        shim.chmod(0o755)
    return work


def _environment(work: Path, ports: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_PLUGIN_")}
    env.update(
        PATH=f"{work / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),  # this checkout's code, whatever the interpreter has installed
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CDS_PLUGIN_BIND=f"127.0.0.1:{ports[DEFAULT_PORT]}",
        CDS_PLUGIN_WORKERS="1",
        COLUMNS="100",
    )
    return env


def run_script(script: str, work: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\n[timed out after {SCRIPT_TIMEOUT_S} s]"
    finally:
        try:  # anything the script left behind (its trap stops its jobs)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, output


@pytest.mark.parametrize("doc", RUNNABLE_DOCS)
def test_runnable_blocks_run(doc: str, tmp_path: Path) -> None:
    for tool in ("bash", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the documented commands need it")
    blocks = runnable_blocks((ROOT / doc).read_text(encoding="utf-8"))
    assert blocks, f"{doc} has no <!-- run-in-test --> block"
    work = _workspace(tmp_path)
    script, ports = build_script(blocks)
    status, output = run_script(script, work, _environment(work, ports))
    report = f"{doc}: script\n{script}\noutput (last 6000 characters)\n{output[-6000:]}"
    assert status == 0, report
    pieces = output.split("@@block ")
    outputs = {int(p.split("@@", 1)[0]): p.split("@@", 1)[1] for p in pieces[1:]}
    assert sorted(outputs) == list(range(len(blocks))), report
    for i, block in enumerate(blocks):
        if block.expect:
            assert re.search(block.expect, outputs[i]), (
                f"{doc}:{block.line}: no match for {block.expect!r}\n{report}"
            )


def test_the_runner_skips_installs_and_maps_ports() -> None:
    body = (
        "python3.11 -m venv .venv && .venv/bin/pip install -e .\n"
        "cds-plugin sandbox fhir-server --data d --port 8090 &\n"
        "curl -s http://127.0.0.1:8090/fhir/metadata \\\n    http://127.0.0.1:8080/x\n"
    )
    script, ports = build_script([Block("sh", body, None, 1)])
    assert "pip install" not in script and "8090" not in script and "8080" not in script
    assert f"--port {ports['8090']} &" in script
    assert f"127.0.0.1:{ports['8090']}/fhir/metadata \\\n    http://127.0.0.1:{ports['8080']}/x" in script
    assert len(set(ports.values())) == 2


# -- cds-plugin command lines against the parser -------------------------------------------------------


#: `cds-plugin` where a command starts: line start (after a `$ ` prompt, VAR=value assignments or a path
#: such as .venv/bin/), or after a shell operator; followed by a blank (a name such as cds-plugin-0909...
#: or cds-plugin[postgresql] is no command).
COMMAND = re.compile(
    r"(?:^|[;&|(]\s*|^\$ )(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:[\w./-]*/)?cds-plugin(?=[ \t]|$)", re.M
)
INLINE = re.compile(r"`([^`]+)`")


def _arguments(text: str, start: int) -> str:
    """The command's words from `start` to where the shell would end it: a newline that no backslash
    continues, `;`, `&`, `>`, a `#` comment, a backtick, or a `|` outside brackets (inside them, as in
    `(--bundle FILE | --fhir-server URL)`, it separates a synopsis's alternatives)."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\n" and text[i - 1] != "\\":
            return text[start:i]
        if c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c in ";&>`" or (c == "#" and text[i - 1].isspace()) or (c == "|" and depth <= 0):
            return text[start:i]
    return text[start:]


def command_lines(text: str) -> list[str]:
    """The argument part of each `cds-plugin` command in code blocks and inline code spans."""
    found: list[str] = []
    for _, body in FENCE.findall(text):
        found += [_arguments(body, m.end()) for m in COMMAND.finditer(body)]
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        span = " ".join(span.split())  # inline code may wrap across lines
        found += [_arguments(span, m.end()) for m in COMMAND.finditer(span)]
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(args: str) -> str | None:
    """Why a documented `cds-plugin ARGS` does not match the command line (None when it does)."""
    words = [w for w in re.split(r"[\s\\]+", args) if w]
    parser = build_parser()
    path = ["cds-plugin"]
    while words and (choices := _subparsers(parser)):
        if words[0] not in choices:
            return f"{' '.join(path)}: no subcommand {words[0]!r} (has {', '.join(choices)})"
        parser = choices[words.pop(0)]
        path.append(parser.prog.split()[-1])
    if _subparsers(parser) and not words:
        return None  # `cds-plugin sandbox` named in prose
    known = {opt for action in parser._actions for opt in action.option_strings}
    for word in words:
        option = word.strip("[]()").split("=", 1)[0]
        if option.startswith("--") and len(option) > 2 and option not in known:
            return f"{' '.join(path)}: no option {option} (has {', '.join(sorted(known))})"
    return None


def test_documented_commands_match_the_command_line() -> None:
    problems = []
    seen = 0
    for doc in COMMAND_DOCS:
        for args in command_lines((ROOT / doc).read_text(encoding="utf-8")):
            seen += 1
            problem = check_command(args)
            if problem:
                problems.append(f"{doc}: `cds-plugin{args.rstrip()}`: {problem}")
    assert seen > 30, f"only {seen} commands found: is the pattern broken?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("args", "ok"),
    [
        (" sandbox call --service URL --hook HOOK [--service-id ID]", True),
        (" serve --dev", True),
        (" sandbox call --services URL", False),
        (" sandbox cal --service URL", False),
        (" train --data DIR --out DIR [--basis PATH]", False),
    ],
)
def test_the_command_check_can_fail(args: str, ok: bool) -> None:
    assert (check_command(args) is None) is ok
