"""The mutation report, pure: which survivors are explained, each module's score, and the
``## Mutation score`` section of docs/TESTING.md. ``__main__`` runs mutmut and does the I/O.

A survivor's explanation is keyed by what a reader recognises and what survives a code change
elsewhere in the file: the module, the function, the mutated line's text and the mutant's text
(whitespace collapsed), never mutmut's mutant number, which shifts whenever code moves.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

HEADING = "## Mutation score"
#: The score every module must reach.
THRESHOLD = 90.0
#: mutmut's statuses that count as a kill (a timeout is a mutant the tests stopped).
KILLED = frozenset({"killed", "timeout", "caught by type check"})


def normalize(text: str) -> str:
    """Code text with every run of whitespace made one space, so that indentation and line
    breaks do not change a key."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Mutant:
    """One mutant and what became of it."""

    name: str  # mutmut's name, e.g. runner.breaker.x_gate__mutmut_12
    module: str  # runner/breaker.py
    function: str  # gate, or BreakerState.from_fields for a method
    status: str  # mutmut's status: killed, survived, no tests, timeout, ...
    line: str = ""  # the original line(s), normalized
    mutant: str = ""  # what the mutation made of them, normalized ("" when they were removed)

    @property
    def killed(self) -> bool:
        return self.status in KILLED


@dataclass(frozen=True)
class Explanation:
    """Why a surviving mutant cannot change behaviour."""

    module: str
    function: str
    line: str
    mutant: str
    why: str

    def matches(self, m: Mutant) -> bool:
        return (self.module, self.function, normalize(self.line), normalize(self.mutant)) == (
            m.module,
            m.function,
            m.line,
            m.mutant,
        )


def diff_lines(diff: str) -> tuple[str, str]:
    """(original, mutated) text of a unified diff of one function and its mutant, normalized."""
    removed, added = [], []
    for row in diff.splitlines():
        if row.startswith(("---", "+++")):
            continue
        if row.startswith("-"):
            removed.append(row[1:])
        elif row.startswith("+"):
            added.append(row[1:])
    return normalize("\n".join(removed)), normalize("\n".join(added))


def load_explanations(text: str, source: str = "survivors.toml") -> list[Explanation]:
    """The ``[[survivor]]`` entries of the explanations file; ``ValueError`` names a bad one."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML ({exc})") from None
    stray = sorted(set(data) - {"survivor"})
    if stray:  # keys above the first [[survivor]] header: an entry that lost its header
        raise ValueError(f"{source}: {', '.join(stray)} outside a [[survivor]] entry")
    fields = ("module", "function", "line", "mutant", "why")
    out = []
    for i, entry in enumerate(data.get("survivor", []), 1):
        missing = [f for f in fields if not isinstance(entry.get(f), str)]
        extra = sorted(set(entry) - set(fields))
        if missing or extra or not entry["why"].strip():
            raise ValueError(
                f"{source}: survivor #{i} needs the text fields {', '.join(fields)} and nothing else "
                f"(missing or empty: {', '.join(missing) or 'why'}; unknown: {', '.join(extra) or 'none'})"
            )
        out.append(Explanation(**{f: entry[f] for f in fields}))
    return out


def explain(
    survivors: Iterable[Mutant], explanations: list[Explanation]
) -> list[tuple[Mutant, Explanation | None]]:
    """Each survivor with its explanation, or None when nobody has explained it yet."""
    return [(m, next((e for e in explanations if e.matches(m)), None)) for m in survivors]


def stale(explanations: list[Explanation], survivors: Iterable[Mutant]) -> list[Explanation]:
    """Explanations no survivor matches any more (the line changed, or a test now kills it)."""
    left = list(survivors)
    return [e for e in explanations if not any(e.matches(m) for m in left)]


@dataclass(frozen=True)
class Score:
    """A module's mutants and how many the tests killed."""

    module: str
    scope: str  # "" for the whole module, else the functions mutated
    total: int
    killed: int

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0


def scores(mutants: Iterable[Mutant], modules: list[str], scopes: dict[str, tuple[str, ...]]) -> list[Score]:
    """One score per module, in the order given."""
    by_module: dict[str, list[Mutant]] = {m: [] for m in modules}
    for m in mutants:
        by_module[m.module].append(m)
    return [
        Score(
            module,
            ", ".join(scopes.get(module, ())),
            len(found),
            sum(m.killed for m in found),
        )
        for module, found in by_module.items()
    ]


def _code(text: str) -> str:
    """Markdown inline code for any text, backticks included."""
    if not text:
        return "(the line removed)"
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render(
    module_scores: list[Score],
    survivors: list[tuple[Mutant, Explanation | None]],
    *,
    date: str,
    command: str,
    run: str,
) -> str:
    """The ``## Mutation score`` section (ends with a newline)."""
    out = [
        HEADING,
        "",
        f"Generated by `{command}` on {date} ({run}); do not edit by hand. A mutant is a small change "
        "to the code (`<` for `<=`, another constant, an argument dropped); the unit tests kill it when "
        f"one of them fails. The score is the share of mutants killed; every module must reach "
        f"{THRESHOLD:.0f}%. A surviving mutant that cannot change behaviour is explained in "
        "`tests/mutation/survivors.toml`, keyed by module, function and the mutated line, and listed "
        "below; a survivor nobody explained fails the command.",
        "",
        "| module | mutants | killed | survived | score |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in module_scores:
        name = f"`{s.module}`" + (f" ({s.scope})" if s.scope else "")
        out.append(f"| {name} | {s.total} | {s.killed} | {s.total - s.killed} | {s.percent:.1f}% |")
    total = sum(s.total for s in module_scores)
    killed = sum(s.killed for s in module_scores)
    overall = 100.0 * killed / total if total else 100.0
    out.append(f"| all | {total} | {killed} | {total - killed} | {overall:.1f}% |")
    out += ["", "### Surviving mutants", ""]
    if not survivors:
        out.append("None.")
    for m, e in survivors:
        where = f"`{m.module}` `{m.function}`" + ("" if m.status == "survived" else f" ({m.status})")
        why = e.why.strip() if e else "**unexplained**: a test is missing, or the code is wrong"
        out.append(f"- {where}: {_code(m.line)} → {_code(m.mutant)}: {why}")
    return "\n".join(out) + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with its ``## Mutation score`` section replaced by ``section`` (up to the next
    ``## `` heading), or with ``section`` appended; every other section is kept as it is."""
    lines = document.splitlines(keepends=True)
    start = next((i for i, row in enumerate(lines) if row.rstrip() == HEADING), None)
    if start is None:
        body = document.rstrip("\n")
        return (body + "\n\n" if body else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def toml_entry(m: Mutant) -> str:
    """An explanations-file entry to fill in for an unexplained survivor."""

    def quoted(text: str) -> str:
        return "'" + text + "'" if "'" not in text else '"""' + text.replace("\\", "\\\\") + '"""'

    return (
        "[[survivor]]\n"
        f'module = "{m.module}"\n'
        f'function = "{m.function}"\n'
        f"line = {quoted(m.line)}\n"
        f"mutant = {quoted(m.mutant)}\n"
        'why = ""\n'
    )
