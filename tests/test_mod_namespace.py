"""SPEC §2 "Namespace": a distribution's `oversipd/modules/NAME.py` joins `oversipd.modules`
even when it lives in another sys.path entry than oversipd itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import oversipd, oversipd.modules.nsprobe as probe
assert oversipd.M.nsprobe is probe
print(oversipd.__version__, probe.WHERE)
"""


def test_module_in_another_sys_path_entry_joins_the_namespace(tmp_path: Path) -> None:
    # What `pip install --target DIR`, a user site or an editable install of
    # the core next to a normally installed module distribution produce.
    module_dir = tmp_path / "site" / "oversipd" / "modules"
    module_dir.mkdir(parents=True)
    (module_dir / "nsprobe.py").write_text("WHERE = 'other site dir'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [__import__("oversipd").__version__, "other", "site", "dir"]
