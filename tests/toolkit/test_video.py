"""toolkit.video: headless rendering of the D'Claw, text and side-by-side frames, real H.264 mp4
files (imageio-ffmpeg's own ffmpeg) read back, and the clear errors (bad path, unknown camera, no GL)."""

import os
import subprocess
import sys

import mujoco
import numpy as np
import pytest

from robots.dclaw.spec import TURN_XML
from toolkit.video import (
    GLUnavailableError,
    Renderer,
    VideoWriter,
    annotate,
    camera_id,
    caption,
    check_video_path,
    ensure_gl,
    geom_ids,
    read_video,
    side_by_side,
)

WIDTH, HEIGHT, FPS = 320, 240, 10
SUBSTEPS = 20  # 0.1 s control period / 5 ms physics step


@pytest.fixture(scope="module")
def gl():
    try:
        return ensure_gl()
    except GLUnavailableError as error:  # the one reason to skip: no OpenGL at all
        pytest.skip(f"no OpenGL on this machine: {error}")


@pytest.fixture()
def dclaw():
    model = mujoco.MjModel.from_xml_path(str(TURN_XML))
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    mujoco.mj_forward(model, data)
    return model, data


def drive(model, data, renderer, steps: int, rng) -> list[np.ndarray]:
    """Frames of the D'Claw moving to a new random joint target every control step."""
    low, high = model.actuator_ctrlrange.T
    frames = []
    for _ in range(steps):
        data.ctrl[:] = rng.uniform(low, high)
        for _ in range(SUBSTEPS):
            mujoco.mj_step(model, data)
        mujoco.mj_forward(model, data)
        frames.append(renderer.render(data))
    return frames


def test_video_of_a_moving_dclaw_reads_back(gl, dclaw, tmp_path):
    model, data = dclaw
    rng = np.random.default_rng(0)
    path = tmp_path / "claw.mp4"
    with Renderer(model, "overview", WIDTH, HEIGHT) as renderer:
        still = [renderer.render(data) for _ in range(2)]
        frames = drive(model, data, renderer, 12, rng)
    np.testing.assert_array_equal(still[0], still[1])  # rendering is deterministic: change below is motion
    differences = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, frames[1:], strict=False)]
    assert min(differences) > 0.5, differences
    with VideoWriter(path, fps=FPS) as video:
        for step, frame in enumerate(frames):
            video.append(annotate(frame, caption(episode=0, step=step, steps=len(frames), success=False)))
    assert video.frames == 12 and video.size == (WIDTH, HEIGHT)
    assert not video.partial_path or not video.partial_path.exists()
    assert not (tmp_path / "claw.partial.mp4").exists()
    decoded, fps = read_video(path)
    assert decoded.shape == (12, HEIGHT, WIDTH, 3) and decoded.dtype == np.uint8 and fps == FPS
    # What was written is what comes back (lossy, upright): close to each frame, far from its flip.
    error = np.abs(decoded[5].astype(int) - frames[5].astype(int)).mean()
    flipped = np.abs(decoded[5].astype(int) - frames[5][::-1].astype(int)).mean()
    assert error < 6 and flipped > 4 * error, (error, flipped)
    assert np.abs(decoded[1:].astype(int) - decoded[:-1].astype(int)).mean(axis=(1, 2, 3)).min() > 0.5


def test_robot_is_in_frame(gl, dclaw):
    model, data = dclaw
    robot, valve = geom_ids(model, bodies=["claw"]), geom_ids(model, bodies=["valve"])
    assert len(robot) == 13 and len(valve) == 4
    with Renderer(model, "overview", WIDTH, HEIGHT) as renderer:
        segmentation = renderer.segmentation(data)
        assert renderer.pixel_share(data, robot) > 0.08
        assert renderer.pixel_share(data, valve) > 0.01
        floor = geom_ids(model, geoms=["floor"])
        # The shares partition the image: robot, valve, floor, base, sites and background.
        assert 0.9 < renderer.pixel_share(data, np.arange(model.ngeom)) + np.mean(segmentation[..., 0] == -1) <= 1
        assert renderer.pixel_share(data, floor) > 0.3
    with pytest.raises(ValueError, match="no body 'hand'"):
        geom_ids(model, bodies=["hand"])


