"""Headless rendering of MuJoCo scenes and mp4 video (torch-free: numpy, mujoco, imageio, PIL).

    from toolkit.video import Renderer, VideoWriter, annotate

    with VideoWriter("episode.mp4", fps=10) as video, Renderer(model, "overview", 320, 240) as renderer:
        for step in range(40):
            ...  # step the MjData
            video.append(annotate(renderer.render(data), [f"step {step}"]))

OpenGL. MuJoCo's own ``mujoco.Renderer`` takes its GL backend from ``MUJOCO_GL`` once, when
``mujoco`` is first imported (``mujoco/rendering/classic/gl_context.py`` binds the module global
``GLContext``; without the variable that is GLFW, which needs a display). Commands import mujoco
long before they know they will render, so :class:`Renderer` does not use it: it creates the GL
context itself from the backend modules ``mujoco.egl`` / ``mujoco.osmesa`` / ``mujoco.glfw`` (each
a ``GLContext(max_width, max_height)`` class) and the low-level ``mjr_*`` calls, which works
whenever mujoco was imported. Backends are tried in the order of :func:`gl_backends`: the one
``MUJOCO_GL`` names, else (no ``DISPLAY``) EGL, then OSMesa. With none working,
:class:`GLUnavailableError` says, in one line, what failed, which variable to set and which
package to install. The first backend that works is kept for the rest of the process.

Contexts are current per thread: use a renderer from the thread that created it.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import traceback
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import mujoco

#: Values of MUJOCO_GL that switch rendering off, and those that mean "pick one" (mujoco's spellings).
_GL_DISABLED = frozenset({"disable", "disabled", "off", "false", "0"})
_GL_AUTO = frozenset({"", "enable", "enabled", "on", "true", "1"})
_GL_MODULES = {"egl": "mujoco.egl", "osmesa": "mujoco.osmesa", "glfw": "mujoco.glfw", "glx": "mujoco.glfw",
               "cgl": "mujoco.cgl"}
_INSTALL_HINT = ("Headless Linux: install Mesa's EGL (Debian/Ubuntu: apt install libegl1 libgl1-mesa-dri) and set "
                 "MUJOCO_GL=egl, or OSMesa (apt install libosmesa6) and set MUJOCO_GL=osmesa; with a display: "
                 "MUJOCO_GL=glfw")
#: The backend that worked first in this process (every later context uses it).
_working_backend: str | None = None


class GLUnavailableError(RuntimeError):
    """No OpenGL backend can render offscreen here; the message says what to set or install."""


# --- OpenGL -----------------------------------------------------------------------------------
def gl_backends() -> tuple[str, ...]:
    """The GL backends to try, in order, from the environment at call time.

    ``MUJOCO_GL`` set to a backend: that one only (the user's choice). Unset (or "on"): on Linux
    ``glfw`` first when there is a ``DISPLAY`` (or ``WAYLAND_DISPLAY``), then ``egl`` and
    ``osmesa``; macOS ``cgl``, ``glfw``; Windows ``glfw``. Raises :class:`GLUnavailableError` for
    a MUJOCO_GL that disables rendering or names no backend.
    """
    value = os.environ.get("MUJOCO_GL", "").strip().lower()
    if value in _GL_DISABLED:
        raise GLUnavailableError(f"rendering is switched off by MUJOCO_GL={value}: unset it or set MUJOCO_GL=egl")
    if value not in _GL_AUTO:
        if value not in _GL_MODULES:
            raise GLUnavailableError(f"MUJOCO_GL={value!r} names no OpenGL backend: use egl, osmesa or glfw")
        return (value,)
    system = platform.system()
    if system == "Darwin":
        return ("cgl", "glfw")
    if system != "Linux":
        return ("glfw",)
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return ("glfw", "egl", "osmesa") if display else ("egl", "osmesa")


def import_mujoco():
    """``import mujoco``, turning mujoco's own import-time GL failure into :class:`GLUnavailableError`.

    mujoco 4.0 imports the ``MUJOCO_GL`` backend while it is imported and catches only
    ImportError: ``MUJOCO_GL=osmesa`` without libOSMesa (or ``egl`` without libEGL) makes
    ``import mujoco`` itself fail with an AttributeError from PyOpenGL.
    """
    try:
        import mujoco
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        if any("gl_context" in frame.filename or "OpenGL" in frame.filename for frame in frames):
            value = os.environ.get("MUJOCO_GL", "")
            raise GLUnavailableError(f"import mujoco failed in its OpenGL set-up (MUJOCO_GL={value}): "
                                     f"{_one_line(error)}. {_INSTALL_HINT}, or unset MUJOCO_GL") from error
        raise
    return mujoco


def ensure_gl() -> str:
    """Make offscreen rendering work (no display needed) and return the backend in use
    ("egl", "osmesa", "glfw", ...). Cheap after the first call. Raises :class:`GLUnavailableError`."""
    mujoco = import_mujoco()
    if _working_backend is None:
        context, mjr_context, _ = _open_context(mujoco.MjModel.from_xml_string("<mujoco/>"), 1, 1)
        _free_context(context, mjr_context)
    return _working_backend


def _open_context(model: mujoco.MjModel, width: int, height: int):
    """A current GL context and an offscreen MjrContext of ``model``, from the first backend that
    gives a live context; returns (gl_context, mjr_context, backend).

    A backend is judged by its context alone: MuJoCo's ``mjr_makeContext`` cannot be retried in a
    process after it failed (its one-time GL loader stays half-initialised and the next call
    aborts), so it is called only on a context known to be current.
    """
    global _working_backend
    mujoco = import_mujoco()
    proven = _working_backend is not None  # a context of this backend already rendered in this process
    candidates = (_working_backend,) if proven else gl_backends()
    failures = []
    for backend in candidates:
        opengl_loaded = "OpenGL" in sys.modules
        pyopengl_platform = os.environ.get("PYOPENGL_PLATFORM")
        context = None
        with warnings.catch_warnings(record=True) as caught:  # GLFW reports its failures as warnings
            warnings.simplefilter("always")
            try:
                context = importlib.import_module(_GL_MODULES[backend]).GLContext(width, height)
                if not getattr(context, "_context", True):  # GLFW hands back a NULL window instead of raising
                    raise RuntimeError("no window could be created")
                context.make_current()
            except Exception as error:
                _free_context(context, None)
                notes = [str(w.message) for w in caught if "GLFW" in type(w.message).__name__]
                failures.append(f"{backend}: {_one_line(error)}" + (f" ({_one_line(notes[0])})" if notes else ""))
                if not opengl_loaded:
                    _forget_pyopengl(pyopengl_platform)
                continue
        try:
            mjr_context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, mjr_context)
        except Exception as error:
            _free_context(context, None)
            if proven:  # GL works here: this model is the problem
                raise
            raise GLUnavailableError(f"MuJoCo cannot render with the {backend} OpenGL context: {_one_line(error)}. "
                                     f"{_INSTALL_HINT}") from error
        _working_backend = backend
        return context, mjr_context, backend
    setting = os.environ.get("MUJOCO_GL")
    display = "" if os.environ.get("DISPLAY") else ", no DISPLAY"
    which = f"MUJOCO_GL={setting}" if setting else f"MUJOCO_GL unset{display}"
    missing_python = any("No module named 'OpenGL'" in failure for failure in failures)
    hint = "pip install PyOpenGL; " if missing_python else ""
    raise GLUnavailableError(f"no OpenGL for MuJoCo's offscreen renderer ({which}; tried {'; '.join(failures)}). "
                             f"{hint}{_INSTALL_HINT}")


def _forget_pyopengl(platform_before: str | None) -> None:
    """Undo a failed backend's PyOpenGL binding so that the next backend can bind its own
    platform: PyOpenGL picks it (PYOPENGL_PLATFORM, set by mujoco's backend modules) once per
    import. Only called when this attempt was the one that imported PyOpenGL."""
    for name in [name for name in sys.modules if name == "OpenGL" or name.startswith("OpenGL.")
                 or name.startswith(("mujoco.egl", "mujoco.osmesa"))]:
        del sys.modules[name]
    if platform_before is None:
        os.environ.pop("PYOPENGL_PLATFORM", None)
    else:
        os.environ["PYOPENGL_PLATFORM"] = platform_before


def _free_context(context, mjr_context) -> None:
    if mjr_context is not None:
        mjr_context.free()
    if context is not None:
        try:
            context.free()
        except Exception:  # a half-made context (failed backend) may not free cleanly
            pass


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    head = text[0] if text else ""
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    line = f"{name}: {head}" if name else head
    return line if len(line) <= 200 else line[:197] + "..."


# --- cameras and geoms ------------------------------------------------------------------------
def camera_names(model: mujoco.MjModel) -> list[str]:
    """Names of the model's cameras, in id order."""
    mujoco = import_mujoco()
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) or f"<unnamed {i}>" for i in range(model.ncam)]


