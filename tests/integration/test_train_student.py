"""`distill train-student` from a real teacher cache: sizing, chains, graph flow, resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from distill.students import StudentConfig, StudentSizingError, build_student
from distill.train import TrainConfig, TrainConfigError, train_student

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]
FAST = dict(steps=4, batch_size=1, patch_size=(32, 32, 32), checkpoint_every=2, progress=False)


def _teacher_params(cache):
    from distill.cache import TeacherCache

    return TeacherCache.open(cache).spec.teacher["parameters_per_member"]


def test_params_budget_card_and_weights_only_checkpoint(phantom_cache, tmp_path):
    result = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=20000, **FAST))
    assert abs(result.parameters - 20000) <= 0.05 * 20000
    card = json.loads(result.card.read_text())
    assert card["format"] == "distill-student-card" and card["parameters"] == result.parameters
    assert card["output_kind"] == "sigmoid" and card["channels"] == ["WT", "TC", "ET"]
    assert card["macs_128"] > 0 and card["data"]["teacher_parameters_per_member"] == _teacher_params(phantom_cache)
    assert set(card["validation"]) >= {"dice_gt/WT", "hd95_gt/ET", "dice_teacher/TC"}
    model = build_student(StudentConfig.from_dict(card["student"]))
    model.load_state_dict(torch.load(result.weights, weights_only=True))
    assert model(torch.zeros(1, 4, 20, 19, 17)).shape == (1, 3, 20, 19, 17)
    link = next((tmp_path / "run" / "links").iterdir())
    assert (link / "log.csv").is_file() and any((link / "tensorboard").iterdir())


def test_ratio_sizes_against_one_teacher_member(phantom_cache, tmp_path):
    teacher = _teacher_params(phantom_cache)
    result = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", ratio=0.25, **FAST))
    assert abs(result.parameters - 0.25 * teacher) <= 0.05 * 0.25 * teacher


@pytest.mark.parametrize("kw", [dict(params=500), dict(ratio=2.0)])
def test_budgets_outside_the_range_are_refused(phantom_cache, tmp_path, kw):
    with pytest.raises((StudentSizingError, TrainConfigError)):
        train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", **kw, **FAST))


def test_chain_with_graph_flow_trains_every_link(phantom_cache, tmp_path):
    result = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=6000, assistants="1",
                                       graph_flow_weight=1.0, graph_flow_ramp=0, paraphraser_steps=5, **FAST))  # fmt: skip
    assert len(result.chain) == 2 and result.chain[0] > result.chain[1]
    log = (tmp_path / "run" / "links").glob("link1_*/log.csv")
    rows = list(__import__("csv").DictReader(open(next(log))))
    assert rows and all(float(r["graph_flow/raw"]) > 0 for r in rows)


def test_graph_flow_chain_shares_the_plain_chains_first_link(phantom_cache, tmp_path):
    """Link 0 of a chain is the same with or without graph flow: training it once gives identical weights."""
    from distill.train.chain import share_first_link

    chain = dict(params=6000, assistants="1", paraphraser_steps=5, **FAST)
    plain = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "plain", **chain))
    assert share_first_link(tmp_path / "plain", tmp_path / "shared")
    assert not share_first_link(tmp_path / "plain", tmp_path / "shared")  # target already has links
    assert not share_first_link(tmp_path / "nothing", tmp_path / "other")
    shared = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "shared", graph_flow_weight=1.0, **chain))
    fresh = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "fresh", graph_flow_weight=1.0, **chain))
    link0 = {run: next((tmp_path / run / "links").glob("link0_*/weights.pt")) for run in ("plain", "shared", "fresh")}
    weights = {run: torch.load(path, weights_only=True) for run, path in link0.items()}
    assert all(torch.equal(weights["fresh"][k], weights["plain"][k]) for k in weights["plain"])
    assert all(torch.equal(weights["shared"][k], weights["plain"][k]) for k in weights["plain"])
    final = [torch.load(r.weights, weights_only=True) for r in (shared, fresh)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert plain.chain == shared.chain


def test_dense_guidance_runs(phantom_cache, tmp_path):
    result = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=6000, assistants="1",
                                       dense_guidance=True, **FAST))  # fmt: skip
    assert len(result.links) == 2


def test_same_seed_same_weights(phantom_cache, tmp_path):
    first = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "a", params=6000, **FAST))
    second = train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "b", params=6000, **FAST))
    a, b = torch.load(first.weights, weights_only=True), torch.load(second.weights, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_changed_options_is_refused(phantom_cache, tmp_path):
    train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=6000, **FAST))
    with pytest.raises(TrainConfigError, match="changed: kd_weight"):
        train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=6000, kd_weight=0.2, **FAST))


def test_killed_run_resumes_at_the_step_it_reached(phantom_cache, tmp_path):
    out = tmp_path / "run"
    steps = 400  # far more than can run between the first checkpoint and the kill, on any machine
    command = [sys.executable, "-m", "distill", "train-student", "--cache", str(phantom_cache), "--out", str(out),
               "--params", "6000", "--steps", str(steps), "--batch-size", "1", "--patch-size", "32", "--checkpoint-every", "5"]  # fmt: skip
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("links/*/checkpoint.pt")):
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    checkpoint = torch.load(next(out.glob("links/*/checkpoint.pt")), weights_only=False)
    reached = checkpoint["step"]
    assert 5 <= reached < steps and not (out / "student.pt").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [int(r["step"]) for r in __import__("csv").DictReader(open(next(out.glob("links/*/log.csv"))))]
    assert logged[-1] == steps and (out / "student.pt").is_file()


def test_torchrun_two_cpu_processes(phantom_cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "distill",
               "train-student", "--cache", str(phantom_cache), "--out", str(tmp_path / "run"), "--params", "6000",
               "--steps", "3", "--batch-size", "1", "--patch-size", "32"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "student.json").read_text())
    assert card["training"]["world_size"] == 2
    weights = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert all(np.isfinite(v.numpy()).all() for v in weights.values() if v.is_floating_point())
