"""The documentation site (docs/): every code block on it runs, as a reader would run it.

Each page runs in a subprocess of its own, in a fresh temporary folder (its working directory, where
``CIRCUITRY_DB`` points too), its blocks in the order they appear:

- a ``python`` block runs in one namespace shared by the page's blocks, like a notebook; a
  ``text title="Output"`` block right after it is what it must print (``...`` matches anything,
  runs of whitespace compare equal);
- a ``python title="NAME.py"`` block is a file the reader saves: it is written to the folder, and a
  later block of the page must use it (``python NAME.py``, an import);
- a ``bash`` block's lines are commands (``python`` and ``circuitry`` are this interpreter's); a
  ``console`` block's ``$ `` lines are commands and the lines under each, its expected output; each
  command must succeed;
- a ``sql`` block runs against the page's ``circuitry.db``.

A block that must not run (it installs from the network, or serves until stopped) is preceded by
``<!-- not run: why -->``. Any other language (``text``, ``json``...) is shown, not run, and is not code.

Other checks here: the reference documents every public name; the command-line page lists every
command and option of ``circuitry --help`` (and no other); the database page lists every column of
every table (and no other); the site names things by what they do.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import io
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
RUN = ("python", "bash", "console", "sql")
SHOWN = ("text", "json", "")
SKIP = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`]*)$")


@dataclass
class Block:
    page: str
    line: int  # of the first line of code, 1-based
    lang: str
    title: str | None
    code: str
    skip: str | None  # why it is not run
    expect: str | None = None  # the output shown right after it


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page (nested in admonitions and tabs too), in order."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        lang = info.split()[0] if info else ""
        title = re.search(r'title="([^"]*)"', info)
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][indent:])
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        skip = SKIP.search(lines[k]) if k >= 0 else None
        block = Block(str(page.relative_to(DOCS)), i + 2, lang, title[1] if title else None, "\n".join(body) + "\n",
                      skip[1] if skip else None)
        if lang == "text" and block.title == "Output" and found and found[-1].lang == "python":
            found[-1].expect = block.code
        else:
            found.append(block)
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


# -- the pages' code runs --------------------------------------------------------------------------------------


def test_there_are_pages_and_code() -> None:
    assert len(PAGES) >= 15
    assert sum(b.lang in RUN and b.skip is None for b in all_blocks()) >= 60


def test_every_block_is_code_that_runs_or_is_marked() -> None:
    for b in all_blocks():
        where = f"{b.page}:{b.line}"
        assert b.lang in RUN or b.lang in SHOWN, f"{where}: a {b.lang!r} block is neither run nor plain text"
        if b.skip is not None:
            assert len(b.skip) >= 10, f"{where}: say why the block is not run"
            assert b.lang in RUN, f"{where}: only code is marked as not run"
        if b.lang == "python" and b.skip is None:
            ast.parse(b.code, filename=where)


def test_few_blocks_are_not_run() -> None:
    """Blocks shown but not run are the exception: installs from the network, servers that run until stopped."""
    skipped = [f"{b.page}:{b.line}" for b in all_blocks() if b.skip is not None]
    run = [b for b in all_blocks() if b.lang in RUN and b.skip is None]
    assert len(skipped) * 8 <= len(run), skipped


def test_files_the_reader_saves_are_used() -> None:
    for page in PAGES:
        bs = blocks(page)
        for i, b in enumerate(bs):
            if b.lang == "python" and b.title is not None and b.skip is None:
                later = "".join(x.code for x in bs[i + 1:] if x.skip is None)
                stem = b.title.removesuffix(".py")
                pytest_loads = b.title == "conftest.py" and "pytest" in later
                assert b.title in later or re.search(rf"\b(import|from) {stem}\b", later) or pytest_loads, \
                    f"{b.page}:{b.line}: {b.title} is saved but no later block runs it"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang in RUN for b in blocks(p))],
                         ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(page: Path, tmp_path: Path) -> None:
    steps = [asdict(b) for b in blocks(page) if b.lang in RUN and b.skip is None]
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(steps))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITRY_")}
    bindir = str(Path(sys.executable).parent)
    env.update(CIRCUITRY_DB=str(work / "circuitry.db"), COLUMNS="200", PYTHONUNBUFFERED="1",
               PATH=bindir + os.pathsep + env.get("PATH", ""), NO_COLOR="1")
    proc = subprocess.run([sys.executable, __file__, str(script)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


# -- the runner (this file run as a script, in the page's folder) ---------------------------------------------


def _same(expected: str, got: str) -> bool:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    return checker.check_output(expected.strip() + "\n", got.strip() + "\n", flags)


def _console(code: str) -> list[tuple[str, str | None]]:
    """``(command, expected output or None)`` of a console block."""
    out: list[tuple[str, str | None]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], None))
        elif out and line.strip():
            cmd, expected = out[-1]
            out[-1] = (cmd, (expected or "") + line + "\n")
    return out


def _bash(code: str) -> list[tuple[str, str | None]]:
    cmds = []
    for line in code.splitlines():
        text = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if text:
            cmds.append((text, None))
    return cmds


def _run_command(where: str, cmd: str, expected: str | None) -> None:
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    sys.__stdout__.write(f"$ {cmd}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"{where}: `{cmd}` exited with {proc.returncode}:\n{proc.stderr}")
    if expected is not None and not _same(expected, proc.stdout):
        raise SystemExit(f"{where}: `{cmd}` printed\n{proc.stdout}\ninstead of\n{expected}")


class _Tee(io.TextIOBase):
    """``sys.stdout`` while a page runs: what is written goes to the real stdout and to the running block's
    buffer (a handler that keeps a reference to ``sys.stdout``, as ``logging.basicConfig`` does, keeps working)."""

    def __init__(self, real: io.TextIOBase) -> None:
        self.real = real
        self.buffer_ = io.StringIO()

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()


def run_steps(path: str) -> None:
    steps = [Block(**s) for s in json.loads(Path(path).read_text())]
    tee = _Tee(sys.stdout)  # type: ignore[arg-type]
    sys.stdout = tee
    main = types.ModuleType("__main__")
    main.__file__ = os.path.abspath("page.py")
    sys.modules["__main__"] = main
    for b in steps:
        where = f"docs/{b.page}:{b.line}"
        print(f"--- {where} ({b.lang}{' ' + b.title if b.title else ''})", flush=True)
        if b.lang == "python" and b.title is not None:
            Path(b.title).parent.mkdir(parents=True, exist_ok=True)
            Path(b.title).write_text(b.code)
        elif b.lang == "python":
            code = compile("\n" * (b.line - 1) + b.code, f"docs/{b.page}", "exec", dont_inherit=True)
            tee.buffer_ = io.StringIO()
            exec(code, main.__dict__)
            printed = tee.buffer_.getvalue()
            if b.expect is not None and not _same(b.expect, printed):
                raise SystemExit(f"{where}: printed\n{printed}\ninstead of\n{b.expect}")
        elif b.lang in ("bash", "console"):
            for cmd, expected in (_console(b.code) if b.lang == "console" else _bash(b.code)):
                _run_command(where, cmd, expected)
        elif b.lang == "sql":
            with contextlib.closing(sqlite3.connect(os.environ["CIRCUITRY_DB"])) as db:
                for statement in (s for s in b.code.split(";") if s.strip()):
                    rows = db.execute(statement).fetchall()
                    print(statement.strip(), "->", rows[:5])
    sys.stdout.flush()


# -- the reference is complete ----------------------------------------------------------------------------------


def _rendered() -> set[str]:
    """What the reference pages render: each ``::: identifier``, and the members its options list."""
    shown = set()
    for page in (DOCS / "reference").glob("*.md"):
        text = page.read_text(encoding="utf-8") + "\n"
        for m in re.finditer(r"^::: *([\w.]+)\n((?:    .*\n|\n)*)", text, flags=re.M):
            shown.add(m[1])
            listed = re.search(r"^\s+members: *\[(.*)\]", m[2], flags=re.M)
            shown |= {f"{m[1]}.{name}" for name in re.findall(r"\w+", listed[1])} if listed else set()
    return shown


def test_reference_documents_every_public_name() -> None:
    import circuitry
    import circuitry.testing

    shown = _rendered()
    page = (DOCS / "reference" / "circuitry.md").read_text(encoding="utf-8")
    # an alias kept for compatibility is named on the page, and its target documented
    aliases = {"StructlogHook": "circuitry.instrumentation.logging.LoggingHook"}
    for name, target in aliases.items():
        assert f"`{name}`" in page and target in shown, name
    missing = [f"circuitry.{n}" for n in circuitry.__all__ if f"circuitry.{n}" not in shown and n not in aliases]
    assert not missing, missing
    assert "circuitry.testing" in shown or all(f"circuitry.testing.{n}" in shown for n in circuitry.testing.__all__)
    for name in ("open_store", "SQLiteStore", "Store", "SharedStore", "StoreHealth", "ReadModel", "PostgresStore"):
        assert f"circuitry.store.{name}" in shown, name
    for module in ("logging", "prometheus", "otel", "sources"):
        assert any(s.startswith(f"circuitry.instrumentation.{module}") for s in shown), module
    assert any(s.startswith("circuitry.runners.webhooks") for s in shown)


def test_the_migration_guide_names_attributes_the_refusal_has() -> None:
    """docs/how-to/migrate.md said CircuitOpenError carries the breaker's `.snapshot`: it has no such
    attribute."""
    from circuitry import CircuitOpenError

    page = (DOCS / "how-to" / "migrate.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| `CircuitBreakerError`"))
    named = re.findall(r"`\.([a-z_]+)`", row)
    assert named and all(hasattr(CircuitOpenError("svc", "open", None, 1.0), a) for a in named), named


# -- the command line page -----------------------------------------------------------------------------------


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "circuitry", *args, "--help"], capture_output=True, text=True,
                          env=env, check=True).stdout


def _commands() -> list[str]:
    text = _help()
    block = re.search(r"\{([a-z,]+)\}|COMMAND\n((?:    .*\n)+)", text)
    assert block is not None, text
    return re.findall(r"^    ([a-z]+)", text, flags=re.M)


def test_cli_page_lists_every_command_and_option() -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    commands = _commands()
    assert len(commands) >= 14, commands
    headings = re.findall(r"^## `circuitry ([a-z]+)", page, flags=re.M)
    assert sorted(headings) == sorted(commands), "one section per command, as `circuitry --help` lists them"
    sections = re.split(r"^## ", page, flags=re.M)
    for command in commands:
        section = next(s for s in sections if s.startswith(f"`circuitry {command}"))
        helptext = _help(command)
        if command == "webhooks":
            helptext += _help(command, "retry")
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", helptext)) - {"--help"}
        documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", section))
        if command != "demo":  # the options every other command takes are described once, at the top
            documented |= {o for o in ("--db", "--json") if f"`{o}" in sections[0]}
        assert options <= documented, f"{command}: {sorted(options - documented)} not on the page"
        assert documented <= options | {"--json", "--db", "--no-progress"}, \
            f"{command}: {sorted(documented - options)} are not options of it"


# -- the database page ---------------------------------------------------------------------------------------


def test_database_page_lists_every_table_and_column(tmp_path: Path) -> None:
    from circuitry.store.sqlite.schema import migrate

    path = tmp_path / "schema.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    page = (DOCS / "reference" / "database.md").read_text(encoding="utf-8")
    sections = {m[0]: m[1] for m in re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S)}
    assert sorted(sections) == sorted(tables), "one section per table"
    for table, cols in columns.items():
        documented = re.findall(r"^\| `(\w+)` \|", sections[table], flags=re.M)
        assert sorted(documented) == sorted(cols), f"{table}: documented {documented}, has {cols}"


# -- words ----------------------------------------------------------------------------------------------------


def test_the_site_names_things_by_what_they_do() -> None:
    """No project jargon on the site (nor in the docstrings the reference shows)."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for word in (r"\bthe seed\b", r"\bseed's\b", r"\bseed-compatible\b"):
            assert not re.search(word, text, flags=re.I), f"{page.relative_to(DOCS)}: {word}"


def test_the_reference_names_things_by_what_they_do() -> None:
    """The docstrings the reference renders (objects and their public members) have no project jargon."""
    import importlib
    import inspect

    def resolve(ident: str) -> object:
        parts = ident.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for part in parts[i:]:
                obj = getattr(obj, part)
            return obj
        raise AssertionError(ident)

    for ident in sorted(_rendered()):
        obj = resolve(ident)
        docs = {ident: inspect.getdoc(obj) or ""}
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                if not name.startswith("_"):
                    docs[f"{ident}.{name}"] = inspect.getdoc(member) or ""
        for where, doc in docs.items():
            assert not re.search(r"\bseed's\b|\bthe seed\b|seed-compatible", doc, flags=re.I), where


def test_shell_blocks_parse() -> None:
    for b in all_blocks():
        if b.lang in ("bash", "console") and b.skip is None:
            for cmd, _ in (_console(b.code) if b.lang == "console" else _bash(b.code)):
                shlex.split(cmd)


if __name__ == "__main__":
    run_steps(sys.argv[1])
