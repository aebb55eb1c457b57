"""The deployment side never imports torch or train/, and its hardware path not even MuJoCo."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.deploy.conftest import REPO

_PROBE = """
import importlib, json, pkgutil, sys
import deploy
names = [m.name for m in pkgutil.walk_packages(deploy.__path__, "deploy.") if m.name != "deploy.__main__"]
{imports}
print(json.dumps({{"modules": names, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("torch", "train", "mujoco", "export"))}}))
"""


def _probe(imports: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(imports=imports)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def test_no_deploy_module_imports_torch_or_train():
    result = _probe("for name in names: importlib.import_module(name)")
    assert {"deploy.run", "deploy.replay", "deploy.runner", "deploy.log", "deploy.backends.sim",
            "deploy.backends.dclaw_dynamixel", "deploy.dynamixel_emulator", "deploy.policy"} <= set(result["modules"])
    assert not [m for m in result["loaded"] if m.split(".")[0] in ("torch", "train", "export")], result["loaded"]


def test_the_hardware_path_does_not_load_mujoco():
    result = _probe("for name in ('deploy.run', 'deploy.runner', 'deploy.log', 'deploy.replay', "
                    "'deploy.backends.dclaw_dynamixel', 'deploy.dynamixel_emulator'): importlib.import_module(name)")
    assert result["loaded"] == [], result["loaded"]
