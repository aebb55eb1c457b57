"""Crash-safe HDF5 session log: one file per run, one group per episode.

Layout (``T`` = steps written, ``O``/``A``/``J`` = obs/action/joint sizes)::

    /                         attrs: format, format_version, created, backend info, policy
                              metadata, control_dt, rate_hz, episodes, seed, command, ...
    /episodes/<n>/
        obs            (T, O) float32   observation given to the policy at step k
        actions        (T, A) float32   the policy's output for it, in [-1, 1]
        joint_targets  (T, J) float64   command sent at step k (after mapping and safety clamp)
        joint_pos      (T, J) float64   hard link to readings/joint_pos
        readings/<r>   (T, k) float64   every sensor reading at step k (joint_pos, valve_angle, ...)
        task_state/<s> (T, k) float64   task state in force at step k (goal_angle, ...)
        time           (T,)   float64   seconds since the episode's first deadline
        timing/<t>     (T,)             period, lateness, read/policy/write latency, compute, overrun
        sim/qpos, sim/qvel, sim/time, sim/state   (sim backend) physics state the obs came from
        reward, success (T,)            outcome of step k's action; appended one step later
        reset/<v>                       fixed per-episode values: joint_targets at reset, DR draws
        outcome/status, message, steps, success, return   written when the episode ends
                                        (status -1: never finished, e.g. the process was killed)

Crash safety: every object is created (and the fixed datasets' storage allocated) before the
first step, then the file switches to SWMR mode (``libver='latest'``, ``swmr_mode=True``);
afterwards the writer only appends rows to chunked, resizable datasets and fills pre-created
fixed ones, and flushes the file after each batch it receives (one step when it keeps up,
which it does by a wide margin). Nothing is ever rewritten, so a ``kill -9`` loses at
most the step being written, and a reader (``h5py.File(path, 'r', swmr=True)``, see
:class:`LogReader`) can follow the file while it grows.

Writes happen in a writer process (:class:`LogWriter` starts it): the control loop only puts
numpy arrays on a queue, a sender thread pickles them into a pipe. Not a writer thread: h5py
holds the GIL in every call, and an HDF5 flush that waits for a busy disk (10-100 ms measured on
a loaded machine) would hold the control loop's interpreter with it. In its own process the
writer can stall without the loop noticing, and when the control process dies (even by
``kill -9``) the writer still writes what it received and closes the file. The writer uses
h5py's low-level API (about 75 us of CPU per dataset and step).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
from h5py import h5s

from deploy.backends.base import Field
from deploy.errors import LogError

FORMAT = "sim2real-deploy-log"
FORMAT_VERSION = 1
_CHUNK_ROWS = 64
_MESSAGE_BYTES = 512
#: Datasets appended one step late (the outcome of step k's action needs step k+1's reading).
LAGGED = {"reward": Field(()), "success": Field((), "int8")}
_OUTCOME = {"status": ("int16", -1), "steps": ("int64", -1), "success": ("int8", -1),
            "return": ("float64", np.nan), "message": (f"S{_MESSAGE_BYTES}", b"")}


def _attr_value(value):
    """HDF5-storable attribute value: numbers, strings and arrays as they are, the rest JSON."""
    if isinstance(value, (str, bytes, int, float, np.ndarray, np.generic)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value)
    return json.dumps(value, default=str)


class LogWriter:
    """Writes a session log through a writer process (see the module docstring).

    The constructor starts the writer (``python -c`` importing this module only: numpy and
    h5py), which creates every object and switches to SWMR before it reports ready; errors
    there (unwritable directory, ...) raise :class:`LogError` here. Afterwards
    :meth:`append`/:meth:`set` only enqueue; a sender thread pickles and pipes the items.

    Args:
        path: the .h5 file to create.
        episodes: number of episode groups to create up front (SWMR forbids creating later).
        step_fields: per-step datasets (name -> :class:`Field`), appended by :meth:`append`.
        episode_fields: fixed per-episode datasets under ``reset/`` (NaN until written).
        attrs: root attributes (non-scalar values are stored as JSON).
        overwrite: replace an existing file instead of refusing.
        rt_priority: SCHED_FIFO priority of the writer process (0: normal; silently normal where
            not permitted). One below the control loop's makes it flush each step promptly on a
            loaded machine without ever preempting the loop.
    """

    def __init__(self, path: str | Path, episodes: int, step_fields: dict[str, Field],
                 episode_fields: dict[str, Field], attrs: dict, overwrite: bool = False, rt_priority: int = 0) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"log file {self.path} exists; logs are never overwritten by default: "
                                  "choose another --log path or pass --overwrite")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.step_fields = dict(step_fields)
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        root = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {root!r}); import deploy.log as m; m._writer_main()"
        self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        spec = {"path": str(self.path), "episodes": episodes, "attrs": {k: _attr_value(v) for k, v in attrs.items()},
                "step_fields": self.step_fields, "episode_fields": dict(episode_fields), "rt_priority": rt_priority}
        try:
            _send(self._process.stdin.fileno(), spec)
        except OSError:
            pass  # the writer died at start: its report below says why
        ready = self._process.stdout.readline().decode().rstrip("\n")
        if ready != "ready":
            self._process.kill()
            self._process.wait()
            raise LogError(f"cannot create the log {self.path}: {ready.removeprefix('error ') or 'the writer died'}")
        self._sender = threading.Thread(target=self._send_loop, name="log-sender", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="log-listener", daemon=True)
        self._sender.start()
        self._listener.start()

    # --- control-loop side (cheap: enqueue only) --------------------------------------
    def append(self, episode: int, values: dict[str, np.ndarray]) -> None:
        """Append one row to each named per-step dataset of ``episode``."""
        self._queue.put(("append", episode, values))

    def set(self, episode: int, values: dict[str, np.ndarray]) -> None:
        """Fill fixed datasets of ``episode`` (``reset/...`` and ``outcome/...`` paths)."""
        self._queue.put(("set", episode, values))

    def end_episode(self, episode: int, status: int, message: str, steps: int, success: bool | None,
                    episode_return: float) -> None:
        """Record how ``episode`` ended (``status`` is a :class:`deploy.errors.ExitCode`)."""
        self.set(episode, {
            "outcome/status": np.int16(status), "outcome/steps": np.int64(steps),
            "outcome/success": np.int8(-1 if success is None else int(success)),
            "outcome/return": np.float64(episode_return),
            "outcome/message": message.encode("utf-8", "replace")[:_MESSAGE_BYTES],
        })

    def check(self) -> None:
        """Raise :class:`LogError` if the writer failed (called once per step: a field read)."""
        if self.error is not None:
            raise LogError(f"writing the log {self.path} failed: {self.error}; the run was stopped "
                           "rather than continued unlogged (check disk space and permissions)")

    def close(self, timeout: float = 60.0) -> None:
        """Send what is queued, let the writer finish and close the file; raises :class:`LogError`."""
        if self._sender.is_alive():
            self._queue.put(None)
            self._sender.join(timeout)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            self.error = self.error or f"the writer did not finish within {timeout:g} s and was killed"
        self._listener.join(timeout)
        if self._process.returncode not in (0, None) and self.error is None:
            self.error = f"the writer exited with status {self._process.returncode}"
        self.check()

    # --- parent-side threads ------------------------------------------------------------
    def _send_loop(self) -> None:
        fd = self._process.stdin.fileno()
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                _send(fd, item)  # blocks this thread only (pipe full: the writer is behind)
            except OSError as error:
                self.error = self.error or f"the writer process is gone ({error})"
                break
        self._process.stdin.close()  # EOF: the writer finishes and closes the file

    def _listen(self) -> None:
        for line in self._process.stdout:
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith("error "):
                self.error = text.removeprefix("error ")


def _send(fd: int, item) -> None:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view):]


# --- the writer process -------------------------------------------------------------------
def _writer_main() -> None:
    """Entry point of the writer process: frames on stdin, 'ready'/'error ...' lines on stdout.

    Ctrl-C and a closed terminal reach the whole process group: the writer ignores them and ends
    when the control process closes the pipe (normally, or by dying: even after a kill -9 of the
    control process it writes every item it received and closes the file cleanly).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    out = sys.stdout
    frames = _frames(sys.stdin.fileno())
    try:
        spec = next(frames)[0]
        if spec["rt_priority"] > 0 and hasattr(os, "sched_setscheduler"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(spec["rt_priority"]))
        writer = _FileWriter(**{k: v for k, v in spec.items() if k != "rt_priority"})
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        out.write(f"error {error}\n")
        out.flush()
        return
    out.write("ready\n")
    out.flush()
    try:
        for batch in frames:
            writer.write(batch)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        out.write(f"error {type(error).__name__}: {error}\n")
        out.flush()
    finally:
        writer.close()