def camera_id(model: mujoco.MjModel, camera: str) -> int:
    """Id of the camera named ``camera``; ValueError listing the model's cameras when it has none
    of that name (no GL needed: call it to check a ``--camera`` before anything runs)."""
    mujoco = import_mujoco()
    index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if index < 0:
        names = camera_names(model)
        listed = ", ".join(f"'{name}'" for name in names) if names else "none"
        raise ValueError(f"the model has no camera '{camera}'; its cameras: {listed}")
    return index


def _bodies_within(model: mujoco.MjModel, bodies: Iterable[str], subtree: bool) -> np.ndarray:
    """(nbody,) bool: the named bodies, and their descendants when ``subtree``."""
    mujoco = import_mujoco()
    body_ids = []
    for name in bodies:
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if index < 0:
            raise ValueError(f"the model has no body '{name}'")
        body_ids.append(index)
    within = np.isin(np.arange(model.nbody), body_ids)
    if subtree:
        for body in range(1, model.nbody):  # MuJoCo numbers parents before their children
            within[body] |= within[model.body_parentid[body]]
    return within


def geom_ids(model: mujoco.MjModel, bodies: Iterable[str] = (), geoms: Iterable[str] = (),
             subtree: bool = True) -> np.ndarray:
    """Geom ids of the named ``bodies`` (with their descendants when ``subtree``) and ``geoms``.

    An unknown name is a ValueError. For :func:`segmentation_share` and :meth:`Renderer.pixel_share`.
    """
    mujoco = import_mujoco()
    ids = set(np.flatnonzero(_bodies_within(model, bodies, subtree)[model.geom_bodyid]).tolist())
    for name in geoms:
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)
        if index < 0:
            raise ValueError(f"the model has no geom '{name}'")
        ids.add(index)
    return np.array(sorted(ids), dtype=np.int64)


