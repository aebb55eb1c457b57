"""The mujoco-warp backend against the C engine, on warp's CPU device (no GPU needed).

The D'Claw turn model runs on both backends from the same state with the same controls and
must give the same trajectories within float32 accuracy; per-env model fields, model_changed,
partial resets, graph replay and the VecEnv are checked the same way.

Kernel compilation dominates the time: the first use of mujoco_warp compiles ~50 kernel modules
into warp's cache (``~/.cache/warp``, or ``$WARP_CACHE_PATH``): about 50 s of CPU time at the -O0
this module selects (70 s at warp's default -O2), 1.5 min wall on a busy 2-core machine; with a
warm cache the tests themselves take ~6 s. The optimization level changes how fast the kernels are
built and run, not what they compute.
"""

import mujoco
import numpy as np
import pytest
import torch

wp = pytest.importorskip("warp")
mujoco_warp = pytest.importorskip("mujoco_warp")

from robots import make_task  # noqa: E402
from robots.dclaw.spec import TURN_XML  # noqa: E402
from toolkit.config import EnvConfig  # noqa: E402
from toolkit.envs.vec_env import VecEnv  # noqa: E402
from toolkit.sim import make_sim  # noqa: E402
from toolkit.sim.mujoco_batch import MujocoBatchSim  # noqa: E402
from toolkit.sim.mujoco_warp import MujocoWarpSim  # noqa: E402

SUBSTEPS = 20  # physics steps per control step of the D'Claw (0.1 s at 5 ms)

# Tolerances of warp (float32) against the C engine (float64) over 3 control steps (60 physics
# steps). float32 rounds a state of magnitude ~1 at ~1e-7 per operation; over 60 implicit steps
# with position servos (kp 5) and soft contacts this grows to ~1e-6 rad in qpos and ~1e-5 rad/s
# in qvel. Measured maxima: these tests' scenarios 7.2e-7 rad, 8.8e-6 rad/s, 6e-8 m; 24 random
# D'Claw states with and without contact 2.3e-6 rad, 5.4e-5 rad/s. The bounds leave ~10x headroom
# over the worst; a wrong gravity, damping, gain, contact or stale kinematics shows as 1e-4 to 1e-2.
QPOS_ATOL = 2e-5  # rad
QVEL_ATOL = 5e-4  # rad/s
SITE_ATOL = 5e-6  # m: fingertips are <= 0.2 m from the joints, 0.2 x QPOS_ATOL = 4e-6


@pytest.fixture(scope="module", autouse=True)
def fast_kernel_compilation():
    """Compile warp kernels at -O0 (about half the cold-cache time of the default -O2, for a
    run time that is irrelevant for 2-4 worlds) and keep warp's per-module log lines quiet."""
    saved = wp.config.optimization_level, wp.config.log_level
    wp.config.optimization_level = 0
    wp.config.log_level = wp.LOG_WARNING
    yield
    wp.config.optimization_level, wp.config.log_level = saved


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_path(str(TURN_XML))


@pytest.fixture(scope="module")
def converged_model():
    """The C reference for trajectory comparisons: the D'Claw model with ls_iterations=50
    (which the MJCF now sets itself; kept explicit so the comparison does not depend on it).

    With ls_iterations=10 the C engine's Newton line search stops early when a joint's
    dry friction (frictionloss) switches between sliding and sticking, and its trajectory then
    departs from the converged solution by up to ~9e-4 rad within 3 control steps (measured);
    mujoco-warp's line search converges there. With 50 line-search iterations both engines agree
    to float32 accuracy, so the comparison tests the backend rather than the truncation of one
    engine's line search. (Other solver settings, e.g. iterations or tolerance, change nothing.)
    """
    reference = mujoco.MjModel.from_xml_path(str(TURN_XML))
    reference.opt.ls_iterations = 50
    return reference


def _pose(finger, n, spread):
    """(n, 10) qpos/ctrl rows: each finger at (base, middle, tip) = ``finger`` plus a per-env
    offset ``spread * env`` on the base joints; column 9 (valve) zero."""
    rows = torch.zeros(n, 10, dtype=torch.float64)
    rows[:, :9] = torch.tensor(finger * 3, dtype=torch.float64)
    rows[:, [0, 3, 6]] += spread * torch.arange(n, dtype=torch.float64)[:, None]
    return rows


def _set_state(sims, qpos, qvel, ctrl):
    """Write the same float64 state rows into every sim (cast to its dtype) and run forward."""
    for sim in sims:
        ids = torch.arange(sim.num_envs)
        sim.reset(ids)
        sim.qpos[:] = qpos.to(sim.qpos.dtype)
        sim.qvel[:] = qvel.to(sim.qvel.dtype)
        sim.ctrl[:] = ctrl[:, :9].to(sim.ctrl.dtype)
        sim.forward(ids)