def _frames(fd: int):
    """Yield lists of the items that have arrived (one flush per list); ends at EOF."""
    buffer = bytearray()
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return
        buffer.extend(data)
        items = []
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[:8], "little")
            if len(buffer) < 8 + size:
                break
            items.append(pickle.loads(buffer[8:8 + size]))
            del buffer[:8 + size]
        if items:
            yield items


class _FileWriter:
    """The HDF5 side: creates every object, switches to SWMR, then appends and fills."""

    def __init__(self, path: str, episodes: int, step_fields: dict[str, Field], episode_fields: dict[str, Field],
                 attrs: dict) -> None:
        self.file = h5py.File(path, "w", libver="latest")
        self.datasets: dict[tuple[int, str], list] = {}  # [dataset id, row shape, dtype, rows]
        try:
            self._create(episodes, step_fields, episode_fields, attrs)
            self.file.swmr_mode = True  # from here on: appends and fills only
        except BaseException:
            self.file.close()
            raise

    def _create(self, episodes: int, step_fields: dict[str, Field], episode_fields: dict[str, Field],
                attrs: dict) -> None:
        f = self.file
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = datetime.now(timezone.utc).isoformat()
        f.attrs["episodes"] = episodes
        f.attrs["step_datasets"] = json.dumps(sorted(step_fields))
        f.attrs["lagged_datasets"] = json.dumps(sorted(LAGGED))
        for key, value in attrs.items():
            f.attrs[key] = value
        fields = {**step_fields, **LAGGED}
        for n in range(episodes):
            group = f.create_group(f"episodes/{n}")
            for name, spec in fields.items():
                group.create_dataset(name, shape=(0, *spec.shape), maxshape=(None, *spec.shape), dtype=spec.dtype,
                                     chunks=(_CHUNK_ROWS, *spec.shape))
            if "readings/joint_pos" in step_fields:
                group["joint_pos"] = group["readings/joint_pos"]  # a hard link: one dataset, two names
            for name, spec in episode_fields.items():
                fill = np.nan if np.dtype(spec.dtype).kind == "f" else 0
                # Writing the fill now allocates the storage before SWMR: a later write then changes
                # raw data only (allocating under SWMR left a dataset unreadable after a kill -9).
                group.create_dataset(f"reset/{name}", shape=spec.shape, dtype=spec.dtype, fillvalue=fill)[()] = fill
            for name, (dtype, fill) in _OUTCOME.items():
                group.create_dataset(f"outcome/{name}", shape=(), dtype=dtype, fillvalue=fill)[()] = fill
        f.flush()

    def write(self, items: list) -> None:
        """Apply a batch of ("append"|"set", episode, values) items, then flush the file once."""
        appends: dict[tuple[int, str], list] = {}  # rows per dataset, in order: one write each
        for kind, episode, values in items:
            for name, value in values.items():
                if kind == "append":
                    appends.setdefault((episode, name), []).append(value)
                else:  # fixed datasets (storage allocated before SWMR): raw data only
                    self.file[f"episodes/{episode}/{name}"][()] = value
        for key, rows in appends.items():
            self._append(key, rows)
        self.file.flush()

    def _append(self, key: tuple[int, str], rows: list) -> None:
        """Extend a chunked dataset by ``len(rows)`` rows and write them (h5py's low-level API:
        ``ds.resize(); ds[k] = v`` costs about four times the CPU)."""
        entry = self.datasets.get(key)
        if entry is None:  # path lookups cost tens of microseconds: resolve each dataset once
            ds = self.file[f"episodes/{key[0]}/{key[1]}"]
            entry = self.datasets[key] = [ds.id, ds.shape[1:], ds.dtype, ds.shape[0]]
        dsid, shape, dtype, count = entry
        block = np.ascontiguousarray(np.asarray(rows, dtype=dtype).reshape((len(rows), *shape)))
        dsid.set_extent((count + len(rows), *shape))
        space = dsid.get_space()
        space.select_hyperslab((count,) + (0,) * len(shape), block.shape)
        dsid.write(h5s.create_simple(block.shape), space, block)
        entry[3] = count + len(rows)

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


