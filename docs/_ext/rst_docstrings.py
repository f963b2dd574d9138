"""A Griffe extension that lets mkdocstrings render circuitry's docstrings, which are written in the
reStructuredText dialect Sphinx reads (Google-style sections, ``double backticks``, ``:class:`X```
roles, ``.. versionadded::``, ``::`` literal blocks, simple tables), as Markdown.

It changes nothing in the package: each docstring is rewritten in memory, when mkdocstrings loads the
package, before Griffe parses its sections.

- ````code```` becomes ```code```;
- a role (``:class:`~circuitry.Registry```, ``:meth:`reconfigure```, ``:func:`open_store```...) becomes a
  cross-reference to the page that documents its target when the reference pages render that target
  (an object is known by every path it can be reached by: ``circuitry._registry.Registry`` is the
  ``circuitry.Registry`` that the reference shows); a target no page renders (a private module, the
  standard library) stays code;
- ``.. versionadded:: V`` (and ``versionchanged``, ``deprecated``) becomes a line in italics;
- ``.. code-block:: LANG`` and a paragraph ending in ``::`` become fenced code blocks;
- a simple table (rows of ``===`` borders) becomes a Markdown table.

It also points the two base classes that :mod:`circuitry._accel` chooses at import time (C or Python) at
their Python twins, so that the methods :class:`circuitry.CircuitBreaker` inherits (``enter``, ``exit``)
are documented with it.

mkdocs.yml names this file under the Python handler's ``extensions``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import griffe

_REFERENCE = Path(__file__).resolve().parent.parent / "reference"
_ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|attr|data|exc|obj|const):`([^`]+)`(\\ )?")
_LITERAL = re.compile(r"``([^`]+(?:`[^`]+)*)``")
_DIRECTIVE = re.compile(r"\.\. (versionadded|versionchanged|deprecated)::\s*(.*)$")
_CODE_BLOCK = re.compile(r"\.\. code-block::\s*(\w*)\s*$")
_BORDER = re.compile(r"^=+( +=+)+$")
_LABELS = {"versionadded": "Added in version", "versionchanged": "Changed in version",
           "deprecated": "Deprecated since version"}


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring of the package as Markdown (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # circuitry._accel picks the C or the Python twin of two base classes at import time; what the
        # reference documents (the methods CircuitBreaker and Circuit inherit) is the Python twin's.
        accel = pkg.members.get("_accel")
        if isinstance(accel, griffe.Module):
            for name in ("Gate", "WithBase"):
                if name in accel.members and not accel.members[name].is_alias:
                    accel.set_member(name, griffe.Alias(name, f"{pkg.path}._fastpath.{name}", parent=accel))
        shown = _rendered(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, _resolver(pkg, obj, shown))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            yield from _walk(member)  # type: ignore[arg-type]


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        return pkg[path[len(pkg.path) + 1:]]  # type: ignore[no-any-return]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _canonical(obj: griffe.Object | griffe.Alias) -> str | None:
    try:
        return obj.final_target.path if obj.is_alias else obj.path  # type: ignore[union-attr]
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _rendered(pkg: griffe.Module) -> dict[str, tuple[str, bool]]:
    """Canonical path -> (the identifier a reference page renders it under, whether its members are
    rendered with it), from the pages' ``::: identifier`` lines and their ``members:`` options."""
    shown: dict[str, tuple[str, bool]] = {}
    for page in sorted(_REFERENCE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^::: *([\w.]+)\n((?:    .*\n|\n)*)", text + "\n", flags=re.M):
            ident, options = m[1], m[2]
            listed = re.search(r"^\s+members: *(.*)$", options, flags=re.M)
            names = [] if listed is None else re.findall(r"\w+", listed[1])
            idents = [(ident, listed is None)]
            if names and names != ["false"]:
                idents += [(f"{ident}.{name}", True) for name in names]
            for each, with_members in idents:
                obj = _lookup(pkg, each)
                canonical = None if obj is None else _canonical(obj)
                if canonical is not None:
                    shown.setdefault(canonical, (each, with_members))
    return shown


def _documented(obj: griffe.Object | griffe.Alias | None) -> bool:
    try:
        return obj is not None and bool(obj.docstring and obj.docstring.value.strip())
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False


def _resolver(pkg: griffe.Module, here: griffe.Object,
              shown: dict[str, tuple[str, bool]]) -> Callable[[str], str | None]:
    """A function from a role's target to the identifier to link to, or ``None`` (not rendered)."""
    scopes = [here.path]
    parent = here.parent
    while parent is not None:
        scopes.append(parent.path)
        parent = parent.parent

    def resolve(target: str) -> str | None:
        target = target.rstrip("()")
        candidates = [target, *(f"{scope}.{target}" for scope in scopes), f"{pkg.path}.{target}"]
        for candidate in candidates:
            obj = _lookup(pkg, candidate)
            if obj is None:
                continue
            canonical = _canonical(obj)
            if canonical is None:
                return None
            for prefix, (ident, with_members) in sorted(shown.items(), key=lambda kv: -len(kv[0])):
                if canonical == prefix:
                    return ident
                if with_members and canonical.startswith(prefix + "."):
                    member = canonical[len(prefix) + 1:]
                    if any(part.startswith("_") for part in member.split(".")) or not _documented(obj):
                        return None
                    return f"{ident}.{member}"
            return None
        return None

    return resolve


def _inline(line: str, resolve: Callable[[str], str | None]) -> str:
    def role(m: re.Match[str]) -> str:
        text = m.group(2)
        if "<" in text and text.endswith(">"):  # :role:`title <target>`
            title, _, target = text[:-1].partition("<")
            title = title.strip()
        else:
            target = text.lstrip("~")
            title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
        target = target.strip().lstrip("~")
        if m.group(1) in ("meth", "func") and not title.endswith(")"):
            title += "()"
        ident = resolve(target)
        return f"`{title}`" if ident is None else f"[`{title}`][{ident}]"

    line = _ROLE.sub(role, line)
    line = _LITERAL.sub(lambda m: "`" + m.group(1) + "`", line)
    return line.replace("\\ ", "")


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines indented deeper than ``indent`` from ``start`` (blank lines included), dedented."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return textwrap.dedent("\n".join(lines[start:end])).split("\n"), end


def _fence(body: list[str], lang: str, pad: str) -> list[str]:
    return [f"{pad}```{lang}", *(f"{pad}{b}" if b else "" for b in body), f"{pad}```"]


def _is_python(body: list[str]) -> bool:
    try:
        ast.parse("\n".join(body))
    except SyntaxError:
        return False
    return True


def _table(lines: list[str], start: int, resolve: Callable[[str], str | None]) -> tuple[list[str], int]:
    """A reStructuredText simple table from ``lines[start]`` (its top border) as a Markdown table."""
    border = lines[start]
    pad = border[: len(border) - len(border.lstrip())]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]

    def cells(line: str) -> list[str]:
        out = []
        for i, (a, _) in enumerate(spans):
            b = spans[i + 1][0] if i + 1 < len(spans) else len(line)
            out.append(line[a:b].strip())
        return out

    rows: list[list[str]] = []
    header: list[str] | None = None
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if _BORDER.match(line.strip()):
            if header is None and rows and i + 1 < len(lines) and lines[i + 1].strip():
                header, rows = rows[0], rows[1:]
                i += 1
                continue
            i += 1
            break
        if line.strip():
            row = cells(line)
            open_literal = bool(rows) and rows[-1][0].count("``") % 2 == 1
            if rows and (not row[0] or open_literal):  # a continuation line: add its text to the row above
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row, strict=True)]
            else:
                rows.append(row)
        i += 1
    if header is None:
        header = ["" for _ in spans]
    out = ["", pad + "| " + " | ".join(_inline(c, resolve) for c in header) + " |",
           pad + "|" + "|".join("---" for _ in spans) + "|"]
    for row in rows:
        out.append(pad + "| " + " | ".join(_inline(c, resolve).replace("|", "\\|") for c in row) + " |")
    out.append("")
    return out, i


def convert(text: str, resolve: Callable[[str], str | None]) -> str:
    """One docstring, reStructuredText to Markdown."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        pad = line[:indent]
        directive = _DIRECTIVE.match(stripped)
        code = _CODE_BLOCK.match(stripped)
        if directive:
            rest, i = _block(lines, i + 1, indent)
            note = " ".join(r.strip() for r in rest if r.strip())
            out.append(f"{pad}*{_LABELS[directive.group(1)]} {directive.group(2).strip()}.*"
                       + (f" {_inline(note, resolve)}" if note else ""))
        elif code:
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            body, i = _block(lines, start, indent)
            out.extend(_fence(body, code.group(1) or "text", pad))
        elif _BORDER.match(stripped):
            table, i = _table(lines, i, resolve)
            out.extend(table)
        elif stripped.endswith("::") and not stripped.startswith(".."):
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(_inline(head + ":", resolve))
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            body, i = _block(lines, start, indent)
            out.append("")
            out.extend(_fence(body, "python" if _is_python(body) else "text", pad))
            out.append("")
        else:
            out.append(_inline(line, resolve))
            i += 1
    return "\n".join(out)
