"""The README and docs/benchmarks.md name only things that exist, and the packaging matches.

Every `--flag` of a `run.py` or `tools/X.py` command line is one that program accepts (its
real `--helpfull` / `--help`); a flag in prose is one of run.py's or of a tool named in the
same section; every `tools/X.py`, `tests/X.py` and recipe named is a file; every
`from simclr_tf2... import X`, `simclr_tf2.a.b` and `name(arg, ...)` of the library resolves,
with those argument names. (tests/test_readme.py runs the README's commands and examples.)
"""

import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", os.path.join("docs", "benchmarks.md")]

# A flag: --name, not part of --name-with-dashes (pip's --no-deps) or of a longer word.
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)(?![\w-])")
# A program whose flags are checked, anywhere in a command line.
PROGRAM = re.compile(r"(?<![\w/])(run\.py|tools/\w+\.py)")
# Programs of other projects: their flags are theirs.
EXTERNAL = re.compile(r"(?<![\w/-])(pytest|ruff|pip|tensorboard|gsutil)(?![\w-])")
TOOL_OPTION = re.compile(r"^\s{2}(?:-\w, )?--([a-z][\w-]*)", re.M)
ABSL_FLAG = re.compile(r"^\s*(?:-[?a-z],)?--(\[no\])?([a-z]\w*):", re.M)

HELP_SCRIPT = """
import contextlib, io, json, runpy, sys
out = {}
for script in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [script, "--helpfull" if script == "run.py" else "--help"]
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit:
            pass
    out[script] = buf.getvalue()
sys.stdout.write("\\nHELP_JSON " + json.dumps(out) + "\\n")
"""


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def _sections(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(section text, code lines, prose) per heading; continuation lines joined."""
    sections, in_code = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            in_code = not in_code
            if in_code:
                sections[-1][1].append("")
            continue
        if not in_code and re.match(r"#{1,4} ", line) or not sections:
            sections.append(["", [], [""]])
        section = sections[-1]
        section[0] += line
        if in_code:
            section[1][-1] += line
        else:
            section[2][-1] += line
    return [
        (text, [c for block in code for c in block.replace("\\\n", " ").splitlines()], prose)
        for text, code, prose in sections
    ]


def _commands(text: str) -> list[tuple[str, str]]:
    """(program, flag) for every flag that follows run.py or tools/X.py in a command."""
    found = []
    for line in text.splitlines():
        program = None
        for match in re.finditer(f"{PROGRAM.pattern}|{EXTERNAL.pattern}|{FLAG.pattern}", line):
            if match.group(1):
                program = match.group(1)
            elif match.group(2):
                program = "external"
            elif program not in (None, "external"):
                found.append((program, match.group(3)))
    return found


def _split_prose(paragraph: str) -> tuple[list[str], str]:
    """Inline code spans that are commands, and the rest of the text."""
    commands, rest = [], paragraph
    for span in re.findall(r"`([^`]+)`", paragraph):
        if PROGRAM.search(span) or EXTERNAL.search(span):
            commands.append(span)
            rest = rest.replace(f"`{span}`", " ", 1)
    return commands, rest


@pytest.fixture(scope="module")
def helps() -> dict[str, set[str]]:
    """Each program's flags, from its own --helpfull / --help, in one process."""
    # The tools the docs run (some tools/*.py are modules with no --help).
    run = set(re.findall(r"python (tools/\w+\.py)", "".join(_read(d) for d in DOCS)))
    programs = ["run.py", *sorted(run)]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *programs],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = json.loads(proc.stdout.split("\nHELP_JSON ", 1)[1])
    flags = {}
    for program, text in texts.items():
        if program == "run.py":
            names = set()
            for negatable, name in ABSL_FLAG.findall(text):
                names.add(name)
                if negatable:
                    names.add("no" + name)
        else:
            names = set(TOOL_OPTION.findall(text))
        flags[program] = names
    assert {"flagfile", "helpfull", "model_dir", "nouse_blur"} <= flags["run.py"]
    assert {"saved_model", "checkpoint"} <= flags["tools/linear_eval.py"]
    return flags


def unknown_flags(text: str, helps: dict[str, set[str]]) -> list[str]:
    """The flags that `text` (a markdown file) names and no program of ours takes."""
    bad = []
    for section, code, prose in _sections(text):
        tools = {f"tools/{n}" for n in re.findall(r"tools/(\w+\.py)", section)}
        commands = list(code)
        for paragraph in prose:
            spans, rest = _split_prose(paragraph)
            commands += spans
            allowed = set(helps["run.py"]).union(*(helps.get(t, set()) for t in tools))
            bad += [f"--{f} (prose)" for f in FLAG.findall(rest) if f not in allowed]
        for line in commands:
            for program, flag in _commands(line):
                if flag not in helps.get(program, set()):
                    bad.append(f"--{flag} ({program})")
    return bad


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_exists(doc, helps):
    text = _read(doc)
    assert len(FLAG.findall(text)) > 20, "the flag pattern found almost nothing"
    assert unknown_flags(text, helps) == []


