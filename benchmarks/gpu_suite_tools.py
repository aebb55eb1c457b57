"""The helpers of ``benchmarks/gpu_suite.sh``: wheel parts, the machine's facts, and the suite's one JSON file.

Standard library only (torch where there is one): they run before any wheel is installed, on the GPU
machine's Python (3.12 there) as on the CPU machine's.

    python -m benchmarks.gpu_suite_tools specs                       # NAME==VERSION of the wheels the GPU needs
    python -m benchmarks.gpu_suite_tools pack --wheels D --out P     # D/*.whl -> P/part-1 ... P/part-K
    python -m benchmarks.gpu_suite_tools unpack --stage S --into W P/part-2 ...
    python -m benchmarks.gpu_suite_tools info                        # one JSON line: python, torch, GPU, modules
    python -m benchmarks.gpu_suite_tools init|record|finish --json F ...   # the suite's JSON, step by step

Wheel parts: a device call carries at most 64 MiB (the working tree included), and warp-lang alone is a
~150 MB wheel. ``pack`` recompresses large wheels (their zip entries stored, the whole file xz-compressed:
the reassembled wheel is a valid, uncompressed wheel with the same files) and cuts everything into parts
of ``--part-mib``, each with a MANIFEST.json naming every piece and the sha256 of every wheel. ``unpack``
copies the pieces it is given into a staging folder that outlives the call (``/tmp`` of a warm machine),
and reassembles (and checks) each wheel whose pieces are all there; the parts can come in any order, in
consecutive calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

#: What the GPU machine's image lacks (it has torch, numpy, yaml, h5py, onnx*, tensorboard, matplotlib,
#: imageio, rich, absl, etils, fsspec, zipp, cloudpickle, typing-extensions, pytest, ...; a wheel here would
#: shadow the image's own version, so those stay out): the project's runtime needs for training,
#: the benchmarks and tests/toolkit/pql/test_cuda.py, with their own needs. Left out, since nothing the
#: suite runs imports them and every MiB counts: video (imageio-ffmpeg, 60 MiB), the Gymnasium-Robotics
#: assets, and mujoco-studio with websockets (MuJoCo's viewer and Filament renderer: ``import mujoco``,
#: mujoco.batch and mujoco_warp run without them; pip installs with --no-deps, so nothing asks for them).
GPU_WHEELS = (
    "mujoco", "mujoco-core", "glfw", "pyopengl",  # mujoco and its needs
    "mujoco-warp", "warp-lang",  # the GPU simulator
    "tyro", "docstring-parser", "typeguard",  # the CLIs (typing-extensions: the image's)
    "gymnasium", "farama-notifications",  # toolkit.envs (cloudpickle: the image's)
    "array-api-compat", "cmaes", "dynamixel-sdk", "pyserial",  # toolkit.contract, deploy
)
#: Modules the suite's steps import, reported by ``info`` (None: not importable).
MODULES = ("torch", "numpy", "mujoco", "mujoco_warp", "warp", "tyro", "gymnasium", "array_api_compat", "yaml",
           "onnx", "onnxruntime", "pytest")
#: Distribution names where they differ from the module's.
DISTRIBUTIONS = {"mujoco_warp": "mujoco-warp", "warp": "warp-lang", "yaml": "pyyaml", "array_api_compat":
                 "array-api-compat"}
MANIFEST = "MANIFEST.json"
MIB = 2**20


# --- wheels -------------------------------------------------------------------------------------
def specs(names=GPU_WHEELS) -> list[str]:
    """``NAME==VERSION`` with this machine's installed version (the one the project is tested with), or
    the bare name where it is not installed."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored_copy(wheel: Path, dest: Path) -> None:
    """``wheel`` rewritten with every entry stored (uncompressed): same files, same RECORD."""
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)


def _xz(src: Path, dest: Path, preset: int) -> None:
    with open(src, "rb") as fin, lzma.open(dest, "wb", preset=preset) as fout:
        shutil.copyfileobj(fin, fout, 4 * MIB)


