"""The README and docs/ pages: shape of the README, its runnable parts, and every command they show.

Runs what needs no external data (the "Use from Python" snippet, facerec-complexity, the scripts' --help) and
checks that every ``facerec-*`` / script command in README.md and docs/*.md names a real console script and
only options that command accepts.
"""
import contextlib
import importlib
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
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _commands(text):
    """Command lines (continuations joined, comments dropped) from bash blocks and inline code spans."""
    lines = []
    for block in _fenced(text, "bash"):
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