def test_any_frame_size(gl, dclaw):
    model, data = dclaw
    assert model.vis.global_.offwidth == 640
    with Renderer(model, "overview", width=800, height=600) as renderer:  # beyond the model's 640x480 buffer
        assert renderer.render(data).shape == (600, 800, 3)
    with pytest.raises(ValueError, match="frame size must be positive integers"):
        Renderer(model, "overview", width=0, height=240)


def test_text_and_side_by_side():
    frame = np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)
    out = annotate(frame, ["episode 3", "step 12/40", "success yes"])
    changed = np.argwhere((out != frame).any(axis=-1))
    assert out.shape == frame.shape and len(changed) > 500
    assert changed[:, 0].max() < HEIGHT // 2 and changed[:, 1].max() < WIDTH // 2  # in the top-left corner
    bottom_right = np.argwhere((annotate(frame, ["x"], corner="bottom-right") != frame).any(axis=-1))
    assert bottom_right[:, 0].min() > HEIGHT // 2 and bottom_right[:, 1].min() > WIDTH // 2
    np.testing.assert_array_equal(frame, np.full_like(frame, 200))  # the input is left alone
    assert caption(episode=3, step=12, steps=40, success=True) == ["episode 3", "step 12/40", "success yes"]
    with pytest.raises(ValueError, match="corner must be one of"):
        annotate(frame, ["x"], corner="middle")
    left, right = np.zeros((240, 320, 3), np.uint8), np.full((121, 161, 3), 255, np.uint8)
    both = side_by_side(left, right, labels=("replayed sim", "logged"))
    header = both.shape[0] - 240
    assert both.shape == (240 + header, 320 + 4 + 162, 3) and 10 <= header <= 30  # even sides for H.264
    np.testing.assert_array_equal(both[header:, :320], left)  # the frames themselves are untouched
    np.testing.assert_array_equal(both[header:header + 121, 324:324 + 161], right)
    assert (both[header + 130:, 400] == 24).all()  # padding below the smaller frame
    strip = both[:header]
    assert (strip[:, :160] > 100).any() and (strip[:, 324:480] > 100).any()  # both labels are drawn
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        side_by_side(left.astype(np.float32), right)


def test_bad_video_paths_fail_before_any_frame(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "a.mp4", fps=FPS)
    with pytest.raises(ValueError, match="is a directory"):
        VideoWriter(tmp_path, fps=FPS)
    with pytest.raises(ValueError, match=r"must end in \.mp4"):
        check_video_path(tmp_path / "a.avi")
    (tmp_path / "file.txt").touch()
    with pytest.raises(ValueError, match="does not exist"):
        VideoWriter(tmp_path / "file.txt" / "a.mp4", fps=FPS)
    # /proc takes no new files, even as root: the writer's real write test catches it.
    with pytest.raises(ValueError, match="cannot write video '/proc/video.mp4'"):
        VideoWriter("/proc/video.mp4", fps=FPS)
    with pytest.raises(ValueError, match="fps must be > 0"):
        VideoWriter(tmp_path / "a.mp4", fps=0)
    assert list(tmp_path.iterdir()) == [tmp_path / "file.txt"]  # nothing was left behind


def test_writer_checks_frames_and_leaves_no_empty_file(tmp_path):
    path = tmp_path / "a.mp4"
    video = VideoWriter(path, fps=FPS)
    assert video.close() is None and not path.exists() and list(tmp_path.iterdir()) == []
    video = VideoWriter(path, fps=FPS)
    with pytest.raises(ValueError, match="even frame sizes, got 321x240"):
        video.append(np.zeros((240, 321, 3), np.uint8))
    video.append(np.zeros((240, 320, 3), np.uint8))
    with pytest.raises(ValueError, match="frame 1 is 160x120, the video's frames are 320x240"):
        video.append(np.zeros((120, 160, 3), np.uint8))
    assert video.close() == path and read_video(path)[0].shape == (1, 240, 320, 3)