def site_ids(model: mujoco.MjModel, bodies: Iterable[str] = (), subtree: bool = True) -> np.ndarray:
    """Site ids of the named ``bodies`` (with their descendants when ``subtree``): markers such
    as a goal site are sites, not geoms."""
    within = _bodies_within(model, bodies, subtree)
    return np.flatnonzero(within[model.site_bodyid]).astype(np.int64)


def segmentation_share(segmentation: np.ndarray, geoms: np.ndarray = (), sites: np.ndarray = ()) -> float:
    """Share of the pixels of ``segmentation`` ((H, W, 2) from :meth:`Renderer.segmentation`)
    that show one of the geoms ``geoms`` or sites ``sites``."""
    return float(np.mean(segmentation_mask(segmentation, geoms, sites)))


def segmentation_mask(segmentation: np.ndarray, geoms: np.ndarray = (), sites: np.ndarray = ()) -> np.ndarray:
    """(H, W) bool: the pixels of ``segmentation`` that show one of ``geoms`` or ``sites``."""
    mujoco = import_mujoco()
    ids, types = segmentation[..., 0], segmentation[..., 1]
    return (((types == int(mujoco.mjtObj.mjOBJ_GEOM)) & np.isin(ids, np.asarray(geoms, dtype=np.int64)))
            | ((types == int(mujoco.mjtObj.mjOBJ_SITE)) & np.isin(ids, np.asarray(sites, dtype=np.int64))))


