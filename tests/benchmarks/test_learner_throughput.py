"""benchmarks.learner_throughput on the CPU at tiny sizes: the JSON's keys, positive rates and ratios, a
breakdown of every piece, and the flag errors.

No relation between timed figures is asserted (a ratio's size, the pieces against the whole): on a machine
loaded by other jobs each timed interval sees a different load, so those belong to the benchmark's output.
"""

import json

import pytest
import torch

from benchmarks.learner_throughput import PIECES, Args, Bench, check_args, main, run

TINY = dict(batch_size=32, hidden=(16, 16), updates=4, repeats=2, warmup=1, replay_size=2_000)
KEYS = ("v_updates_per_s", "v_bare_updates_per_s", "v_ratio", "p_updates_per_s", "p_bare_updates_per_s", "p_ratio",
        "v_breakdown_ms", "p_breakdown_ms")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # run() sets --torch-threads for the process


def _check(result: dict, args: Args) -> None:
    for key in KEYS:
        assert key in result, key
    for learner in ("v", "p"):
        role, bare = result[f"{learner}_updates_per_s"], result[f"{learner}_bare_updates_per_s"]
        assert role > 0 and bare > 0
        assert 0 < result[f"{learner}_ratio"] < float("inf")
        breakdown = result[f"{learner}_breakdown_ms"]
        assert set(breakdown) == {*PIECES, "work"}
        assert all(breakdown[name] > 0 for name in PIECES)
        assert breakdown["work"] == pytest.approx(1e3 / role, rel=1e-3)
    assert result["device"] == "cpu" and result["batch"] == args.batch_size
    assert result["hidden"] == list(args.hidden) and result["torch_threads"] == 1
    assert (result["updates"], result["repeats"]) == (args.updates, args.repeats)
    assert result["compile"] is False and result["bf16"] is False


def test_cpu_run_reports_role_and_bare_rates_with_a_breakdown():
    args = Args(**TINY)
    result = run(args)
    _check(result, args)
    assert (result["task"], result["obs"], result["action"], result["asymmetric"]) == ("dclaw-turn", 30, 9, False)
    assert result["critic_updates_per_actor_step"] == 2  # the CPU preset's beta a:v
    json.dumps(result)  # plain JSON types


def test_main_prints_one_json_line_for_an_asymmetric_task(capsys):
    argv = ["--task", "shadow_hand-reorient", "--batch-size", "16", "--hidden", "8", "--updates", "3", "--repeats",
            "1", "--warmup", "1", "--replay-size", "500", "--json"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["asymmetric"] is True and result["critic_obs"] > result["obs"]
    _check(result, Args(batch_size=16, hidden=(8,), updates=3, repeats=1))


def test_the_role_path_reads_what_the_other_roles_publish():
    """The emulated publishes make sync() copy: a board moved by another role is read on the next work()."""
    bench = Bench(Args(**TINY), torch.device("cpu"))
    v = bench.v
    actor_version = int(bench.shared.actor_board.version[0])
    for _ in range(2 * bench.cfg.critic_updates_per_policy_update):
        bench.others_publish(v)
        v.work()
    assert int(bench.shared.actor_board.version[0]) > actor_version
    assert v._policy_version == int(bench.shared.actor_board.version[0])  # read the newest actor
    assert int(bench.shared.counters[v.counter]) == v.updates == 2 * bench.cfg.critic_updates_per_policy_update
    assert v.shared.replay.obs.is_shared()  # the ring as the trainer builds it for role processes


@pytest.mark.parametrize(("changes", "message"), [
    (dict(batch_size=0), "--batch-size must be >= 1"),
    (dict(warmup=-1), "--warmup must be >= 0"),
    (dict(hidden=()), "--hidden needs one or more widths"),
    (dict(task="no-such-task"), "is not a registered task"),
    (dict(device="tpu"), "is not a torch device"),
    (dict(device="meta"), "this benchmark runs on cpu or cuda"),
    (dict(critic_updates_per_actor_step=0), "--critic-updates-per-actor-step must be >= 1"),
])
def test_bad_flags_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        check_args(Args(**changes))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where torch sees no GPU")
def test_cuda_without_a_gpu_is_one_line_naming_the_cpu(capsys):
    assert main(["--device", "cuda", "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cpu" in err