def test_unknown_camera_lists_the_cameras(dclaw):
    model, _ = dclaw
    assert camera_id(model, "overview") == 1
    with pytest.raises(ValueError, match="no camera 'top'; its cameras: 'side', 'overview'"):
        camera_id(model, "top")


NO_GL = """
import sys
from toolkit.video import GLUnavailableError, ensure_gl
try:
    backend = ensure_gl()
except GLUnavailableError as error:
    print("NO-GL", error)
else:
    print("BACKEND", backend)
"""

UNKNOWN_CAMERA_THEN_NO_GL = """
import mujoco  # as the commands do: mujoco first
from robots.dclaw.spec import TURN_XML
from toolkit.video import GLUnavailableError, Renderer
model = mujoco.MjModel.from_xml_path(str(TURN_XML))
try:
    Renderer(model, "top")
except ValueError as error:
    print("CAMERA", error)
try:
    Renderer(model, "overview")
except GLUnavailableError as error:
    print("NO-GL", error)
"""


def run_python(code: str, **env: str | None) -> list[str]:
    """stdout lines of ``code`` in a fresh interpreter; ``env`` sets (None: removes) variables.
    PYOPENGL_PLATFORM is removed: this process's own rendering set it (mujoco.egl does)."""
    env = {"PYOPENGL_PLATFORM": None, **env}
    environ = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for key in [k for k, v in env.items() if v is None]:
        environ.pop(key, None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environ)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_no_gl_is_one_clear_line():
    # GLFW needs a display: with MUJOCO_GL=glfw and none, no backend can work, on any machine.
    lines = run_python(UNKNOWN_CAMERA_THEN_NO_GL, MUJOCO_GL="glfw", DISPLAY=None, WAYLAND_DISPLAY=None)
    assert lines[0] == "CAMERA the model has no camera 'top'; its cameras: 'side', 'overview'"  # before any GL
    assert len(lines) == 2 and lines[1].startswith("NO-GL no OpenGL for MuJoCo's offscreen renderer (MUJOCO_GL=glfw")
    assert "MUJOCO_GL=egl" in lines[1] and "apt install libegl1" in lines[1]


def test_osmesa_without_libosmesa_is_one_clear_line():
    lines = run_python(NO_GL, MUJOCO_GL="osmesa")
    if lines == ["BACKEND osmesa"]:
        pytest.skip("OSMesa works on this machine: its failure cannot be shown here")
    assert len(lines) == 1 and lines[0].startswith("NO-GL"), lines
    assert "MUJOCO_GL=osmesa" in lines[0] and "libosmesa6" in lines[0]


def test_headless_default_and_fallback(gl):
    # No MUJOCO_GL and no display: EGL (where this process rendered), chosen after mujoco was imported.
    assert run_python("import mujoco\n" + NO_GL, MUJOCO_GL=None, DISPLAY=None) == [f"BACKEND {gl}"]
    # A display that cannot be opened: GLFW fails, the next backend takes over.
    assert run_python(NO_GL, MUJOCO_GL=None, DISPLAY=":99") == [f"BACKEND {gl}"]


def test_a_failed_egl_leaves_osmesa_its_turn():
    # EGL fails after binding PyOpenGL to EGL; OSMesa must still get a real try, not a platform clash.
    lines = run_python(NO_GL, MUJOCO_GL=None, DISPLAY=None, MUJOCO_EGL_DEVICE_ID="999")
    assert len(lines) == 1, lines
    if lines[0] != "BACKEND osmesa":
        assert "tried egl: RuntimeError: The MUJOCO_EGL_DEVICE_ID" in lines[0] and "; osmesa: " in lines[0], lines
        assert "PYOPENGL_PLATFORM" not in lines[0]


def test_importing_the_helpers_loads_neither_torch_nor_mujoco():
    code = ("import json, sys, toolkit.video, toolkit.progress, toolkit.plot\n"
            "print(json.dumps(sorted(m for m in ('torch', 'mujoco', 'matplotlib', 'rich') if m in sys.modules)))")
    assert run_python(code) == ["[]"]  # deploy's hardware path may import them (mujoco only when rendering)