# --- rendering --------------------------------------------------------------------------------
class Renderer:
    """Offscreen frames of ``model`` seen from its camera ``camera``.

    Args:
        model: the compiled model; its offscreen framebuffer (``vis.global_.offwidth`` /
            ``offheight``) is enlarged to the frame size when smaller, its shadow map capped to
            ``shadow_size`` (visual settings only, read when the renderer is made).
        camera: name of one of the model's cameras (tasks name theirs in ``Task.camera``).
        width, height: frame size in pixels.
        scene_option: a ``mujoco.MjvOption`` (visible geom groups, frames, ...); default MuJoCo's.
        shadow_size: caps the model's shadow map (``vis.quality.shadowsize``, MuJoCo's default
            4096): software GL (Mesa llvmpipe) spends most of a frame on it, and at video sizes
            1024 looks the same (2-core CPU, D'Claw 320x240: 140 -> 60 ms per frame).

    An unknown camera is a ValueError listing the model's cameras, raised before any GL work; no
    OpenGL is a :class:`GLUnavailableError`.
    """

    def __init__(self, model: mujoco.MjModel, camera: str = "overview", width: int = 320, height: int = 240,
                 scene_option: mujoco.MjvOption | None = None, max_geom: int = 2000, shadow_size: int = 1024) -> None:
        mujoco = import_mujoco()
        self._gl = self._mjr = None  # close() works whatever __init__ reaches
        self.camera = camera
        camera_index = camera_id(model, camera)
        if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))
                and width > 0 and height > 0):
            raise ValueError(f"frame size must be positive integers, got width={width!r} height={height!r}")
        self.model, self.width, self.height = model, int(width), int(height)
        visual = model.vis.global_
        visual.offwidth, visual.offheight = max(visual.offwidth, self.width), max(visual.offheight, self.height)
        model.vis.quality.shadowsize = min(model.vis.quality.shadowsize, shadow_size)
        self._gl, self._mjr, self.backend = _open_context(model, self.width, self.height)
        self._scene = mujoco.MjvScene(model, maxgeom=max_geom)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_index
        self._option = scene_option if scene_option is not None else mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), dtype=np.uint8)

    def _draw(self, data: mujoco.MjData, segment: bool) -> np.ndarray:
        mujoco = import_mujoco()
        if self._mjr is None:
            raise RuntimeError("the renderer is closed")
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, self._scene)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = segment
        self._scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = segment
        self._gl.make_current()
        mujoco.mjr_render(self._rect, self._scene, self._mjr)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._mjr)
        return self._rgb[::-1]  # OpenGL's rows run bottom-up

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """An RGB frame (height, width, 3) uint8 of ``data`` (call ``mj_forward`` after setting
        qpos by hand: the frame shows ``data``'s poses, xpos/xmat)."""
        return self._draw(data, segment=False).copy()

    def segmentation(self, data: mujoco.MjData) -> np.ndarray:
        """(height, width, 2) int32: per pixel the (object id, ``mjtObj`` type) it shows, (-1, -1)
        for the background. Geoms have type ``mjOBJ_GEOM``; sites and other decor have theirs."""
        pixels = self._draw(data, segment=True).astype(np.int64)
        segment = pixels[..., 0] + (pixels[..., 1] << 8) + (pixels[..., 2] << 16)  # segid + 1, 0 = background
        table = np.full((self._scene.ngeom + 1, 2), -1, dtype=np.int32)
        for geom in self._scene.geoms[:self._scene.ngeom]:
            if geom.segid >= 0:
                table[geom.segid + 1] = (geom.objid, geom.objtype)
        return table[np.clip(segment, 0, self._scene.ngeom)]

    def pixel_share(self, data: mujoco.MjData, geoms: np.ndarray = (), sites: np.ndarray = ()) -> float:
        """Share of the frame's pixels that show one of ``geoms`` or ``sites`` (see :func:`geom_ids`)."""
        return segmentation_share(self.segmentation(data), geoms, sites)

    def close(self) -> None:
        if self._mjr is not None:
            self._gl.make_current()
        _free_context(self._gl, self._mjr)
        self._gl = self._mjr = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