# --- reading ----------------------------------------------------------------------------
class LogFormatError(ValueError):
    """The file is not a readable deployment log (foreign, truncated or corrupt)."""


@dataclass
class Episode:
    """One episode read back: complete steps only (rows every per-step dataset has)."""

    index: int
    steps: int
    data: dict[str, np.ndarray]
    reset: dict[str, np.ndarray]
    outcome: dict

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """Datasets under ``prefix/`` keyed by their last name (e.g. ``readings``)."""
        return {k[len(prefix) + 1:]: v for k, v in self.data.items() if k.startswith(prefix + "/")}


class LogReader:
    """Reads a session log, also while it is being written or after the writer was killed.

    Opens in SWMR read mode, which is what allows reading a file whose writer still has it
    open (or died with it open). Raises :class:`LogFormatError` naming the problem for files
    that are missing, not HDF5, truncated, or HDF5 but not a deployment log.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LogFormatError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r", libver="latest", swmr=True)
        except OSError as error:
            size = self.path.stat().st_size
            raise LogFormatError(f"{self.path} ({size} bytes) cannot be opened as HDF5: it is truncated, corrupt or "
                                 f"not an HDF5 file ({error})") from None
        try:
            fmt = self.file.attrs.get("format")
        except (OSError, RuntimeError, KeyError) as error:  # h5py raises these for damaged metadata
            self.file.close()
            raise LogFormatError(f"{self.path} is truncated or corrupt: its attributes cannot be read ({error})"
                                 ) from None
        if fmt != FORMAT:
            found = sorted(self.file.keys())[:8]
            self.file.close()
            raise LogFormatError(f"{self.path} is an HDF5 file but not a deployment log (attribute format="
                                 f"{fmt!r}, expected {FORMAT!r}; top-level objects: {found})")
        version = int(self.file.attrs.get("format_version", -1))
        if version > FORMAT_VERSION:
            self.file.close()
            raise LogFormatError(f"{self.path} has log format version {version}; this toolkit reads <= "
                                 f"{FORMAT_VERSION}: update the toolkit")
        self.attrs = {k: _decode_attr(v) for k, v in self.file.attrs.items()}
        self.step_datasets = json.loads(self.attrs["step_datasets"])
        self.lagged_datasets = json.loads(self.attrs["lagged_datasets"])

    @property
    def episode_count(self) -> int:
        return len(self.file["episodes"])

    def steps(self, index: int) -> int:
        """Complete steps of an episode (0 for episodes never started)."""
        group = self._group(index)
        lengths = []
        for name in self.step_datasets:
            ds = group[name]
            ds.refresh()
            lengths.append(ds.shape[0])
        return min(lengths, default=0)

    def episode(self, index: int) -> Episode:
        """Read episode ``index`` (complete steps; lagged datasets may be one row shorter)."""
        try:
            return self._episode(index)
        except (OSError, RuntimeError, KeyError) as error:  # h5py's errors for damaged objects
            raise LogFormatError(f"episode {index} of {self.path} is damaged or incomplete: {error}") from None

    def _episode(self, index: int) -> Episode:
        group = self._group(index)
        steps = self.steps(index)
        data = {}
        for name in self.step_datasets:
            data[name] = group[name][:steps]
        if "joint_pos" in group and "readings/joint_pos" in data:
            data["joint_pos"] = data["readings/joint_pos"]  # the hard link: same dataset
        for name in self.lagged_datasets:
            ds = group[name]
            ds.refresh()
            data[name] = ds[:min(steps, ds.shape[0])]
        reset = {}
        if "reset" in group:
            group["reset"].visititems(lambda name, obj: reset.__setitem__(name, obj[()])
                                      if isinstance(obj, h5py.Dataset) else None)
        outcome = {name: ds[()] for name, ds in group["outcome"].items()}
        outcome["message"] = outcome["message"].decode("utf-8", "replace")
        return Episode(index=index, steps=steps, data=data, reset=reset, outcome=outcome)

    def _group(self, index: int) -> h5py.Group:
        count = self.episode_count
        if not 0 <= index < count:
            raise LogFormatError(f"{self.path} has episodes 0..{count - 1}; episode {index} does not exist")
        return self.file[f"episodes/{index}"]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
