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
        started        ()     int8      1 once the writer got anything of the episode (0: never ran)

Crash safety: every object is created (and the fixed datasets' storage allocated) before the
first step, then the file switches to SWMR mode (``libver='latest'``, ``swmr_mode=True``);
afterwards the writer only appends rows to chunked, resizable datasets and fills pre-created
fixed ones, and flushes the file after each batch it receives (one step when it keeps up,
which it does by a wide margin). Nothing is ever rewritten, so a ``kill -9`` loses at
most the step being written, and a reader (``h5py.File(path, 'r', swmr=True)``, see
:class:`LogReader`) can follow the file while it grows. ``started`` (int8, 0 until the writer
receives the episode's first item) tells an episode that never ran (the session stopped before
it) from one that started and has no complete step.

Writes happen in a writer process (:class:`LogWriter` starts it): the control loop only puts
numpy arrays on a queue, a sender thread pickles them into a pipe. Not a writer thread: h5py
holds the GIL in every call, and an HDF5 flush that waits for a busy disk (10-100 ms measured on
a loaded machine) would hold the control loop's interpreter with it. In its own process the
writer can stall without the loop noticing, and when the control process dies (even by
``kill -9``) the writer still writes what it received and closes the file. The writer ignores
SIGINT, SIGTERM and SIGHUP, which reach the whole process group (Ctrl-C, ``timeout``, a service
manager, ``kill -- -PGID``): it ends only at EOF of its pipe, after the control process closed it
(or died), so the file is always closed in order. The writer uses h5py's low-level API (about
75 us of CPU per dataset and step).