def pack(wheels: Path, out: Path, part_mib: float = 60.0, compress_min_mib: float = 8.0, preset: int = 9) -> dict:
    """Lay the ``*.whl`` of ``wheels`` out in ``out/part-1``, ``out/part-2``, ... (each at most ``part_mib``
    MiB with its manifest). Wheels of at least ``compress_min_mib`` MiB travel xz-compressed (as a stored
    zip) where that saves 5 % or more; every item is cut at part boundaries. Returns the manifest."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise ValueError(f"no *.whl in {wheels}")
    names = [re.split(r"-\d", f.name, maxsplit=1)[0].lower().replace("_", "-") for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two wheels of {twice} in {wheels}: keep one version of each (pip stops otherwise)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        shutil.rmtree(old)
    items = []  # (wheel entry of the manifest, the file that travels)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_suite_pack."))
    try:
        for wheel in files:
            entry = {"wheel": wheel.name, "compression": "none"}
            travel = rebuilt = wheel  # what travels; what unpack rebuilds from it
            if wheel.stat().st_size >= compress_min_mib * MIB:
                stored, packed = scratch / wheel.name, scratch / (wheel.name + ".xz")
                _stored_copy(wheel, stored)
                _xz(stored, packed, preset)
                if packed.stat().st_size <= 0.95 * wheel.stat().st_size:
                    entry["compression"], travel, rebuilt = "xz", packed, stored
                else:
                    packed.unlink()
                    stored.unlink()
            entry.update(size=rebuilt.stat().st_size, sha256=_sha256(rebuilt), item=travel.name, pieces=[])
            if rebuilt is not wheel:
                rebuilt.unlink()  # hashed; only the compressed copy is needed from here
            items.append((entry, travel))
        items.sort(key=lambda it: it[1].stat().st_size)  # small wheels whole in the first parts
        capacity = int(part_mib * MIB) - min(64 * 1024, int(part_mib * MIB) // 2)  # room for the manifest
        if capacity < 16 * 1024:
            raise ValueError(f"--part-mib {part_mib} is too small")
        part, used = 1, 0
        for entry, travel in items:
            size, offset, index = travel.stat().st_size, 0, 0
            with open(travel, "rb") as f:
                while offset < size:
                    if used >= capacity:
                        part, used = part + 1, 0
                    n = min(capacity - used, size - offset)
                    piece = f"{travel.name}.{index:03d}"
                    folder = out / f"part-{part}"
                    folder.mkdir(exist_ok=True)
                    data = f.read(n)
                    (folder / piece).write_bytes(data)
                    entry["pieces"].append({"name": piece, "part": part, "size": n,
                                            "sha256": hashlib.sha256(data).hexdigest()})
                    offset, used, index = offset + n, used + n, index + 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    manifest = {"format": 1, "parts": part, "part_mib": part_mib,
                "wheels": sorted((entry for entry, _ in items), key=lambda e: e["wheel"])}
    for k in range(1, part + 1):
        (out / f"part-{k}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(sources: list[Path], stage: Path, into: Path) -> dict:
    """Stage the pieces (and plain ``*.whl``) of ``sources`` in ``stage``, rebuild into ``into`` every wheel
    whose pieces are all staged, check its sha256. Returns what is there and what is missing."""
    stage.mkdir(parents=True, exist_ok=True)
    into.mkdir(parents=True, exist_ok=True)
    plain = []
    for source in sources:
        if not source.is_dir():
            raise ValueError(f"{source} is not a folder of wheel parts or wheels")
        for path in sorted(source.iterdir()):
            if path.suffix == ".whl":
                shutil.copy2(path, into / path.name)
                plain.append(path.name)
            elif path.is_file():
                shutil.copy2(path, stage / path.name)
    manifest_path = stage / MANIFEST
    if not manifest_path.exists():
        wheels = sorted(p.name for p in into.glob("*.whl"))
        return {"complete": bool(wheels), "wheels": wheels, "missing_parts": [], "parts": 0, "plain": plain}
    manifest = json.loads(manifest_path.read_text())
    missing_parts, ready = set(), []
    for entry in manifest["wheels"]:
        target = into / entry["wheel"]
        if target.exists() and target.stat().st_size == entry["size"] and _sha256(target) == entry["sha256"]:
            ready.append(entry["wheel"])
            continue
        absent = [p for p in entry["pieces"] if not (stage / p["name"]).exists()
                  or (stage / p["name"]).stat().st_size != p["size"]]
        if absent:
            missing_parts.update(p["part"] for p in absent)
            continue
        joined = stage / entry["item"]
        with open(joined, "wb") as out:
            for piece in entry["pieces"]:
                data = (stage / piece["name"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != piece["sha256"]:
                    raise ValueError(f"wheel piece {piece['name']} (part-{piece['part']}) is corrupt: send it again")
                out.write(data)
        partial = into / (entry["wheel"] + ".partial")
        if entry["compression"] == "xz":
            with lzma.open(joined, "rb") as fin, open(partial, "wb") as fout:
                shutil.copyfileobj(fin, fout, 4 * MIB)
            joined.unlink()
        else:
            joined.replace(partial)
        if _sha256(partial) != entry["sha256"]:
            partial.unlink()
            raise ValueError(f"{entry['wheel']} does not match its manifest after reassembly")
        partial.replace(target)
        for piece in entry["pieces"]:  # the staged copies are no longer needed
            (stage / piece["name"]).unlink(missing_ok=True)
        ready.append(entry["wheel"])
    return {"complete": not missing_parts, "wheels": sorted(ready), "missing_parts": sorted(missing_parts),
            "parts": manifest["parts"], "plain": plain,
            "digest": hashlib.sha256(manifest_path.read_bytes()).hexdigest()[:16]}


# --- the machine --------------------------------------------------------------------------------
def info(imports: bool = False) -> dict:
    """Python, torch and its GPU, CPUs, and the installed version of each of the suite's modules (None: not
    installed). ``imports``: import each module too (seconds each on a slow CPU), so that one that is
    installed but fails to load says why."""
    from importlib import import_module, metadata, util

    modules = {}
    for name in MODULES:
        try:
            found = util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        version = None
        if found:
            try:
                version = metadata.version(DISTRIBUTIONS.get(name, name))
            except metadata.PackageNotFoundError:
                version = "?"
        if found and imports:
            try:
                module = import_module(name)
                version = str(getattr(module, "__version__", version))
            except Exception as error:  # noqa: BLE001 - a module that fails to import, for any reason
                version = None
                modules[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
        modules[name] = version
    result = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
              "cpu_count": os.cpu_count(), "modules": modules}
    try:
        import torch

        result.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            result.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                          gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
    except ImportError:
        result.update(torch=None, cuda_available=False)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        result["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        result["nvidia_smi"] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        result["git_commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        result["git_commit"] = None
    return result


# --- step outputs -------------------------------------------------------------------------------
def last_json_line(text: str) -> dict | None:
    """The last line of ``text`` that is a JSON object (what the benchmarks print with --json)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def pytest_counts(text: str) -> dict | None:
    """passed/failed/skipped/... of pytest's closing line (None when there is none)."""
    for line in reversed(text.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line)
        if found and re.search(r"\bin [\d.]+s", line):
            counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
            for n, what in found:
                counts["errors" if what.startswith("error") else what] = int(n)
            return counts
    return None


