"""The systemd unit as shipped, and `make install` / `make uninstall` with PREFIX and DESTDIR."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service_harness import REPO, make_install, staged_install

UNIT = REPO / "systemd" / "oversipd.service"
MAX_EXPOSURE = 2.5

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_declares_what_spec_6_asks() -> None:
    settings = unit_settings(UNIT)
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == ["/usr/local/bin/oversipd run -c /etc/oversipd/oversipd.conf"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"] == ["oversipd"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "RestrictAddressFamilies", "SystemCallFilter", "RuntimeDirectory", "StateDirectory"):
        assert key in settings, key


@needs_systemd_analyze
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path_factory, tmp_path) -> None:
    # verify checks that ExecStart= is executable: point it at the staged
    # script (the staged /usr/local/bin/oversipd links to its final place).
    stage = staged_install(tmp_path_factory)
    unit = tmp_path / "oversipd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/oversipd",
                                             f"{stage}/usr/local/lib/oversipd/bin/oversipd"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_security_exposure_is_at_most_2_5() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True)
    found = re.search(r"Overall exposure level for oversipd\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"\nsystemd-analyze security --offline=true systemd/oversipd.service: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE


def test_install_with_prefix_and_destdir(tmp_path) -> None:
    result = make_install(tmp_path, "PREFIX=/usr")
    assert result.returncode == 0, result.stdout + result.stderr
    unit = tmp_path / "usr/lib/systemd/system/oversipd.service"
    assert unit_settings(unit)["ExecStart"] == ["/usr/bin/oversipd run -c /etc/oversipd/oversipd.conf"]
    launcher = tmp_path / "usr/bin/oversipd"
    assert launcher.is_symlink() and str(launcher.readlink()) == "/usr/lib/oversipd/bin/oversipd"
    script = tmp_path / "usr/lib/oversipd/bin/oversipd"
    assert script.read_text().splitlines()[0] == "#!/usr/lib/oversipd/bin/python"
    assert "stage" not in (tmp_path / "usr/lib/oversipd/pyvenv.cfg").read_text().split("command")[0]
    assert (tmp_path / "usr/lib/sysusers.d/oversipd.conf").read_text().count("u oversipd") == 1
    assert (tmp_path / "usr/lib/tmpfiles.d/oversipd.conf").exists()
    assert (tmp_path / "etc/oversipd/oversipd.conf").read_text() == (REPO / "etc/oversipd.conf").read_text()
    assert list((tmp_path / "etc/oversipd/modules.d").iterdir()) == []
    # The staged environment runs (its interpreter is the system one, outside /root).
    version = subprocess.run([str(tmp_path / "usr/lib/oversipd/bin/python"), "-m", "oversipd", "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("oversipd "), version


def test_installed_configuration_is_valid(tmp_path_factory) -> None:
    stage = staged_install(tmp_path_factory)
    conf = stage / "etc/oversipd/oversipd.conf"
    python = stage / "usr/local/lib/oversipd/bin/python"
    result = subprocess.run([str(python), "-m", "oversipd", "check", "-c", str(conf)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_install_keeps_an_existing_configuration_and_uninstall_reverses_the_rest(tmp_path) -> None:
    conf = tmp_path / "etc/oversipd/oversipd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# the operator's own\n[core]\nworkers = 3\n")
    result = make_install(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert conf.read_text() == "# the operator's own\n[core]\nworkers = 3\n"
    assert "keeping the existing" in result.stdout
    removed = make_install(tmp_path, target="uninstall")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert left == ["etc/oversipd/oversipd.conf"]  # changed by the operator: kept


def test_uninstall_removes_an_unchanged_configuration(tmp_path_factory, tmp_path) -> None:
    # A copy of the session's staged install: `make install` costs half a minute, uninstall reads only files.
    shutil.copytree(staged_install(tmp_path_factory), tmp_path, symlinks=True, dirs_exist_ok=True)
    assert (tmp_path / "etc/oversipd/oversipd.conf").exists()
    assert make_install(tmp_path, target="uninstall").returncode == 0
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []
    assert not (tmp_path / "etc/oversipd").exists()
