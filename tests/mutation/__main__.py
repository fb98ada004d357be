"""``make mutation``: run mutmut over the pure core with the unit tests, then regenerate the
``## Mutation score`` section of docs/TESTING.md.

    python -m tests.mutation [--jobs N] [--resume | --report-only]

The modules are pyproject's ``[tool.mutmut] only_mutate`` (mutmut's settings live there too: the
unit tests, without their real-server parametrisations). In a module that mixes the pure part
with I/O only the pure functions count (``ONLY_FUNCTIONS``). Every run starts from scratch
(``mutants/`` is removed), so the score is that of the code and the tests as they are.
``--resume`` goes on with a run that was stopped: mutmut keeps the mutants it killed and tests
the ones left, and those that survived, with the tests as they are now; the time reported is
that of both parts. ``--report-only`` rewrites the section from the last run's results, e.g. after
adding an explanation to ``survivors.toml``.

Exit status 0 when every module reaches the threshold and every survivor is explained, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from tests.mutation.report import (
    THRESHOLD,
    Mutant,
    diff_lines,
    explain,
    load_explanations,
    render,
    replace_section,
    scores,
    stale,
    toml_entry,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "TESTING.md"
SURVIVORS = Path(__file__).with_name("survivors.toml")
COMMAND = "make mutation"
#: Modules that mix a pure part with I/O: only these functions are mutated and scored.
ONLY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "runner/record.py": (
        "plan_record",
        "plan_outcomes",
        "cycle_gauges",
        "model_broken",
        "skipped_label",
        "plan_notices",
        "_fields",
    ),
}


def modules() -> list[str]:
    """The modules mutmut mutates, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def patterns(mods: list[str]) -> list[str]:
    """mutmut's mutant-name patterns for what is scored."""
    out = []
    for module in mods:
        only = ONLY_FUNCTIONS.get(module)
        if only is None:
            out.append(f"{dotted(module)}.*")
        else:
            out += [f"{dotted(module)}.x_{name}__mutmut_*" for name in only]
    return out


def run_mutmut(mods: list[str], jobs: int, log: Path, resume: bool = False) -> float:
    """Run mutmut (from scratch unless ``resume``); returns the seconds it took."""
    if resume:
        forget_survivors(ROOT / "mutants")
    else:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    (ROOT / "mutants").mkdir(exist_ok=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.monotonic()
    with log.open("a" if resume else "w") as out:
        done = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *patterns(mods)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"mutmut failed (exit {done.returncode}); its output is in {log.relative_to(ROOT)}")
    return time.monotonic() - started


def forget_survivors(mutants: Path) -> None:
    """Drop the survived verdicts of a stopped run, so that mutmut tests those mutants again
    (a test added since may kill them); a kill stands whatever tests are added."""
    for meta in mutants.rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        data["exit_code_by_key"] = {k: (None if v == 0 else v) for k, v in codes.items()}
        meta.write_text(json.dumps(data, indent=4))


def collect(mods: list[str]) -> list[Mutant]:
    """Every scored mutant of the last run, with the text of the surviving ones."""
    os.chdir(ROOT)  # mutmut reads its settings and mutants/ relative to the project
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    found = []
    for module in mods:
        data = SourceFileMutationData(path=module)
        data.load()
        if not data.exit_code_by_key:
            raise SystemExit(f"no mutmut results for {module}: run `{COMMAND}` first")
        only = ONLY_FUNCTIONS.get(module)
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _order(kv[0])):
            function, cls = orig_function_and_class_names_from_key(name)
            if only is not None and (cls is not None or function not in only):
                continue
            m = Mutant(name, module, f"{cls}.{function}" if cls else function, status_by_exit_code[code])
            if not m.killed:
                line, mutant = diff_lines(get_diff_for_mutant(name, path=module))
                m = Mutant(m.name, m.module, m.function, m.status, line, mutant)
            found.append(m)
    return found


def _order(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def describe_run(seconds: float | None, jobs: int) -> str:
    machine = f"{os.cpu_count()} CPU, Python {platform.python_version()}, mutmut {version('mutmut')}"
    if seconds is None:
        return machine
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s with {jobs} worker{'s' if jobs != 1 else ''}; {machine}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "1")))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="go on with a run that was stopped")
    mode.add_argument("--report-only", action="store_true", help="rewrite the report from the last run")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    try:
        explanations = load_explanations(SURVIVORS.read_text(), SURVIVORS.name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    mods = modules()
    seconds = None
    if not args.report_only:
        log = ROOT / "mutants" / "mutmut.log"
        print(f"mutmut over {len(mods)} modules with {args.jobs} worker(s); output in mutants/mutmut.log")
        spent = ROOT / "mutants" / "seconds.txt"
        before = float(spent.read_text()) if args.resume and spent.exists() else 0.0
        seconds = before + run_mutmut(mods, args.jobs, log, resume=args.resume)
        spent.write_text(f"{seconds:.1f}")
        meta = ROOT / "mutants" / "run.txt"
        meta.write_text(describe_run(seconds, args.jobs))
    else:
        meta = ROOT / "mutants" / "run.txt"
    run = meta.read_text() if meta.exists() else describe_run(None, args.jobs)

    mutants = collect(mods)
    module_scores = scores(mutants, mods, ONLY_FUNCTIONS)
    survivors = explain([m for m in mutants if not m.killed], explanations)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    section = render(module_scores, survivors, date=date, command=COMMAND, run=run)
    DOC.write_text(replace_section(DOC.read_text() if DOC.exists() else "# Testing\n", section))

    for s in module_scores:
        mark = "" if s.percent >= THRESHOLD else f"  < {THRESHOLD:.0f}%"
        print(f"{s.module:32} {s.killed:4}/{s.total:<4} {s.percent:5.1f}%{mark}")
    unexplained = [m for m, e in survivors if e is None]
    for e in stale(explanations, (m for m, _ in survivors)):
        print(f"note: {SURVIVORS.name} explains a survivor that is gone: {e.module} {e.function}: {e.line}")
    if unexplained:
        print(f"\n{len(unexplained)} unexplained survivor(s); kill them with a test, or explain them in")
        print(f"{SURVIVORS.relative_to(ROOT)}:\n")
        for m in unexplained:
            print(toml_entry(m))
    print(f"wrote {DOC.relative_to(ROOT)}")
    low = [s for s in module_scores if s.percent < THRESHOLD]
    return 1 if unexplained or low else 0


if __name__ == "__main__":
    sys.exit(main())
