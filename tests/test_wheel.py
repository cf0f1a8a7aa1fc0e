"""A built wheel installs into a fresh virtual environment and works there (issue #14).

The wheel is built from this checkout and installed without its dependencies into a new
venv; the dependencies come from this environment's site-packages through a path file
(installing torch again would take minutes). Path files inside that folder are not run,
so the editable install of the checkout stays invisible: the fresh venv sees only the
wheel's copy of memgen, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a clean copy: no build/ or egg-info of earlier builds
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(base / "dist"), str(source)], check=True, timeout=300,
                   env=env)
    wheels = list((base / "dist").glob("memgen_diffusion-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", purelib], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--force-reinstall", "--quiet", str(wheels[0])], check=True, timeout=300,
                   env=env)
    return venv, wheels[0]


def test_the_wheel_is_named_for_pypi_and_holds_the_package(fresh):
    _, wheel = fresh
    assert wheel.name.startswith("memgen_diffusion-0.1.0-")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "memgen/cli/main.py" in names and "memgen/neighbours/exact.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "memgen = memgen.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_command_runs_from_the_wheel(fresh, tmp_path):
    venv, _ = fresh
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([venv / "bin" / "python", "-c", "import memgen; print(memgen.__file__)"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path)
    assert str(venv) in where.stdout, where.stdout  # the wheel's copy, not the checkout
    help_ = subprocess.run([venv / "bin" / "memgen", "--help"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert help_.returncode == 0 and "classify" in help_.stdout
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", samples=rng.normal(size=(20, 4)).astype(np.float32))
    np.savez(tmp_path / "e.npz", samples=rng.normal(size=(10, 4)).astype(np.float32))
    run = subprocess.run([venv / "bin" / "memgen", "classify", "--train", "t.npz", "--eval",
                          "e.npz", "--out", "out"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_eval"] == 10