def _max_errors(warp_sim, c_sim):
    """Max abs differences (qpos, qvel, fingertip site_xpos) of warp vs C, over all envs."""
    return (
        (warp_sim.qpos.double() - c_sim.qpos).abs().max().item(),
        (warp_sim.qvel.double() - c_sim.qvel).abs().max().item(),
        (warp_sim.data_field("site_xpos").double() - c_sim.data_field("site_xpos")).abs().max().item(),
    )


def _contacts(c_sim):
    return [c_sim.get_data(env).ncon for env in range(c_sim.num_envs)]


def _assert_close(warp_sim, c_sim, what):
    dq, dv, ds = _max_errors(warp_sim, c_sim)
    assert dq < QPOS_ATOL and dv < QVEL_ATOL and ds < SITE_ATOL, (
        f"{what}: warp vs C max |dqpos| {dq:.2e} rad, |dqvel| {dv:.2e} rad/s, |dsite| {ds:.2e} m")


@pytest.fixture(scope="module")
def sims(model, converged_model):
    """A 4-world warp sim and the C reference, created once (creation captures the graphs)."""
    return MujocoWarpSim(model, 4), MujocoBatchSim(converged_model, 4, nthread=1)


def test_state_is_float32_tensors_aliasing_warp_memory(sims, model):
    warp_sim, c_sim = sims
    for name in ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat", "xfrc_applied"):
        tensor = getattr(warp_sim, name)
        assert tensor.dtype == torch.float32 and tensor.device == torch.device("cpu")
        assert tensor.shape == getattr(c_sim, name).shape, name
    assert warp_sim.data_field("site_xmat").shape == (4, model.nsite, 9)  # MuJoCo's layout, not (.., 3, 3)
    pointers = [warp_sim.qpos.data_ptr(), warp_sim.data_field("site_xpos").data_ptr()]
    warp_sim.qpos[2, 9] = 1.25
    assert warp_sim.warp_data.qpos.numpy()[2, 9] == np.float32(1.25)
    warp_sim.forward(torch.tensor([2]))
    warp_sim.step(2)
    assert warp_sim.warp_data.qvel.numpy()[2, 0] == warp_sim.qvel[2, 0]
    assert [warp_sim.qpos.data_ptr(), warp_sim.data_field("site_xpos").data_ptr()] == pointers


def test_reset_state_matches_the_c_engine(sims):
    warp_sim, c_sim = sims
    everyone = torch.arange(4)
    for sim in sims:
        sim.qpos[:] = 0.3
        sim.ctrl[:] = 0.2
        sim.step(3)
        sim.reset(everyone)
        sim.forward(everyone)
    for name in ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat", "xfrc_applied"):
        torch.testing.assert_close(getattr(warp_sim, name).double(), getattr(c_sim, name), rtol=0, atol=1e-7)
    for name in ("site_xpos", "xpos", "xquat", "geom_xpos"):
        # float32 forward kinematics of the default pose: ~1e-7 m rounding per frame
        torch.testing.assert_close(warp_sim.data_field(name).double(), c_sim.data_field(name), rtol=0, atol=1e-6)


def test_trajectories_match_the_c_engine_without_and_with_contact(sims):
    """3 control steps of free finger motion (no contact anywhere), then 3 control steps with the
    fingertips pressed into the valve (contacts in every env, the valve turns). Both phases are
    held to the same tolerances (QPOS_ATOL, QVEL_ATOL, SITE_ATOL in this module): with converged
    solvers, contact does not make the engines diverge beyond float32 rounding."""
    warp_sim, c_sim = sims
    n = warp_sim.num_envs
    # Free motion: fingers curled up ([0, -1, 1]) swing towards another pose in the air.
    qpos = _pose([0.0, -1.0, 1.0], n, 0.05)
    qpos[:, 9] = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    qvel = torch.zeros(n, 10, dtype=torch.float64)
    qvel[:, 9] = 0.5  # a spinning valve, slowed by its damping and frictionloss
    _set_state(sims, qpos, qvel, _pose([0.2, -0.5, 1.2], n, -0.1))
    for step in range(3):
        warp_sim.step(SUBSTEPS)
        c_sim.step(SUBSTEPS)
        assert _contacts(c_sim) == [0] * n, "the free-motion phase must stay out of contact"
        _assert_close(warp_sim, c_sim, f"free motion, control step {step}")

    # Contact: fingers start just above the valve and their targets lie inside it.
    qpos = _pose([0.0, -0.5, 0.5], n, 0.02)
    qpos[:, 9] = torch.tensor([-2.62, 0.0, 1.57, 2.09], dtype=torch.float64)  # spokes between the fingers
    _set_state(sims, qpos, torch.zeros(n, 10, dtype=torch.float64), _pose([0.3, 0.25, 0.25], n, 0.03))
    for step in range(3):
        warp_sim.step(SUBSTEPS)
        c_sim.step(SUBSTEPS)
        _assert_close(warp_sim, c_sim, f"contact, control step {step}")
    assert all(count >= 3 for count in _contacts(c_sim)), _contacts(c_sim)
    assert ((c_sim.qpos[:, 9] - qpos[:, 9]).abs() > 0.05).all(), "the fingers should have turned the valve"
    assert not warp_sim.diverged().any() and not warp_sim.overflow().any()