def _rate(records: list[dict], key: str) -> float | None:
    """``key`` per second of wall time between the first and the last record with env steps (with only
    one, that record's own rate since the one before)."""
    if not records:
        return None
    if len(records) == 1:
        rate = records[0].get(f"{key}_per_s")
        return round(rate, 2) if isinstance(rate, (int, float)) else None
    dt = records[-1]["wall_time_s"] - records[0]["wall_time_s"]
    return round((records[-1][key] - records[0][key]) / dt, 2) if dt > 0 else None


def train_summary(run_dir: Path, success: float = 0.8) -> dict | None:
    """Figures of one training run from its metrics.jsonl (None without records).

    time_to_eval_{success}_s is the wall time of the first record that carries an evaluation at or above
    ``success``: an upper bound by at most one log interval. first_env_steps_at_s is when the first
    record saw env steps (the placement's start-up inside the trainer's clock, to within a log interval).
    Rates are between the first and the last record with env steps.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    if not records:
        return None
    last = records[-1]
    stepping = [r for r in records if r.get("env_steps", 0) > 0]
    evals = [r for r in records if isinstance(r.get("eval_success"), (int, float))
             and math.isfinite(r["eval_success"])]
    reached = next((r for r in evals if r["eval_success"] >= success), None)
    interval = [r["env_steps_per_s"] for r in stepping[1:-1] if r.get("env_steps_per_s")]
    summary = {
        "records": len(records),
        "wall_time_s": round(last["wall_time_s"], 2),
        "env_steps": last.get("env_steps"),
        "v_updates": last.get("v_updates"),
        "p_updates": last.get("p_updates"),
        "first_env_steps_at_s": round(stepping[0]["wall_time_s"], 2) if stepping else None,
        "env_steps_per_s": _rate(stepping, "env_steps"),
        "env_steps_per_s_median_interval": round(statistics.median(interval), 1) if interval else None,
        "v_updates_per_s": _rate(stepping, "v_updates"),
        "p_updates_per_s": _rate(stepping, "p_updates"),
        "critic_per_actor_step": last.get("critic_per_actor_step"),
        "critic_per_policy_update": last.get("critic_per_policy_update"),
        "eval_success_best": max((r["eval_success"] for r in evals), default=None),
        "eval_success_last": evals[-1]["eval_success"] if evals else None,
        f"time_to_eval_{success}_s": round(reached["wall_time_s"], 2) if reached else None,
        f"env_steps_to_eval_{success}": reached["env_steps"] if reached else None,
        "last_eval": {k: v for k, v in last.items() if k.startswith("eval_")},
        "run_dir": str(run_dir),
    }
    return summary


# --- the suite's JSON ---------------------------------------------------------------------------
def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def init(path: Path, steps: list[str], dry_run: bool, budget_s: float, argv: str) -> dict:
    """The JSON with every section pending: a suite killed halfway still says what never ran."""
    data = {"suite": {"format": 1, "dry_run": dry_run, "budget_s": budget_s, "argv": argv,
                      "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "started_at": time.time(),
                      "steps": steps, "finished": False},
            "wheels": {"status": "pending"}}
    for step in steps:
        data[step] = {"status": "pending"}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, data)
    return data


def _tail(path: Path | None, chars: int = 3000) -> str | None:
    if path is None or not path.exists():
        return None
    text = path.read_text(errors="replace")
    return text[-chars:] if text else None


def record(path: Path, name: str, status: str | None = None, kind: str = "json", rc: int | None = None,
           seconds: float | None = None, limit_s: float | None = None, command: str | None = None,
           stdout: Path | None = None, stderr: Path | None = None, run_dir: Path | None = None,
           reason: str | None = None, note: str | None = None, result_json: str | None = None) -> dict:
    """Write one step's outcome into the suite's JSON (status from ``rc`` unless given)."""
    data = json.loads(path.read_text())
    section: dict = {}
    if rc is not None:
        section["rc"] = rc
    if status is None:
        status = "ok" if rc == 0 else "timeout" if rc in (124, 137) else "failed"
    for key, value in (("seconds", None if seconds is None else round(seconds, 2)), ("limit_s", limit_s),
                       ("command", command), ("reason", reason), ("note", note)):
        if value is not None:
            section[key] = value
    text = stdout.read_text(errors="replace") if stdout is not None and stdout.exists() else ""
    result = None
    if result_json is not None:
        result = json.loads(result_json)
    elif kind in ("json", "info"):
        result = last_json_line(text)
        if status == "ok" and result is None:
            status, section["reason"] = "failed", "no JSON line in its output"
    elif kind == "pytest":
        result = pytest_counts(text)
    elif kind == "train" and run_dir is not None:
        result = train_summary(run_dir)
        if status == "ok" and result is None:
            status, section["reason"] = "failed", "no metrics.jsonl records"
    section["status"] = status
    if result is not None:
        section["result"] = result
    if status not in ("ok", "skipped"):
        section["stderr_tail"] = _tail(stderr)
        section["stdout_tail"] = _tail(stdout, 1500)
    data[name] = section
    _write(path, data)
    return section


def _figures(data: dict) -> dict:
    """The headline numbers of every section, flat (what a README table needs)."""
    figures: dict = {}

    def result(name):
        section = data.get(name) or {}
        return section.get("result") or {}

    env = result("info")
    figures["gpu"] = env.get("gpu") or ("cpu (dry run)" if data["suite"]["dry_run"] else None)
    for name, suffix in (("learner_throughput", ""), ("learner_throughput_compile", "_compile")):
        r = result(name)
        for key in ("v_updates_per_s", "v_bare_updates_per_s", "v_ratio", "p_updates_per_s", "p_bare_updates_per_s",
                    "p_ratio"):
            figures[key + suffix] = r.get(key)
    r = result("env_throughput")
    figures["env_steps_per_s"], figures["env_num_envs"] = r.get("env_steps_per_s"), r.get("num_envs")
    for name in ("train_dclaw_process", "train_dclaw_sequential", "train_shadow_hand"):
        r = result(name)
        if name not in data:
            continue
        short = name.removeprefix("train_")
        for key in ("env_steps_per_s", "v_updates_per_s", "p_updates_per_s", "eval_success_best",
                    "time_to_eval_0.8_s", "first_env_steps_at_s"):
            figures[f"{short}_{key}"] = r.get(key)
    r = result("test_cuda")
    figures["test_cuda"] = r or None
    return figures


def finish(path: Path) -> dict:
    data = json.loads(path.read_text())
    suite = data["suite"]
    for name in suite["steps"]:
        if data.get(name, {}).get("status") == "pending":
            data[name] = {"status": "not_run", "reason": "the suite stopped before this step"}
    suite.update(finished=True, total_s=round(time.time() - suite["started_at"], 1),
                 finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 status={name: data[name]["status"] for name in ("wheels", *suite["steps"])})
    data["figures"] = _figures(data)
    _write(path, data)
    return data


# --- command line -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite_tools", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("specs", help="NAME==VERSION of the wheels the GPU machine needs, one a line")
    p = sub.add_parser("pack", help="cut the wheels of a folder into parts of at most --part-mib")
    p.add_argument("--wheels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mib", type=float, default=60.0)
    p.add_argument("--compress-min-mib", type=float, default=8.0)
    p.add_argument("--preset", type=int, default=9, help="xz preset, 0-9 (9: warp-lang 149 -> 101 MB, ~8 CPU min)")
    p = sub.add_parser("unpack", help="stage parts and rebuild the wheels whose pieces are all there")
    p.add_argument("--stage", type=Path, required=True)
    p.add_argument("--into", type=Path, required=True)
    p.add_argument("sources", type=Path, nargs="*")
    p = sub.add_parser("info", help="one JSON line: python, torch, GPU, modules")
    p.add_argument("--imports", action="store_true", help="import every module (not only find it)")
    p = sub.add_parser("get", help="print one value of a JSON file (dotted path); empty when absent")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("path")
    p = sub.add_parser("init")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--steps", required=True, help="comma-separated step names")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--argv", default="")
    p = sub.add_parser("record")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--status")
    p.add_argument("--kind", default="json", choices=("json", "info", "pytest", "train", "none"))
    p.add_argument("--rc", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--limit-s", type=float)
    p.add_argument("--command-line", dest="command_line")
    p.add_argument("--stdout", type=Path)
    p.add_argument("--stderr", type=Path)
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--reason")
    p.add_argument("--note")
    p.add_argument("--result-json")
    p = sub.add_parser("finish")
    p.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "specs":
            print("\n".join(specs()))
        elif args.command == "pack":
            manifest = pack(args.wheels, args.out, args.part_mib, args.compress_min_mib, args.preset)
            for k in range(1, manifest["parts"] + 1):
                size = sum(f.stat().st_size for f in (args.out / f"part-{k}").iterdir())
                print(f"{args.out / f'part-{k}'}: {size / MIB:.1f} MiB")
        elif args.command == "unpack":
            result = unpack(args.sources, args.stage, args.into)
            print(json.dumps(result))
            return 0 if result["complete"] else 3
        elif args.command == "info":
            print(json.dumps(info(args.imports)))
        elif args.command == "get":
            value = json.loads(args.json.read_text())
            for key in args.path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            print("" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else value)
        elif args.command == "init":
            init(args.json, [s for s in args.steps.split(",") if s], args.dry_run, args.budget_s, args.argv)
        elif args.command == "record":
            section = record(args.json, args.name, args.status, args.kind, args.rc, args.seconds, args.limit_s,
                             args.command_line, args.stdout, args.stderr, args.run_dir, args.reason, args.note,
                             args.result_json)
            print(f"[{args.name}] {section['status']}" + (f" ({section['reason']})" if section.get("reason") else ""))
        elif args.command == "finish":
            data = finish(args.json)
            print(json.dumps(data["figures"]))
    except (ValueError, OSError) as error:
        print(f"gpu_suite_tools {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
