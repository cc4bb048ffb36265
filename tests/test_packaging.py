"""Packaging (#13): a non-editable `pip install .` puts only `moshi_mlx` into site-packages, the tools as
`moshi_mlx.app` and the converter as `moshi_mlx.convert` (generic top-level `app` and `convert` packages would
clash with other projects'), and every console script runs from that install.

The install goes into a fresh venv, from a copy of the sources, so that a stale `build/` in the checkout cannot
leak old files into the wheel. It is `--no-deps`: the dependencies come from this interpreter's site-packages
through a .pth file written after the install, so only pip's build backend (setuptools, wheel) comes from the
package index, as for `pip install -e .` in tests/run.sh. Everything installed runs from an empty folder: Python
puts the current folder on sys.path, and from the repository root `import app` would find the checkout's.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from app.bench import COMMANDS as BENCHMARKS
from moshi_mlx import __version__

ROOT = Path(__file__).resolve().parents[1]
# What `pip install .` needs of the checkout, and where each source folder lands under site-packages.
BUILD_INPUTS = ("pyproject.toml", "README.md")
INSTALLED_AS = {"moshi_mlx": "moshi_mlx", "app": "moshi_mlx/app", "convert": "moshi_mlx/convert"}

# In the installed venv: `app` and `convert` must not import, and every module of the tools must (a module-level
# `from app.x import ...` left in one of them fails here).
PROBE = """
import importlib, json, pkgutil, sys
import moshi_mlx, moshi_mlx.app, moshi_mlx.convert

top = {}
for name in ("app", "convert"):
    try:
        top[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError:
        top[name] = None
failed = {}
for pkg in (moshi_mlx.app, moshi_mlx.convert):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            failed[info.name] = f"{type(e).__name__}: {e}"
print(json.dumps({"top": top, "moshi_mlx": moshi_mlx.__file__, "failed": failed}))
"""


def _run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # No PYTHONPATH: nothing of the checkout may be visible to the installed tools.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A venv with a non-editable install of a copy of the checkout: its paths and the neutral folder."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    for name in INSTALLED_AS:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    neutral = tmp / "neutral"
    neutral.mkdir()
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", venv], neutral)
    assert r.returncode == 0, r.stderr
    python = venv / "bin" / "python"
    r = _run([python, "-m", "pip", "install", "-q", "--no-deps", src], neutral, timeout=300)
    assert r.returncode == 0, f"pip install . failed (it needs setuptools and wheel from the index):\n{r.stderr}"
    r = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], neutral)
    purelib = Path(r.stdout.strip())
    # Appended after the venv's own site-packages; .pth files in those folders (the checkout's editable
    # finder among them) are not run, so the checkout stays invisible.
    deps = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    (purelib / "test-dependencies.pth").write_text("\n".join(deps) + "\n")
    (dist_info,) = purelib.glob("moshi_duplex_mlx-*.dist-info")
    return {"src": src, "venv": venv, "python": python, "purelib": purelib, "dist_info": dist_info,
            "neutral": neutral}


def test_only_moshi_mlx_goes_into_site_packages(installed):
    dist_info = installed["dist_info"]
    record = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines() if line]
    inside = [p for p in record if not p.startswith("..")]  # the console scripts lie in bin/, outside
    assert {p.split("/")[0] for p in inside} == {"moshi_mlx", dist_info.name}, sorted(inside)
    # Every source file is installed: pyproject.toml lists the packages one by one (package-dir maps app/ and
    # convert/), so a new subpackage left out of that list shows here.
    expected = {f"{INSTALLED_AS[top]}/{path.relative_to(installed['src'] / top).as_posix()}"
                for top in INSTALLED_AS for path in (installed["src"] / top).rglob("*.py")}
    assert {p for p in inside if p.endswith(".py")} == expected


def test_app_and_convert_are_not_importable_from_the_install(installed):
    r = _run([installed["python"], "-c", PROBE], installed["neutral"])
    assert r.returncode == 0, r.stderr
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    assert probe["top"] == {"app": None, "convert": None}, f"found at {probe['top']}"
    assert Path(probe["moshi_mlx"]).is_relative_to(installed["purelib"]), probe["moshi_mlx"]
    assert probe["failed"] == {}


def _console_scripts(dist_info: Path) -> dict[str, str]:
    entry_points = configparser.ConfigParser()
    entry_points.read(dist_info / "entry_points.txt")
    return dict(entry_points["console_scripts"])


def test_every_console_script_runs_version_and_help(installed):
    scripts = _console_scripts(installed["dist_info"])
    assert len(scripts) >= 5 and all(t.startswith("moshi_mlx.") for t in scripts.values()), scripts
    # Each benchmark imports its own module (and its siblings) only when named: run those too.
    runs = [[name] for name in scripts] + [["moshi-mlx-bench", b] for b in BENCHMARKS]
    for script, *lead in runs:
        prog = " ".join([script, *lead])
        for flag in ("--version", "--help"):
            r = _run([installed["venv"] / "bin" / script, *lead, flag], installed["neutral"])
            assert r.returncode == 0 and "Traceback" not in r.stderr, f"{prog} {flag}: exit {r.returncode}\n{r.stderr}"
            if flag == "--version":
                assert r.stdout.strip() == f"{prog} moshi_mlx {__version__}"
            else:
                assert r.stdout.count("\n") > 5, r.stdout


# Inside app/ and convert/, an absolute import of `app` or `convert` works only in the checkout (installed, they
# are moshi_mlx.app and moshi_mlx.convert), and so does a module name in a string (`python -m app.x`). The one
# exception is the checkout branch of convert/__main__.py's import of its sibling.
ALLOWED = {("convert/__main__.py", "app.cli_common")}
MODULE_NAME = re.compile(r"(app|convert)(\.\w+)+")


def test_the_tools_name_each_other_relatively():
    found = []
    for folder in ("app", "convert"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), where)):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value] if MODULE_NAME.fullmatch(node.value) else []
                else:
                    continue
                found += [f"{where}:{node.lineno}: {name}" for name in names
                          if name.split(".")[0] in ("app", "convert") and (where, name) not in ALLOWED]
    assert not found, "use a relative import (`from .x import ...`) or __package__:\n" + "\n".join(found)