def test_a_made_up_flag_is_caught(helps):
    # The check itself can fail: in a command, in a tool's command and in prose.
    text = _read("README.md")
    broken = text.replace("--model_dir=/tmp/simclr_quickstart", "--modle_dir=/tmp/x", 1)
    assert unknown_flags(broken, helps) == ["--modle_dir (run.py)"]
    broken = text.replace("--dataset=digits --out=views.png", "--dataset=digits --batch=1")
    assert unknown_flags(broken, helps) == ["--batch (tools/show_augmentations.py)"]
    broken = text.replace("`--cache_dataset` keeps", "`--cache_data` keeps")
    assert unknown_flags(broken, helps) == ["--cache_data (prose)"]


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_file_exists(doc):
    text = _read(doc)
    missing = []
    for path in set(re.findall(r"(?<![\w/])((?:tools|tests)/\w+\.(?:py|md))", text)):
        if not os.path.isfile(os.path.join(ROOT, path)):
            missing.append(path)
    recipes = os.path.join(ROOT, "simclr_tf2", "recipes")
    for name in set(re.findall(r"([\w*]+\.flags)", text)):
        pattern = re.compile(name.replace("*", r"\w*") + "$")
        if not any(pattern.match(f) for f in os.listdir(recipes)):
            missing.append(name)
    for target in re.findall(r"\]\(([^)#:]+)\)", text):  # markdown links and images
        if not os.path.exists(os.path.join(ROOT, os.path.dirname(doc), target)):
            missing.append(target)
    for path in re.findall(r"`((?:docs/)?[\w.]+\.md|LICENSE)`", text):
        if not os.path.exists(os.path.join(ROOT, path)):
            missing.append(path)
    assert missing == []


def _resolve(dotted: str):
    """The object a dotted name starting with simclr_tf2 names (ImportError/AttributeError)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        with contextlib.suppress(ModuleNotFoundError):
            obj = importlib.import_module(".".join(parts[:i]))
            break
    for attribute in parts[i:]:
        obj = getattr(obj, attribute)
    return obj


def _parameters(obj) -> set[str]:
    return set(inspect.signature(obj).parameters)


def test_every_python_name_resolves():
    text = _read("README.md")
    names = set()
    for module, imported in re.findall(r"from (simclr_tf2[\w.]*) import ([\w, ]+)", text):
        names |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip() != "..."}
    names |= set(re.findall(r"(?<![\w.])simclr_tf2(?:\.\w+)+", text))
    calls = re.findall(r"`([\w.]+)\(([^)`]*)\)`", text)
    for row in re.findall(r"^\| `([\w.]+)\(", text, flags=re.M):
        # A table's first column names the library's own callables.
        names.add(row if row.startswith("simclr_tf2.") else f"simclr_tf2.{row}")
    assert len(names) > 15, names
    unresolved = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            unresolved.append(f"{name}: {error}")
    # The argument names written in `name(a, b, ...)` are the callable's parameters.
    for name, args in calls:
        full = name if name.startswith("simclr_tf2.") else f"simclr_tf2.{name}"
        if full not in names:
            continue  # not ours (a method, TensorFlow's)
        with contextlib.suppress(ImportError, AttributeError):
            params = _parameters(_resolve(full))
            for arg in re.findall(r"\w+", args.replace("...", "")):
                if arg not in params:
                    unresolved.append(f"{name}({arg}): no such parameter")
    assert unresolved == []


def test_readme_holds_no_measurement_log():
    # Measured figures live in docs/benchmarks.md with their date and commit; the README links
    # there. A matmul peak, a date or a commit id in the README is a measurement that moved back.
    text = _read("README.md")
    found = re.findall(r"GFLOP/s|\b20\d\d-\d\d-\d\d\b|\b(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text)
    assert found == []
    assert "docs/benchmarks.md" in text


def test_readme_test_command_is_what_ci_runs():
    command = 'python -m pytest -q -n 2 --dist loadfile -m "not reliability and not long"'
    ci = [line.strip() for line in _read(".ci/run").splitlines()]
    assert command in ci
    # The groups the README's command leaves out still run in CI.
    assert 'python -m pytest -q -n 2 --dist loadfile -m "reliability or long"' in ci
    test_section = re.search(r"^## Test\n(.*?)^## ", _read("README.md"), flags=re.M | re.S)
    assert f"```bash\n{command}\n```" in test_section.group(1)


def test_packaging_matches_the_pins():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    pins = {}
    for line in _read("requirements.txt").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    for line in project["dependencies"] + project["optional-dependencies"]["plots"]:
        requirement = Requirement(line)
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name]), (line, pins[name])
    (gpu,) = project["optional-dependencies"]["gpu"]
    gpu = Requirement(gpu)
    assert gpu.name == "tensorflow" and gpu.extras == {"and-cuda"}
    assert gpu.specifier.contains(pins["tensorflow"])
    # The README's GPU command pins the same TensorFlow as requirements.txt.
    assert f'"tensorflow[and-cuda]=={pins["tensorflow"]}"' in _read("README.md")
    assert project["license"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0" in _read("LICENSE")
