"""`oversipd new-module NAME [--dir DIR]`: a module distribution that installs and passes its tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import oversipd
from oversipd.errors import EXIT_USAGE

CHECKOUT = Path(oversipd.__file__).resolve().parents[1]
CORE_FILES = ("oversipd", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")
INSTALL_TIMEOUT = 600  # seconds for one pip install (it may download from PyPI)


def oversipd_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oversipd", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_creates_the_distribution(tmp_path: Path) -> None:
    result = oversipd_command("new-module", "greeter", "--dir", "mods", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "mods" / "oversip-mod-greeter"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "oversipd/modules/greeter.py", "pyproject.toml", "setup.cfg", "tests/test_greeter.py"]
    assert not (root / "oversipd" / "__init__.py").exists(), "the oversipd package belongs to oversipd"
    module = (root / "oversipd/modules/greeter.py").read_text()
    for api in ("Logger(", "Launcher.fatal", "SystemCallbacks.on_started", "SystemCallbacks.on_reload",
                "SystemCallbacks.on_terminated", 'module_settings("greeter")'):
        assert api in module
    compile(module, "greeter.py", "exec")
    assert "oversipd_daemon" in (root / "tests/test_greeter.py").read_text()
    assert "name = oversip-mod-greeter" in (root / "setup.cfg").read_text()


@pytest.mark.parametrize("name, complaint", [
    ("9lives", "'9lives' is not a valid Python identifier"),
    ("my-module", "'my-module' is not a valid Python identifier"),
    ("", "'' is not a valid Python identifier"),
    ("class", "'class' is a Python keyword"),
])
def test_refuses_a_name_that_is_not_an_identifier(tmp_path: Path, name: str, complaint: str) -> None:
    result = oversipd_command("new-module", name, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip().splitlines() == [f"oversipd: new-module: {complaint} "
                                                  "(a module name looks like my_module)"
                                                  if "identifier" in complaint else
                                                  f"oversipd: new-module: {complaint}, not usable as a module name"]
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_directory(tmp_path: Path) -> None:
    existing = tmp_path / "oversip-mod-greeter"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    result = oversipd_command("new-module", "greeter", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == "oversipd: new-module: oversip-mod-greeter already exists; refusing to overwrite it"
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]


def copy_core_checkout(destination: Path) -> Path:
    """The core's sources, without .venv, build/ or egg-info (a stale build/ would be installed)."""
    destination.mkdir()
    for name in CORE_FILES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def run(command: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "OVERSIPD_TEST_EVENTS")}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.skipif(not (CHECKOUT / "setup.cfg").is_file(), reason="needs oversipd's source checkout")
def test_scaffold_installs_into_a_fresh_virtualenv_and_passes_its_tests(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)  # no system site-packages
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, str(copy_core_checkout(tmp_path / "core"))], cwd=tmp_path)
    run([str(venv / "bin" / "oversipd"), "new-module", "greeter", "--dir", str(tmp_path)], cwd=tmp_path)
    dist = tmp_path / "oversip-mod-greeter"

    run([*pip, f"{dist}[test]"], cwd=tmp_path)  # a normal install
    installed = run([python, "-c", "import oversipd.modules.greeter as m; print(m.__file__)"], cwd=tmp_path)
    assert installed.strip() == str(venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                                    / "site-packages" / "oversipd" / "modules" / "greeter.py")
    assert "3 passed" in run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dist)

    run([*pip, "-e", f"{dist}[test]"], cwd=tmp_path)  # an editable install
    editable = run([python, "-c", "import oversipd, oversipd.modules.greeter as m; print(m.__file__); "
                    "print(oversipd.__version__)"], cwd=tmp_path)
    assert editable.split() == [str(dist / "oversipd" / "modules" / "greeter.py"), oversipd.__version__]
    assert "3 passed" in run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(dist / "tests")],
                             cwd=tmp_path)


def test_with_resource_creates_a_module_holding_a_connection_per_worker(tmp_path: Path) -> None:
    result = oversipd_command("new-module", "cache", "--with-resource", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "oversip-mod-cache"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "oversipd/modules/cache.py", "pyproject.toml", "setup.cfg", "tests/test_cache.py"]
    module = (root / "oversipd/modules/cache.py").read_text()
    for api in ("worker_resource(", "ResourceError(", "Launcher.fatal", "def add_connection(", "def connection("):
        assert api in module
    assert "SystemCallbacks.on_started" not in module, "the core opens and closes the resource"
    compile(module, "cache.py", "exec")
    compile((root / "tests/test_cache.py").read_text(), "test_cache.py", "exec")


@pytest.mark.skipif(not (CHECKOUT / "setup.cfg").is_file(), reason="needs oversipd's source checkout")
def test_with_resource_installs_into_a_fresh_virtualenv_and_passes_its_tests(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, str(copy_core_checkout(tmp_path / "core"))], cwd=tmp_path)
    run([str(venv / "bin" / "oversipd"), "new-module", "cache", "--with-resource", "--dir", str(tmp_path)],
        cwd=tmp_path)
    dist = tmp_path / "oversip-mod-cache"
    run([*pip, f"{dist}[test]"], cwd=tmp_path)
    assert "3 passed" in run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dist)