def test_per_env_model_fields_change_only_their_env(model, converged_model):
    """Env 0 nominal; env 1 another gravity; env 2 a 20x valve damping; env 3 a 4x heavier valve
    (mass and inertia, then model_changed). The same writes on the C engine give the same
    trajectories, and each change moves its own env far (> 100 x QPOS_ATOL) from env 0's."""
    warp_sim = MujocoWarpSim(model, 4)
    c_sim = MujocoBatchSim(converged_model, 4, nthread=1)
    valve_dof = 9
    valve_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "valve")
    for sim in (warp_sim, c_sim):
        gravity = sim.model_field("opt.gravity")
        assert gravity.shape == (4, 3)
        gravity[1] = torch.tensor([2.0, 0.0, -4.0], dtype=gravity.dtype)
        sim.model_field("dof_damping")[2, valve_dof] *= 20
        sim.model_field("body_mass")[3, valve_body] *= 4
        sim.model_field("body_inertia")[3, valve_body] *= 4
        sim.model_changed(torch.tensor([3]))
    # set_const ran per world: subtree masses as in the C engine (the world body sums everything).
    torch.testing.assert_close(warp_sim.model_field("body_subtreemass").double(),
                               torch.from_numpy(np.stack([c_sim.get_model(e).body_subtreemass for e in range(4)])),
                               rtol=1e-6, atol=0)
    qpos = _pose([0.0, -1.0, 1.0], 4, 0.0)
    qvel = torch.zeros(4, 10, dtype=torch.float64)
    qvel[:, valve_dof] = 3.0
    _set_state((warp_sim, c_sim), qpos, qvel, qpos)
    for step in range(2):
        warp_sim.step(SUBSTEPS)
        c_sim.step(SUBSTEPS)
        _assert_close(warp_sim, c_sim, f"per-env model fields, control step {step}")
    # The valve stops within a control step (damping and frictionloss): compare how far it turned.
    moved = (warp_sim.qpos - warp_sim.qpos[0]).abs().max(dim=1).values
    assert moved[0] == 0 and (moved[1:] > 100 * QPOS_ATOL).all(), f"each change should move its env: {moved}"


def test_reset_of_a_subset_leaves_the_other_envs_alone(sims, model):
    warp_sim, c_sim = sims
    n = warp_sim.num_envs
    qpos = _pose([0.1, -0.8, 0.9], n, 0.05)
    qvel = torch.full((n, 10), 0.3, dtype=torch.float64)
    _set_state(sims, qpos, qvel, _pose([0.0, -0.6, 1.0], n, 0.0))
    valve = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "valve")
    for sim in sims:
        sim.mocap_quat[:] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=sim.mocap_quat.dtype)
        sim.xfrc_applied[:, valve, 5] = 0.02  # a torque (N m) about the valve's axis
        sim.step(SUBSTEPS)
    _assert_close(warp_sim, c_sim, "with an applied torque")
    kept = {name: getattr(warp_sim, name).clone() for name in ("qpos", "qvel", "ctrl", "mocap_quat", "xfrc_applied")}
    ids = torch.tensor([1, 3])
    for sim in sims:
        sim.reset(ids)
        sim.forward(ids)
    goal = model.body_mocapid.tolist().index(0)
    defaults = {"qpos": model.qpos0, "qvel": np.zeros(model.nv), "ctrl": np.zeros(model.nu),
                "mocap_quat": model.body_quat[goal][None], "xfrc_applied": np.zeros((model.nbody, 6))}
    for name, default in defaults.items():
        tensor = getattr(warp_sim, name)
        for env in (1, 3):
            np.testing.assert_allclose(tensor[env].numpy(), default, atol=1e-7, err_msg=f"{name} of reset env {env}")
        torch.testing.assert_close(tensor[[0, 2]], kept[name][[0, 2]], rtol=0, atol=0, msg=f"{name} of kept envs")
    torch.testing.assert_close(warp_sim.data_field("site_xpos")[[1, 3]].double(), c_sim.data_field("site_xpos")[[1, 3]],
                               rtol=0, atol=1e-6)
    # Reset and kept envs alike continue like the C engine's.
    for sim in sims:
        sim.step(SUBSTEPS)
    _assert_close(warp_sim, c_sim, "after a partial reset")


