"""The deployment side imports the robot spec, the task's observation/reward code and the
action mapping without torch (a robot computer runs numpy + onnxruntime only)."""

import json
import subprocess
import sys

TORCH_FREE = ("robots.dclaw.turn", "robots.dclaw.spec", "toolkit.contract.robot", "toolkit.contract.obs_layout", "toolkit.contract.task")


def test_deployment_modules_do_not_import_torch():
    code = (
        "import importlib, json, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    torch_modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert torch_modules == [], f"importing {TORCH_FREE} pulled in torch: {torch_modules[:5]}"

