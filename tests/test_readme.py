"""The README and docs/ pages against the code: shape of the README, its runnable parts, every command, file
and keyword they name.

Runs what needs no external data (the "Use from Python" snippet, facerec-complexity, the scripts' --help) and
checks that every ``facerec-*`` / script command in README.md and docs/*.md names a real console script and
only options that command accepts, that every linked file and every repository path in a code span exists,
and that the keyword lists of ``DRConv2d`` and ``create_pointwise_conv`` in docs/layers.md (and in the
``facerec.nn.pointwise`` docstring) are the signatures' own.
"""
import ast
import contextlib
import importlib
import inspect
import io
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
WRAPPERS = {"train_face.py": "facerec-train", "eval_megaface.py": "facerec-megaface",
            "visualize_masks.py": "facerec-masks"}
SUBCOMMANDS = {"facerec-megaface": ("extract", "score")}


def _fenced(text, lang):
    """Bodies of the fenced blocks opened with ```<lang> (``""``: a bare fence), indented ones included."""
    blocks, open_lang, body = [], None, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if open_lang is None:
                open_lang, body = line.lstrip()[3:].strip(), []
            else:
                if open_lang == lang:
                    blocks.append("".join(f"{b}\n" for b in body))
                open_lang = None
        elif open_lang is not None:
            body.append(line)
    return blocks


