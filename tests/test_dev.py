"""``./dev``'s set-up of ``.venv``: it recovers from a half-made one instead of failing on every later run.

Each test copies ``./dev`` and ``pyproject.toml`` into a temporary directory and sources ``./dev`` there (it
then only defines its functions), with the project's installation (``install_project``, which needs the
network and a minute) replaced by a line in a log, and Python's venv by a fast stand-in (`FAKE_PYTHON`). The
half-made venvs are real: ``python3 -m venv`` without ``ensurepip`` leaves one without pip, as
``--without-pip`` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

#: ``install_project`` replaced: the tests check whether it ran, not pip's download.
STUB_INSTALL = 'install_project() { echo "install_project" >>calls.log; }'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "dev", tmp_path / "dev")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def dev(project: Path, *stubs: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``setup_venv`` of the copy in ``project``, with shell functions redefined by ``stubs``."""
    script = "\n".join(["source ./dev", STUB_INSTALL, *stubs, "setup_venv"])
    return subprocess.run(
        ["bash", "-c", script], cwd=project, capture_output=True, text=True, timeout=timeout, check=False
    )


def calls(project: Path) -> list[str]:
    log = project / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def has_pip(project: Path) -> bool:
    result = subprocess.run(
        [project / ".venv" / "bin" / "python", "-m", "pip", "--version"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


#: A stand-in for Python's venv, fast: a venv without pip, given a pip that answers ``--version`` when
#: ``WITH_PIP`` is set (the real ensurepip takes seconds); other calls go to the real interpreter.
FAKE_PYTHON = f"""#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
    "{sys.executable}" -m venv --without-pip "$3" || exit 1
    if [ -n "${{WITH_PIP:-}}" ]; then
        site=$("$3/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        mkdir -p "$site/pip" && touch "$site/pip/__init__.py"
        echo 'print("pip (fake)")' >"$site/pip/__main__.py"
        exit 0
    fi
    echo "The virtual environment was not created successfully because ensurepip is not available." >&2
    exit 1
fi
exec "{sys.executable}" "$@"
"""


@pytest.fixture
def fake_python(project: Path) -> str:
    path = project / "fakepython"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return f'find_python() {{ echo "{path}"; }}'


def test_a_venv_without_pip_is_made_again_and_then_left_alone(project: Path, fake_python: str) -> None:
    """What Debian leaves when python3-venv is missing (made here, for real, with ``--without-pip``).
    Before, every later run failed at ``pip install --upgrade pip`` with "No module named pip"."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", project / ".venv"], check=True, timeout=60)
    assert not has_pip(project)
    first = dev(project, fake_python, "export WITH_PIP=1")
    assert first.returncode == 0, first.stderr
    assert "recreating .venv" in first.stderr
    assert "it has no pip" in first.stderr
    assert has_pip(project)
    assert calls(project) == ["install_project"]
    assert (project / ".venv" / ".vwos-installed").read_text().strip()
    marker = project / ".venv" / "kept"
    marker.write_text("")
    again = dev(project, fake_python)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""  # nothing to do: it starts at once
    assert calls(project) == ["install_project"]
    assert marker.exists()


def test_a_venv_whose_python_is_a_broken_link_is_made_again(project: Path, fake_python: str) -> None:
    """The Python the venv was made with is gone (upgraded, removed): its bin/python dangles."""
    made = dev(project, fake_python, "export WITH_PIP=1")
    assert made.returncode == 0, made.stderr
    assert "creating .venv" in made.stderr
    python = project / ".venv" / "bin" / "python"
    python.unlink()
    python.symlink_to(project / "no-such-python")
    assert not python.exists()
    again = dev(project, fake_python, "export WITH_PIP=1")
    assert again.returncode == 0, again.stderr
    assert "recreating .venv" in again.stderr
    assert "its python does not run" in again.stderr
    assert python.exists()
    assert has_pip(project)
    assert calls(project) == ["install_project", "install_project"]  # the stamp went with the old venv
    assert (project / ".venv" / ".vwos-installed").exists()


def test_a_venv_that_cannot_be_made_with_pip_is_not_left_behind(project: Path, fake_python: str) -> None:
    """No ensurepip and no way to install python3-venv: a clear error, and no half-made .venv, so the run
    after python3-venv is installed starts from scratch (before, that run failed too, on the leftover)."""
    failed = dev(project, fake_python, 'apt_install() { echo "apt_install $*" >>calls.log; return 1; }')
    assert failed.returncode == 1
    assert "cannot make a virtualenv with pip" in failed.stderr
    assert "install python3-venv" in failed.stderr
    assert not os.path.lexists(project / ".venv")
    assert calls(project) == ["apt_install python3-venv"]
    fixed = dev(project, fake_python, "export WITH_PIP=1")  # python3-venv is there now
    assert fixed.returncode == 0, fixed.stderr
    assert "creating .venv" in fixed.stderr
    assert calls(project) == ["apt_install python3-venv", "install_project"]


def test_a_changed_pyproject_installs_again_into_the_same_venv(project: Path, fake_python: str) -> None:
    made = dev(project, fake_python, "export WITH_PIP=1")
    assert made.returncode == 0, made.stderr
    marker = project / ".venv" / "kept"
    marker.write_text("")
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n# changed\n")
    again = dev(project, fake_python, "export WITH_PIP=1")
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stderr
    assert marker.exists()
    assert calls(project) == ["install_project", "install_project"]


def packages_installed(project: Path, arch: str) -> subprocess.CompletedProcess[str]:
    """``install_test_packages`` of the copy in ``project`` on a machine of Debian architecture ``arch``,
    with apt replaced by a line in the log."""
    script = "\n".join(
        [
            "source ./dev",
            f"debian_arch() {{ echo {arch}; }}",
            'apt_install() { echo "apt_install $*" >>calls.log; }',
            "install_test_packages",
        ]
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=project, capture_output=True, text=True, timeout=60, check=False
    )


def test_user_mode_linux_is_installed_only_where_debian_builds_it(project: Path) -> None:
    """Debian has user-mode-linux for amd64 only: on arm64 (the Raspberry Pi) asking apt for it failed the
    whole `./dev test`; now it is left out, with a line saying so, and the vcan tests skip with the reason."""
    amd64 = packages_installed(project, "amd64")
    assert amd64.returncode == 0, amd64.stderr
    assert amd64.stderr == ""
    [line] = calls(project)
    assert line.startswith("apt_install ")
    assert "user-mode-linux" in line.split()
    assert {"can-utils", "iproute2", "kmod", "mosquitto"} <= set(line.split())
    (project / "calls.log").unlink()
    arm64 = packages_installed(project, "arm64")
    assert arm64.returncode == 0, arm64.stderr
    [line] = calls(project)
    assert "user-mode-linux" not in line.split()
    assert {"can-utils", "iproute2", "kmod", "mosquitto"} <= set(line.split())
    assert "no user-mode-linux on arm64 (Debian builds it for amd64 only)" in arm64.stderr
