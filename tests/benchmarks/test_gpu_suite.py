"""benchmarks/gpu_suite.sh: the dry run (every step on the CPU at tiny sizes) writes one JSON with every
section; wheel parts travel in pieces and come back byte for byte; the budget and the flags.

The dry run takes about a minute on the 2-core machine (seven steps, each a fresh Python that imports
torch); no wall-clock threshold is asserted.
"""

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_suite_tools import MANIFEST, pack, pytest_counts, train_summary, unpack

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
STEPS = ["info", "learner_throughput", "env_throughput", "train_dclaw_process", "train_dclaw_sequential",
         "test_cuda", "learner_throughput_compile"]


def _suite(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SUITE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _wheel(folder: Path, name: str, version: str = "1.0", payload: bytes = b"") -> Path:
    """A minimal pure-Python wheel that pip installs (``name`` as its one module, ``payload`` beside it)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n", f"{name}/payload.bin": payload,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{info}/RECORD", record)
    return path


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict:
    """Two small wheels and a 'large' one (xz-compressible, cut across parts), packed into parts of 0.05 MiB."""
    root = tmp_path_factory.mktemp("wheels")
    src = root / "src"
    src.mkdir()
    small = _wheel(src, "gs_probe_small")
    other = _wheel(src, "gs_probe_other", payload=os.urandom(20_000))
    # Repeats 40 kB apart: beyond deflate's 32 kB window, within xz's, so only xz shrinks it.
    large = _wheel(src, "gs_probe_large", payload=os.urandom(40_000) * 10)
    manifest = pack(src, root / "parts", part_mib=0.05, compress_min_mib=0.1, preset=1)
    return {"root": root, "src": src, "manifest": manifest, "small": small, "other": other, "large": large,
            "parts": sorted((root / "parts").glob("part-*"), key=lambda p: int(p.name.split("-")[1]))}


def test_pack_cuts_parts_within_the_size_and_compresses_the_large_wheel(wheels):
    manifest, parts = wheels["manifest"], wheels["parts"]
    assert manifest["parts"] == len(parts) >= 2
    for part in parts:
        assert sum(f.stat().st_size for f in part.iterdir()) <= 0.05 * 2**20
        assert json.loads((part / MANIFEST).read_text()) == manifest
    entries = {e["wheel"]: e for e in manifest["wheels"]}
    assert entries[wheels["large"].name]["compression"] == "xz"
    assert len(entries[wheels["large"].name]["pieces"]) >= 2  # cut across parts
    assert entries[wheels["small"].name]["compression"] == "none"  # under compress_min_mib


def test_unpack_rebuilds_every_wheel_once_all_parts_are_staged_in_any_order(wheels, tmp_path):
    stage, into, parts = tmp_path / "stage", tmp_path / "wheels", wheels["parts"]
    first = unpack([parts[-1]], stage, into)  # one call brings the last part
    assert not first["complete"] and first["missing_parts"] == list(range(1, len(parts)))
    done = unpack(parts[:-1], stage, into)  # the next call the rest
    assert done["complete"] and done["missing_parts"] == []
    assert sorted(done["wheels"]) == sorted(w.name for w in (wheels["small"], wheels["other"], wheels["large"]))
    # Plain wheels come back byte for byte; the recompressed one holds the same files (stored, not deflated).
    assert (into / wheels["small"].name).read_bytes() == wheels["small"].read_bytes()
    assert _contents(into / wheels["large"].name) == _contents(wheels["large"])
    for entry in wheels["manifest"]["wheels"]:
        assert hashlib.sha256((into / entry["wheel"]).read_bytes()).hexdigest() == entry["sha256"]
    assert unpack([], stage, into)["complete"]  # a later call finds them ready
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(target), *map(str, sorted(into.glob("*.whl")))], check=True, timeout=120,
                   capture_output=True)
    assert (target / "gs_probe_large" / "payload.bin").read_bytes() == _contents(wheels["large"])[
        "gs_probe_large/payload.bin"]


def test_a_corrupt_piece_is_named(wheels, tmp_path):
    stage, into = tmp_path / "stage", tmp_path / "wheels"
    for part in wheels["parts"]:
        for f in part.iterdir():
            (stage / f.name).parent.mkdir(exist_ok=True)
            (stage / f.name).write_bytes(f.read_bytes())
    entry = next(e for e in wheels["manifest"]["wheels"] if e["compression"] == "xz")
    piece = stage / entry["pieces"][0]["name"]
    data = bytearray(piece.read_bytes())
    data[100] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: send it again"):
        unpack([], stage, into)


def test_pack_refuses_two_versions_of_one_wheel(tmp_path):
    _wheel(tmp_path, "gs_probe", "1.0")
    _wheel(tmp_path, "gs_probe", "2.0")
    with pytest.raises(ValueError, match="keep one version of each"):
        pack(tmp_path, tmp_path / "parts")


def test_train_summary_reads_time_to_success_and_rates(tmp_path):
    records = [
        {"wall_time_s": 2.0, "env_steps": 0, "v_updates": 0, "p_updates": 0},
        {"wall_time_s": 4.0, "env_steps": 1000, "v_updates": 100, "p_updates": 50, "eval_success": 0.2,
         "env_steps_per_s": 500.0},
        {"wall_time_s": 6.0, "env_steps": 3000, "v_updates": 300, "p_updates": 150, "eval_success": 0.85,
         "env_steps_per_s": 1000.0},
        {"wall_time_s": 8.0, "env_steps": 5000, "v_updates": 500, "p_updates": 250, "eval_success": 0.9,
         "eval_return": 3.0, "env_steps_per_s": 1000.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{\"cut short")
    summary = train_summary(tmp_path)
    assert summary["records"] == 4 and summary["env_steps"] == 5000
    assert summary["first_env_steps_at_s"] == 4.0
    assert summary["time_to_eval_0.8_s"] == 6.0 and summary["env_steps_to_eval_0.8"] == 3000
    assert summary["env_steps_per_s"] == 1000.0 and summary["v_updates_per_s"] == 100.0
    assert summary["eval_success_best"] == 0.9 and summary["last_eval"] == {"eval_success": 0.9, "eval_return": 3.0}
    assert train_summary(tmp_path / "absent") is None


def test_pytest_counts():
    assert pytest_counts("...\n3 passed, 7 skipped in 2.01s\n") == {"passed": 3, "failed": 0, "skipped": 7,
                                                                     "errors": 0}
    assert pytest_counts("= 1 failed, 2 passed, 1 error in 9.9s =") == {"passed": 2, "failed": 1, "skipped": 0,
                                                                         "errors": 1}
    assert pytest_counts("no summary") is None


def test_flags_are_checked_and_help_is_the_header():
    assert _suite("--help", timeout=30).stdout.startswith("Every GPU figure of the PQL runtime")
    bad = _suite("--no-such-flag", timeout=30)
    assert bad.returncode == 2 and "unknown option '--no-such-flag'" in bad.stderr
    bad = _suite("--only", "nope", timeout=30)
    assert bad.returncode == 2 and "no step 'nope'" in bad.stderr


def test_a_spent_budget_skips_every_step_and_still_writes_the_json(tmp_path, wheels):
    stage = tmp_path / "stage"
    staged = _suite("--stage", wheels["parts"][0], "--stage-dir", stage, timeout=60)
    assert staged.returncode == 0 and "missing_parts" in staged.stdout
    done = _suite("--dry-run", "--budget-s", "0", "--out", tmp_path / "out", "--work", tmp_path / "work",
                  "--stage-dir", stage, *[a for p in wheels["parts"][1:] for a in ("--wheels", p)], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert data["wheels"]["status"] == "ok" and len(data["wheels"]["result"]["wheels"]) == 3
    assert all(data[s]["status"] == "skipped" and "budget" in data[s]["reason"] for s in STEPS)


def test_the_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    done = _suite("--dry-run", "--out", out, "--work", tmp_path / "work", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.log"]  # what comes back from $OUT
    data = json.loads((out / "gpu_suite.json").read_text())
    assert data["suite"]["dry_run"] is True and data["suite"]["finished"] is True
    assert data["suite"]["steps"] == STEPS
    assert data["wheels"]["status"] == "skipped"
    for step in STEPS:
        assert data[step]["status"] == "ok", (step, data[step])
        assert data[step]["seconds"] > 0 and data[step]["command"]
    learner = data["learner_throughput"]["result"]
    for key in ("v_updates_per_s", "v_bare_updates_per_s", "v_ratio", "p_updates_per_s", "p_bare_updates_per_s",
                "p_ratio"):
        assert learner[key] > 0 and data["figures"][key] == learner[key]
    assert all(v > 0 for v in learner["v_breakdown_ms"].values())
    assert data["learner_throughput_compile"]["result"]["compile"] is True
    assert "TORCH_COMPILE_DISABLE" in data["learner_throughput_compile"]["note"]
    assert data["env_throughput"]["result"]["env_steps_per_s"] > 0
    for placement in ("process", "sequential"):
        run = data[f"train_dclaw_{placement}"]["result"]
        assert run["env_steps"] >= 400 and run["v_updates"] > 0 and run["p_updates"] > 0
        assert 0.0 <= run["eval_success_best"] <= 1.0
    assert data["test_cuda"]["result"]["failed"] == 0
    assert data["info"]["result"]["cuda_available"] in (False, True)
    assert "===== learner_throughput" in (out / "gpu_suite.log").read_text()
