"""The test suite on every supported CPython: ``nox`` (all four), ``nox -p 3.12`` (one).

Each session installs spooler with its dev extra into a fresh virtualenv under ``.nox/``,
checks that importing spooler triggers no warning, and runs pytest as the README does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

# Every CPython that pyproject.toml's requires-python (>=3.10) promises and CI runs.
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
IMPORTS = "import spooler, spooler.cli, spooler.receiver, spooler.integrations.flask"

nox.options.sessions = ["tests"]
# A missing interpreter is a setup problem to report, not one to paper over with a download.
nox.options.download_python = "never"


def _pyenv_root() -> Path:
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _pyenv_bins(versions: list[str]) -> list[str]:
    """The bin folder of the newest pyenv build of each version: 3.12.1, not 3.12-dev or 3.12.1t."""
    bins = []
    for version in versions:
        builds = [
            path
            for path in _pyenv_root().glob(f"versions/{version}.*")
            if re.fullmatch(rf"{re.escape(version)}\.[0-9]+", path.name)
        ]
        if builds:
            newest = max(builds, key=lambda path: int(path.name.rsplit(".", 1)[1]))
            bins.append(str(newest / "bin"))
    return bins


# nox looks for python3.X on PATH, where pyenv's shims answer to every such name but fail for a
# version that is not selected, so the real interpreters go first. Session commands still find
# their own virtualenv's python first.
os.environ["PATH"] = os.pathsep.join([*_pyenv_bins(PYTHONS), os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install spooler with its dev extra and run the whole suite; arguments go to pytest."""
    session.install("-e", ".[dev]")
    session.run("python", "-W", "error", "-c", IMPORTS)
    session.run("python", "-m", "pytest", "-q", *session.posargs)