Reading (:class:`LogReader`): a closed log opens normally, so HDF5 checks it completely (a
truncated copy fails at once, naming its size). A log whose writer still runs, or was killed,
is flagged open-for-writing and needs SWMR read mode, in which HDF5 re-reads metadata whose
checksum fails: a reader can catch an entry while the writer rewrites it. Its default of 100
attempts sleeps 1, 2, 4, ... ns between them, i.e. up to 2**100 ns: on a truncated file, whose
missing metadata never heals, that is a hang. The reader sets the attempts
(``H5Pset_metadata_read_attempts``, which h5py does not wrap: called on h5py's own libhdf5) to
:data:`SWMR_READ_ATTEMPTS`, and compares the file's size with the end of file its superblock
records first.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
from h5py import h5f, h5p, h5s

from deploy.backends.base import Field
from deploy.errors import LogError

FORMAT = "sim2real-deploy-log"
FORMAT_VERSION = 1
_CHUNK_ROWS = 64
_MESSAGE_BYTES = 512
#: Signals the writer process ignores: they reach the whole process group, and the control
#: process closes the log in order when it gets them (deploy.run turns them into exceptions).
_GROUP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
#: HDF5 sleeps 2**k ns after failed attempt k: 29 attempts give a torn metadata entry 0.54 s to
#: heal (a writer rewrites one in microseconds); a damaged file fails after as long per entry.
SWMR_READ_ATTEMPTS = 29
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
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
        # The signals are ignored first thing, before numpy and h5py load (~0.2 s in which a
        # group-wide SIGTERM would otherwise kill the writer).
        ignore = "; ".join(f"signal.signal(signal.{name}, signal.SIG_IGN)" for name in _GROUP_SIGNALS)
        code = f"import signal; {ignore}; import sys; sys.path.insert(0, {root!r}); import deploy.log as m; " \
               "m._writer_main()"
        self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        spec = {"path": str(self.path), "episodes": episodes, "attrs": {k: _attr_value(v) for k, v in attrs.items()},
                "step_fields": self.step_fields, "episode_fields": dict(episode_fields), "rt_priority": rt_priority}
        try:
            try:
                _send(self._process.stdin.fileno(), spec)
            except OSError:
                pass  # the writer died at start: its report below says why
            ready = self._process.stdout.readline().decode().rstrip("\n")
        except BaseException:  # e.g. Interrupted by a signal: EOF lets the writer close the file
            self._process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
            raise
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

    Ctrl-C, ``kill -- -PGID``, ``timeout`` and a closed terminal reach the whole process group:
    the writer ignores SIGINT, SIGTERM and SIGHUP (already from its first line, see
    :class:`LogWriter`) and ends when the control process closes the pipe (normally, or by dying:
    even after a kill -9 of the control process it writes every item it received and closes the
    file cleanly).
    """
    for name in _GROUP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    frames = _frames(sys.stdin.fileno())
    try:
        spec = next(frames)[0]
        if spec["rt_priority"] > 0 and hasattr(os, "sched_setscheduler"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(spec["rt_priority"]))
        writer = _FileWriter(**{k: v for k, v in spec.items() if k != "rt_priority"})
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        _report(f"error {error}")
        return
    _report("ready")
    try:
        for batch in frames:
            writer.write(batch)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        _report(f"error {type(error).__name__}: {error}")
    finally:
        writer.close()


def _report(line: str) -> None:
    """A line to the control process; if it is gone, the file is still closed in order."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


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
        self.started: set[int] = set()
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
            group.create_dataset("started", shape=(), dtype="int8", fillvalue=0)[()] = 0
        f.flush()

    def write(self, items: list) -> None:
        """Apply a batch of ("append"|"set", episode, values) items, then flush the file once."""
        appends: dict[tuple[int, str], list] = {}  # rows per dataset, in order: one write each
        for kind, episode, values in items:
            if episode not in self.started:  # the first item of an episode: it ran
                self.file[f"episodes/{episode}/started"][()] = 1
                self.started.add(episode)
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
    """One episode read back: complete steps only (rows every per-step dataset has).

    ``ran`` is False for an episode the session never reached (stopped by a fault or killed
    before it): it has no steps, and no reset or outcome values either.
    """

    index: int
    steps: int
    data: dict[str, np.ndarray]
    reset: dict[str, np.ndarray]
    outcome: dict
    ran: bool = True

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """Datasets under ``prefix/`` keyed by their last name (e.g. ``readings``)."""
        return {k[len(prefix) + 1:]: v for k, v in self.data.items() if k.startswith(prefix + "/")}


class LogReader:
    """Reads a session log, also while it is being written or after the writer was killed.

    A closed log is opened normally; one flagged open for writing (a live writer, or one that
    died) in SWMR read mode with bounded metadata retries (see the module docstring). Raises
    :class:`LogFormatError` naming the problem, within about a second, for files that are
    missing, not HDF5, truncated, or HDF5 but not a deployment log.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LogFormatError(f"{self.path}: no such file")
        self.file = _open_log(self.path)
        try:
            self._read_attrs()
        except BaseException:
            self.file.close()
            raise

    def _read_attrs(self) -> None:
        try:
            names = set(self.file.attrs)  # iterating fails on damaged metadata (a lookup would say "absent")
            fmt = _decode_attr(self.file.attrs["format"]) if "format" in names else None
        except (OSError, RuntimeError, KeyError) as error:  # h5py raises these for damaged metadata
            raise LogFormatError(f"{self.path} is truncated or corrupt: its attributes cannot be read ({error})"
                                 ) from None
        if fmt != FORMAT:
            found = sorted(self.file.keys())[:8]
            raise LogFormatError(f"{self.path} is an HDF5 file but not a deployment log (attribute format="
                                 f"{fmt!r}, expected {FORMAT!r}; top-level objects: {found})")
        try:
            version = int(self.file.attrs.get("format_version", -1))
            if version > FORMAT_VERSION:
                raise LogFormatError(f"{self.path} has log format version {version}; this toolkit reads <= "
                                     f"{FORMAT_VERSION}: update the toolkit")
            self.attrs = {k: _decode_attr(v) for k, v in self.file.attrs.items()}
        except (OSError, RuntimeError, KeyError) as error:
            raise LogFormatError(f"{self.path} is truncated or corrupt: its attributes cannot be read ({error})"
                                 ) from None
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
            self._refresh(ds)
            lengths.append(ds.shape[0])
        return min(lengths, default=0)

    def episode(self, index: int) -> Episode:
        """Read episode ``index`` (complete steps; lagged datasets may be one row shorter). An
        episode that never ran comes back with ``ran=False`` and no steps."""
        try:
            return self._episode(index)
        except (OSError, RuntimeError, KeyError) as error:  # h5py's errors for damaged objects
            raise LogFormatError(f"episode {index} of {self.path} is damaged or incomplete: {error}") from None

    def episode_with_steps(self, index: int) -> Episode:
        """Episode ``index`` if it has a complete step; else :class:`LogFormatError` saying why
        not: it never ran (and where the session stopped), or it started but ended (or the
        writer died) before its first step."""
        episode = self.episode(index)
        if episode.steps:
            return episode
        if not episode.ran:
            raise LogFormatError(f"episode {index} of {self.path} never ran: {self._session_end(index)}")
        status = int(episode.outcome["status"])
        how = ("it was not finished either: the run was killed before its first step completed" if status < 0 else
               f"it ended with status {status}: {episode.outcome['message'].splitlines()[0]}")
        raise LogFormatError(f"episode {index} of {self.path} started but has no complete step; {how}")

    def _session_end(self, index: int) -> str:
        """Where the session stopped, for an episode it never reached."""
        last = next((i for i in reversed(range(index)) if self.episode(i).ran), None)
        if last is None:
            return "the session stopped before any episode ran"
        outcome = self.episode(last).outcome
        status = int(outcome["status"])
        if status < 0:
            return f"the session ended during episode {last} (not finished: the run was killed)"
        return (f"the session stopped in episode {last} (status {status}: {outcome['message'].splitlines()[0]})"
                if status else f"the session ended after episode {last}")

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
            self._refresh(ds)
            data[name] = ds[:min(steps, ds.shape[0])]
        reset = {}
        if "reset" in group:
            group["reset"].visititems(lambda name, obj: reset.__setitem__(name, obj[()])
                                      if isinstance(obj, h5py.Dataset) else None)
        outcome = {name: ds[()] for name, ds in group["outcome"].items()}
        outcome["message"] = outcome["message"].decode("utf-8", "replace")
        if "started" in group:
            ran = bool(group["started"][()])
        else:  # logs written before the marker: anything recorded means the episode began
            ran = steps > 0 or int(outcome["status"]) != -1 or any(
                np.isfinite(v).any() for v in reset.values() if np.asarray(v).dtype.kind == "f")
        return Episode(index=index, steps=steps, data=data, reset=reset, outcome=outcome, ran=ran)

    def _refresh(self, ds: h5py.Dataset) -> None:
        if self.file.swmr_mode:  # a file flagged open for writing: rows may have been added
            ds.refresh()

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


# --- opening for reading --------------------------------------------------------------
def _open_log(path: Path) -> h5py.File:
    """Open ``path`` read-only: normally if closed, else (flagged open for writing) in SWMR read
    mode with :data:`SWMR_READ_ATTEMPTS`; :class:`LogFormatError` for unreadable files."""
    size = path.stat().st_size
    superblock = _superblock(path)
    if superblock is None or not superblock[1]:  # no writer flag: a closed file
        try:
            return h5py.File(path, "r")  # HDF5 checks the size against the superblock
        except OSError as error:
            text = str(error)
        if "unable to lock file" in text:
            raise LogFormatError(f"{path} is locked by another program: a writer creating it (try again in a moment) "
                                 f"or one that opened it for writing ({text})") from None
        if "already open" not in text:
            if "truncated file" in text and superblock is not None:
                raise LogFormatError(_truncated(path, size, superblock[2])) from None
            raise LogFormatError(f"{path} ({size} bytes) cannot be opened as HDF5: it is truncated, corrupt or not "
                                 f"an HDF5 file ({text})") from None
    else:
        # Flagged open for writing: a live writer, or one that died. HDF5 skips its size check in
        # SWMR mode (a writer may be extending the file), so the reader makes it: a live writer's
        # file is shorter than its superblock says for at most the moment of a flush.
        for _ in range(10):
            eoa, size = superblock[2], path.stat().st_size
            if size >= eoa:
                break
            time.sleep(0.05)
            superblock = _superblock(path) or superblock
        else:
            raise LogFormatError(_truncated(path, size, eoa))
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_LATEST, h5f.LIBVER_LATEST)
    _set_metadata_read_attempts(fapl, SWMR_READ_ATTEMPTS)
    try:
        return h5py.File(h5f.open(os.fsencode(path), h5f.ACC_RDONLY | h5f.ACC_SWMR_READ, fapl))
    except OSError as error:
        raise LogFormatError(f"{path} ({size} bytes) cannot be opened as HDF5 while it is flagged open for writing "
                             f"({error}); if it is being created, try again in a moment") from None


def _truncated(path: Path, size: int, eoa: int) -> str:
    return (f"{path} is truncated: it has {size} bytes, its HDF5 superblock records {eoa} (an incomplete copy or "
            "download, or a full disk): copy it again from the original")


def _superblock(path: Path) -> tuple[int, int, int] | None:
    """(version, status flags, end-of-file address) of a version 2/3 superblock at offset 0 (what
    the writer makes), or None for other files."""
    try:
        with open(path, "rb") as f:
            head = f.read(48)
    except OSError:
        return None
    if len(head) < 48 or head[:8] != _HDF5_SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None  # not HDF5, an older superblock layout, or not 8-byte addresses
    base, _extension, eoa, _root = np.frombuffer(head[12:44], "<u8").tolist()
    return head[8], head[11], base + eoa


def _set_metadata_read_attempts(fapl: h5p.PropFAID, attempts: int) -> None:
    """``H5Pset_metadata_read_attempts`` on ``fapl`` (h5py does not wrap it); where h5py's
    libhdf5 cannot be found, HDF5's default stays (a truncated live file may then hang)."""
    library = _hdf5_library()
    if library is None or library.H5Pset_metadata_read_attempts(fapl.id, attempts) < 0:
        print(f"deploy.log: warning: cannot bound HDF5's SWMR metadata retries (libhdf5 of h5py "
              f"{h5py.version.version} not found); a truncated log may hang", file=sys.stderr)


@functools.cache
def _hdf5_library() -> ctypes.CDLL | None:
    """The libhdf5 that h5py loaded (its symbols, not a second copy of the library): the mapped
    file of this process that defines the function, else h5py's bundled copy."""
    candidates = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and Path(fields[5]).name.startswith("libhdf5") and fields[5] not in candidates:
                candidates.append(fields[5])
    package = Path(h5py.__file__).parent
    for folder in (package.parent / "h5py.libs", package / ".dylibs"):
        candidates += sorted(str(p) for p in folder.glob("libhdf5*")) if folder.is_dir() else []
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate)
            function = library.H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        return library
    return None