# --- text and composition ---------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def annotate(frame: np.ndarray, lines: Sequence[str], corner: str = "top-left",
             font_size: int | None = None) -> np.ndarray:
    """A copy of ``frame`` (H, W, 3) uint8 with ``lines`` of text burned into ``corner``
    ("top-left", "top-right", "bottom-left", "bottom-right") on a dark translucent box."""
    from PIL import Image, ImageDraw

    corners = ("top-left", "top-right", "bottom-left", "bottom-right")
    if corner not in corners:
        raise ValueError(f"corner must be one of {corners}, got '{corner}'")
    _check_frame(frame)
    lines = [str(line) for line in lines if str(line)]
    if not lines:
        return frame.copy()
    height, width = frame.shape[:2]
    size = font_size or max(9, height // 18)
    font = _font(size)
    pad, spacing = max(2, size // 4), max(1, size // 5)
    image = Image.fromarray(frame).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=spacing)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = pad if corner.endswith("left") else width - box_w - pad
    y = pad if corner.startswith("top") else height - box_h - pad
    draw.rectangle((x, y, x + box_w, y + box_h), fill=(0, 0, 0, 150))
    draw.multiline_text((x + pad - left, y + pad - top), text, font=font, fill=(255, 255, 255, 255), spacing=spacing)
    return np.asarray(Image.alpha_composite(image, overlay).convert("RGB"))


def caption(episode: int | None = None, step: int | None = None, steps: int | None = None,
            success: bool | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The usual lines of an episode frame: "episode 3", "step 12/40", "success yes"."""
    lines = []
    if episode is not None:
        lines.append(f"episode {episode}")
    if step is not None:
        lines.append(f"step {step}" + (f"/{steps}" if steps is not None else ""))
    if success is not None:
        lines.append(f"success {'yes' if success else 'no'}")
    return lines + list(extra)


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str] = ("replay", "log"),
                 gap: int = 4) -> np.ndarray:
    """``left`` and ``right`` frames next to each other on a dark background, each under a strip
    with its label (the frames' own text stays readable); the result has even sides (H.264)."""
    from PIL import Image, ImageDraw

    _check_frame(left)
    _check_frame(right)
    height = max(left.shape[0], right.shape[0])
    size = max(9, height // 18)
    header = size + max(4, size // 2)
    header += (header + height) % 2  # even height
    total_h, width = header + height, left.shape[1] + gap + right.shape[1]
    width += width % 2
    out = np.full((total_h, width, 3), 24, dtype=np.uint8)
    out[header:header + left.shape[0], :left.shape[1]] = left
    x_right = left.shape[1] + gap
    out[header:header + right.shape[0], x_right:x_right + right.shape[1]] = right
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    font = _font(size)
    for x, label in ((0, labels[0]), (x_right, labels[1])):
        draw.text((x + max(2, size // 3), header // 2), str(label), font=font, fill=(235, 235, 235), anchor="lm")
    return np.asarray(image)


def _check_frame(frame: np.ndarray) -> None:
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        got = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}"
        raise ValueError(f"a frame is an (H, W, 3) uint8 array, got {got}")


# --- video files ------------------------------------------------------------------------------
def check_video_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a video can be written there, else a ValueError that says why
    (not .mp4, a directory, missing or read-only directory, read-only file). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"video path '{path}' is a directory: name a file, e.g. '{path / 'video.mp4'}'")
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"video path '{path}' must end in .mp4 (H.264 in an MP4 file)")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write video '{path}': directory '{parent}' does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write video '{path}': permission denied (choose a writable path)")
    return path


class VideoWriter:
    """Frames to an H.264 mp4 at ``fps``, encoded by the ffmpeg binary that the imageio-ffmpeg
    wheel ships (no system ffmpeg).

    The path is checked when the writer is made (ValueError, before anything is rendered); frames
    go to ``<name>.partial.mp4`` beside it, renamed to ``path`` by :meth:`close` (also on leaving a
    ``with`` block, on an exception too): a crashed session leaves no broken file under ``path``.
    Every frame must have the first frame's size, with even width and height (yuv420p).

    Args:
        path: the .mp4 file to write (replaced if it exists).
        fps: frames per second of the video (e.g. the control rate).
        quality: imageio-ffmpeg's 0-10 quality scale (10 best, larger files).
    """

    def __init__(self, path: str | os.PathLike, fps: float, quality: float = 7.0) -> None:
        self.path = check_video_path(path)
        if not fps > 0:
            raise ValueError(f"video fps must be > 0, got {fps}")
        if not 0 <= quality <= 10:
            raise ValueError(f"video quality must be in [0, 10], got {quality}")
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()  # raises now if the wheel's binary is missing
        self.fps, self.quality = float(fps), float(quality)
        self.partial_path = self.path.with_name(f"{self.path.stem}.partial.mp4")
        try:
            self.partial_path.open("wb").close()  # the real write test (read-only file systems, quotas)
        except OSError as error:
            raise ValueError(f"cannot write video '{self.path}': {error.strerror or error}") from error
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._writer = None

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 RGB frame."""
        _check_frame(frame)
        height, width = frame.shape[:2]
        if self._writer is None:
            if self.partial_path is None:
                raise RuntimeError(f"video '{self.path}' is closed")
            if width % 2 or height % 2:
                raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {width}x{height}")
            import imageio.v2 as imageio

            self.size = (width, height)
            self._writer = imageio.get_writer(
                self.partial_path, format="FFMPEG", mode="I", fps=self.fps, codec="libx264", quality=self.quality,
                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                output_params=["-movflags", "+faststart"])
        elif (width, height) != self.size:
            raise ValueError(f"frame {self.frames} is {width}x{height}, the video's frames are "
                             f"{self.size[0]}x{self.size[1]}")
        self._writer.append_data(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path (None when no frame was written: nothing is left)."""
        if self.partial_path is None:
            return self.path if self.frames else None
        partial, self.partial_path = self.partial_path, None
        if self._writer is None:
            partial.unlink(missing_ok=True)
            return None
        writer, self._writer = self._writer, None
        writer.close()
        os.replace(partial, self.path)
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames of a video, (T, H, W, 3) uint8, and its fps (imageio-ffmpeg)."""
    import imageio.v2 as imageio

    with imageio.get_reader(Path(path), format="FFMPEG") as reader:
        fps = float(reader.get_meta_data()["fps"])
        frames = [np.asarray(frame) for frame in reader]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8), fps
