"""Every task's scene has its named camera, and that camera frames the robot and its object.

Framing is measured with MuJoCo's segmentation rendering (toolkit.video) on the task's own reset
states and after seeded random actions: the robot's geoms and the object's geoms each cover a
minimum share of a 320x240 frame, and neither touches the frame's border (nothing is cut off).
Thresholds are about 60 % of the smallest shares measured (D'Claw: robot 12-14 %, valve 1.9-3.5 %;
Shadow Hand: hand 3.3-5.3 %, cube 1.4-1.9 %) and above what MuJoCo's default free camera shows
(D'Claw robot 6.5 %; Shadow Hand hand 0.6 %, cube 0.2 %).
"""

import mujoco
import numpy as np
import pytest
import torch

from robots import TASKS, make_task
from robots.shadow_hand import scene
from robots.shadow_hand.reorient import ReorientTask
from toolkit.config import EnvConfig
from toolkit.envs.vec_env import VecEnv
from toolkit.video import GLUnavailableError, Renderer, ensure_gl, geom_ids, segmentation_mask, site_ids

#: task -> minimum share of the frame for the robot and for the object, and whether the task
#: poses a goal marker (body "goal") that must be seen. Every registered task must be listed.
FRAMING = {
    "dclaw-turn": {"robot": 0.08, "object": 0.01, "goal": True},
    "dclaw-pose": {"robot": 0.08, "object": 0.01, "goal": False},  # its goal is a joint pose, no marker
    "shadow_hand-reorient": {"robot": 0.02, "object": 0.008, "goal": True},
}
WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def gl():
    try:
        return ensure_gl()
    except GLUnavailableError as error:
        pytest.skip(f"no OpenGL on this machine: {error}")


def robot_root(model: mujoco.MjModel, task) -> str:
    """The deepest body that holds every actuated joint: the robot's subtree."""
    joints = model.actuator_trnid[task.indices.actuator_ids, 0]

    def chain(body: int) -> list[int]:
        out = [body]
        while body:
            body = int(model.body_parentid[body])
            out.append(body)
        return out

    chains = [chain(int(body)) for body in model.jnt_bodyid[joints]]
    common = set(chains[0]).intersection(*chains[1:])
    root = next(body for body in chains[0] if body in common)
    assert root != 0, "the actuated joints share no body below the world"
    return mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, root)


def test_every_task_is_listed():
    assert set(FRAMING) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_camera_is_in_the_compiled_model(name):
    task = make_task(name)
    model = task.build_model()
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, task.camera) >= 0, task.camera


@pytest.mark.parametrize("name", sorted(TASKS))
def test_camera_frames_robot_object_and_goal(name, gl):
    expect = FRAMING[name]
    task = make_task(name)
    env = VecEnv(task, EnvConfig(task=name, num_envs=1))
    model = env.model
    objects = task.dr_table().object_bodies
    assert objects, f"task '{name}' names no object bodies in its DR table"
    parts = {"robot": (geom_ids(model, [robot_root(model, task)]), ()),
             "object": (geom_ids(model, objects), ())}
    if expect["goal"]:
        parts["goal"] = (geom_ids(model, ["goal"]), site_ids(model, ["goal"]))
    rng = np.random.default_rng(0)
    shares = {part: [] for part in parts}
    with Renderer(model, task.camera, WIDTH, HEIGHT) as renderer:
        for seed in range(3):
            env.reset(seed=seed)
            for check in range(3):  # the reset state, then after 5 and 10 random actions
                data = env.sim.get_data(0)
                mujoco.mj_forward(model, data)
                segmentation = renderer.segmentation(data)
                for part, (geoms, sites) in parts.items():
                    mask = segmentation_mask(segmentation, geoms, sites)
                    shares[part].append(float(mask.mean()))
                    border = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                    assert not border, f"{name}: the {part} is cut off by the frame (seed {seed}, check {check})"
                for _ in range(5):
                    action = rng.uniform(-1, 1, (1, len(task.robot.joint_names)))
                    env.step(torch.as_tensor(action, dtype=torch.float32))
    env.close()
    assert min(shares["robot"]) >= expect["robot"], shares["robot"]
    assert min(shares["object"]) >= expect["object"], shares["object"]
    if expect["goal"]:
        assert min(shares["goal"]) > 0, f"{name}: the goal marker is out of sight"


def test_shadow_hand_scenery_changes_no_physics(monkeypatch):
    """The camera, sky and floor are visual only: same bodies' masses, same trajectory."""
    decorated = scene.build_scene()
    monkeypatch.setattr(scene, "_add_decor", lambda spec: None)
    plain = scene.build_scene()
    assert decorated.ngeom == plain.ngeom + 1 and decorated.nbody == plain.nbody + 1
    floor = mujoco.mj_name2id(decorated, mujoco.mjtObj.mjOBJ_GEOM, "backdrop")
    assert floor == decorated.ngeom - 1  # added last: every other geom keeps its id
    assert decorated.geom_contype[floor] == 0 and decorated.geom_conaffinity[floor] == 0
    assert decorated.body_mass[-1] == 0
    np.testing.assert_array_equal(decorated.body_mass[:-1], plain.body_mass)
    assert decorated.stat.meaninertia == plain.stat.meaninertia
    datas = mujoco.MjData(decorated), mujoco.MjData(plain)
    low, high = plain.actuator_ctrlrange.T
    rng = np.random.default_rng(0)
    for step in range(300):
        if step % 20 == 0:
            ctrl = rng.uniform(low, high)
        for model, data in zip((decorated, plain), datas, strict=True):
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data)
    np.testing.assert_array_equal(datas[0].qpos, datas[1].qpos)
    np.testing.assert_array_equal(datas[0].qvel, datas[1].qvel)
    # A cube dropped just above the floor, away from the hand, falls through it: the floor never collides.
    cube = decorated.jnt_qposadr[mujoco.mj_name2id(decorated, mujoco.mjtObj.mjOBJ_JOINT, "cube")]
    data = datas[0]
    data.qpos[cube:cube + 3] = [1.5, 0.5, scene.FLOOR_Z + 0.05]
    data.qvel[:] = 0
    for _ in range(200):
        mujoco.mj_step(decorated, data)
    assert data.qpos[cube + 2] < scene.FLOOR_Z - 0.1
    assert scene.FLOOR_Z < scene.CUBE_HOLD_POS[2] - ReorientTask.fall_drop  # lower than where a drop ends