def test_graph_replay_equals_direct_mujoco_warp_calls(model):
    """The default sim replays captured graphs; graph=False calls mujoco_warp directly: the CPU
    kernels are deterministic, so the states must be bit-identical."""
    replayed, direct = MujocoWarpSim(model, 2), MujocoWarpSim(model, 2, graph=False)
    for sim in (replayed, direct):
        sim.qpos[:, :9] = torch.tensor([0.1, -0.5, 0.5] * 3)
        sim.ctrl[:] = torch.tensor([0.3, 0.25, 0.25] * 3)
        sim.forward(torch.arange(2))
        sim.step(4)
        sim.reset(torch.tensor([1]))
        sim.step(2)
    for name in ("qpos", "qvel"):
        torch.testing.assert_close(getattr(replayed, name), getattr(direct, name), rtol=0, atol=0)


def test_make_sim_and_clear_errors(model):
    assert isinstance(make_sim("mujoco_warp", model, 2), MujocoWarpSim)
    sim = MujocoWarpSim(model, 2)
    with pytest.raises(ValueError, match="per-world"):
        sim.model_field("geom_type")  # topology is shared by all worlds in mujoco_warp
    with pytest.raises(ValueError, match="per-world"):
        sim.data_field("contact")  # contacts are pooled across worlds
    with pytest.raises(ValueError, match="no field 'gravity'"):
        sim.model_field("gravity")  # an option: "opt.gravity"
    with pytest.raises(ValueError, match="num_envs"):
        MujocoWarpSim(model, 0)
    pgs = mujoco.MjModel.from_xml_string('<mujoco model="pgs_box"><option solver="PGS"/><worldbody>'
                                         '<body><freejoint/><geom size=".1"/></body></worldbody></mujoco>')
    with pytest.raises(ValueError, match=r"'pgs_box'.*PGS"):
        MujocoWarpSim(pgs, 2)
    if not wp.is_cuda_available():
        with pytest.raises(ValueError, match="CUDA"):
            MujocoWarpSim(model, 2, device="cuda")


def test_diverged_reports_per_world_constraint_overflow(sims):
    """A world whose constraint rows overflowed njmax (mujoco_warp then drops rows, so its physics
    is wrong) is reported by the next step's diverged(), then the flag is cleared (as the C backend
    clears its warning counters) so the following step reports only new overflows."""
    warp_sim, _ = sims
    warp_sim.reset(torch.arange(4))
    warp_sim.forward(torch.arange(4))
    overflow = warp_sim.overflow()
    overflow[2] = int(mujoco_warp.OverflowType.NEFC)
    warp_sim.step(1)
    assert warp_sim.diverged().tolist() == [False, False, True, False]
    warp_sim.step(1)
    assert not warp_sim.diverged().any()


@pytest.mark.parametrize("randomize", [False, True])
def test_vec_env_on_warp_matches_the_c_engine(randomize):
    """VecEnv(dclaw-turn, sim="mujoco_warp") steps, and its observations and rewards stay close to
    the C backend's with the same seed and actions, with and without domain randomization (per-env
    damping, gains, friction, masses with model_changed, object scale, gravity; the same draws on
    both backends). This is the model as the task builds it (ls_iterations=50, see
    ``converged_model``); obs hold angles, targets, sin/cos and actions, compared at atol 1e-4."""
    envs = {sim: VecEnv(make_task("dclaw-turn"), EnvConfig(num_envs=2, sim=sim, seed=3, randomize=randomize))
            for sim in ("mujoco_batch", "mujoco_warp")}
    obs = {sim: env.reset(seed=3)[0] for sim, env in envs.items()}
    torch.testing.assert_close(obs["mujoco_warp"], obs["mujoco_batch"], rtol=0, atol=1e-5)
    actions = torch.rand(3, 2, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    for action in actions:
        results = {sim: env.step(action) for sim, env in envs.items()}
        torch.testing.assert_close(results["mujoco_warp"][0], results["mujoco_batch"][0], rtol=0, atol=1e-4)
        # reward: -5 |goal error| - pose deviation - joint speed (+ bonuses far from these states)
        torch.testing.assert_close(results["mujoco_warp"][1], results["mujoco_batch"][1], rtol=0, atol=2e-2)