def _commands(text):
    """Command lines (continuations joined, comments dropped) from shell blocks (```bash or a bare ```) and
    inline code spans."""
    lines = []
    for block in _fenced(text, "bash") + _fenced(text, ""):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`\n]*(?:facerec-|train_face\.py|eval_megaface\.py|visualize_masks\.py)[^`\n]*)`", text)
    out = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def _invocations(line):
    """(script, argument text) for each facerec command in a command line."""
    found = []
    pattern = r"(?<![\w./-])(facerec-[a-z-]+|train_face\.py|eval_megaface\.py|visualize_masks\.py)\b(.*?)(?=&&|\||;|$)"
    for name, rest in re.findall(pattern, line):
        found.append((WRAPPERS.get(name, name), rest))
    return found


def _help(script, sub=None):
    module, func = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), func)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(([sub] if sub else []) + ["--help"])
    return buf.getvalue()


def test_readme_shape():
    assert len(README.splitlines()) <= 300
    for title in ("## Quick start", "## What DRConv is", "## Install", "## Train on MS1M-V2", "## Score MegaFace",
                  "## Verify on .bin sets", "## Draw masks for a paper", "## Use from Python", "## Results",
                  "### Demo", "### Real faces", "### Speed"):
        assert f"\n{title}\n" in README, title
    assert "docs/real_masks.png" in README and (ROOT / "docs" / "real_masks.png").is_file()
    for link in re.findall(r"\]\((docs/[^)#]+|data/[^)#]+)", README):      # every linked file exists
        assert (ROOT / link).exists(), link


def test_quick_start_is_one_block_of_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = _fenced(section, "bash")
    assert len(blocks) == 1
    first, second = blocks[0].strip().splitlines()
    for cmd in (first, second):
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/pip install") and "-c constraints.txt" in cmd
    assert first.endswith("&& .venv/bin/facerec-demo")
    assert second.endswith("&& .venv/bin/python -m pytest -q")
    assert (ROOT / "constraints.txt").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_stay_inside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "/work/" not in text and "specs/" not in text
    for ckpt in re.findall(r"ckpt_(\d+)\.pt", text):
        assert len(ckpt) == 8, f"{page.name}: checkpoint names have 8 digits, got ckpt_{ckpt}.pt"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not link.startswith("http"):
            assert (page.parent / link).exists(), f"{page.name} links to a missing {link}"


def test_console_scripts_are_installed_and_load():
    installed = {ep.name: ep for ep in metadata.entry_points(group="console_scripts") if ep.name in SCRIPTS}
    assert set(installed) == set(SCRIPTS), "reinstall with pip install -e . to register new scripts"
    for name, ep in installed.items():
        assert ep.value == SCRIPTS[name] and callable(ep.load())


def test_every_command_in_readme_and_docs_uses_real_scripts_and_options():
    helps = {}
    checked = 0
    for page in PAGES:
        for line in _commands(page.read_text()):
            for script, rest in _invocations(line):
                assert script in SCRIPTS, f"{page.name}: unknown command {script!r} in {line!r}"
                sub = next((s for s in SUBCOMMANDS.get(script, ()) if re.match(rf"\s*{s}\b", rest)), None)
                if script in SUBCOMMANDS and sub is None and rest.strip() not in ("", "..."):
                    pytest.fail(f"{page.name}: {script} needs a subcommand in {line!r}")
                key = (script, sub)
                if key not in helps:
                    helps[key] = _help(script, sub)
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
                    assert flag in helps[key], f"{page.name}: {script} {sub or ''} has no option {flag} ({line!r})"
                checked += 1
    assert checked >= 30


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_top_level_scripts_still_run(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert WRAPPERS[script] in proc.stdout


def test_use_from_python_snippet_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    section = README.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    (snippet,) = _fenced(section, "python")
    exec(compile(snippet, "README.md: Use from Python", "exec"), {})
    assert capsys.readouterr().out.strip() == "0.05 (2, 128)"


def test_complexity_command_of_the_readme(capsys):
    from facerec.cli.complexity import main

    (line,) = [c for c in _commands(README) if c.startswith("facerec-complexity --model")]
    assert main(line.split()[1:]) == 0
    out = capsys.readouterr().out
    assert "| drconv_mobilefacenet | 112x96 |" in out and "MADDs (M), paper Table 2" in out


# Repository paths named in code spans: `facerec/...`, `benchmarks/...`, `configs/...`, `tests/...`, `docs/...`
# (a `<placeholder>` or `*` is a glob; `file.py::test_name` names a test in that file).
_REPO_PATH = re.compile(r"`((?:facerec|benchmarks|configs|tests|docs)/[^`\s]*)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_in_pages_exist(page):
    for named in _REPO_PATH.findall(page.read_text()):
        path, _, test = named.partition("::")
        pattern = re.sub(r"<[^>]*>", "*", path.rstrip("/"))
        if "*" in pattern:
            assert list(ROOT.glob(pattern)), f"{page.name}: nothing matches {named}"
            continue
        assert (ROOT / pattern).exists(), f"{page.name} names a missing {named}"
        if test:
            assert re.search(rf"^def {re.escape(test)}\(", (ROOT / pattern).read_text(), re.M), \
                f"{page.name}: {path} has no test {test}"


LAYERS = (ROOT / "docs" / "layers.md").read_text()
# What create_pointwise_conv itself passes to DRConv2d (the rest of DRConv2d's parameters are kind keywords).
_POINTWISE_FIXED = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias"}


def _section(text, title):
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _documented_signature(section, name):
    """{parameter: default source or None} of the ``name(...)`` call shown in the section's python block."""
    (block,) = [b for b in _fenced(section, "python") if b.lstrip().startswith(f"{name}(")]
    call = block.strip().replace(f"{name}(", "def _(", 1) + ": pass"
    args = ast.parse(call).body[0].args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + [ast.unparse(d) for d in args.defaults]
    out = {a.arg: d for a, d in zip(positional, defaults)}
    out.update({a.arg: (ast.unparse(d) if d is not None else None) for a, d in zip(args.kwonlyargs, args.kw_defaults)})
    return out


def _code_names(cell):
    return re.findall(r"`([a-z_]+)`", cell)


def test_drconv2d_keywords_in_layers_md_are_the_signature():
    from facerec.nn import DRConv2d

    actual = {n: (None if p.default is inspect.Parameter.empty else repr(p.default))
              for n, p in inspect.signature(DRConv2d).parameters.items()}
    section = _section(LAYERS, "DRConv2d keywords")
    documented = _documented_signature(section, "DRConv2d")
    assert list(documented) == list(actual), "docs/layers.md: DRConv2d's parameters, in order"
    assert {n: d and repr(ast.literal_eval(d)) for n, d in documented.items()} == actual, "the defaults"
    table = [row for row in section.splitlines() if row.startswith("| `")]
    assert sorted(n for row in table for n in _code_names(row.split("|")[1])) == sorted(actual), \
        "docs/layers.md: one table row per DRConv2d keyword"


def _pointwise_kinds_documented():
    """{kind: [keyword names]} from the create_pointwise_conv table of docs/layers.md."""
    kinds = {}
    for row in _section(LAYERS, "create_pointwise_conv keywords").splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            kinds[cells[0].strip("`")] = _code_names(cells[2])
    return kinds


def test_create_pointwise_conv_keywords_in_layers_md_are_the_accepted_ones():
    from facerec.nn import DRConv2d, pointwise

    documented = _pointwise_kinds_documented()
    assert sorted(documented) == sorted(pointwise.POINTWISE_KINDS)
    drconv = [n for n in inspect.signature(DRConv2d).parameters if n not in _POINTWISE_FIXED]
    assert documented["drconv"] == drconv, "docs/layers.md: the drconv kind takes DRConv2d's other keywords"
    for kind, names in documented.items():
        assert sorted(names) == sorted(pointwise._KIND_KEYWORDS[kind]), f"create_pointwise_conv({kind!r}, ...)"


def test_pointwise_module_docstring_lists_the_accepted_keywords():
    from facerec.nn import pointwise

    doc = pointwise.__doc__
    for kind, names in pointwise._KIND_KEYWORDS.items():
        line = re.search(rf'^\* "{kind}":(.*?)(?=^\*|^\S|\Z)', doc, re.M | re.S)
        assert line, f"facerec/nn/pointwise.py: no entry for {kind!r}"
        listed = set(re.findall(r"\b([a-z_]+)=", line.group(1))) - {"stride", "bias"}  # every kind's own
        assert sorted(listed) == sorted(names), f"facerec/nn/pointwise.py docstring, kind {kind!r}"
