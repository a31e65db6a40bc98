"""`distill train-student` from a teacher cache: sizing, chains, graph flow, resume, DDP.

The tests train from ``stub_cache`` (tests/conftest.py): synthetic cases whose soft maps come
from a stub teacher, written by the real ``teacher-cache`` runner and cache writer without
nnU-Net, so each takes seconds. The cache of a real nnU-Net teacher (``phantom_cache``) is
trained from by the ``nnunet``-marked case of the first test, so that path stays covered.
"""

import csv
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

FAST = dict(steps=4, batch_size=1, patch_size=(32, 32, 32), checkpoint_every=2, progress=False)
REAL_CACHE = pytest.param("phantom_cache", marks=[pytest.mark.nnunet, pytest.mark.slow])


def _teacher_params(cache):
    from distill.cache import TeacherCache

    return TeacherCache.open(cache).spec.teacher["parameters_per_member"]


def _log(run, link="*"):
    with open(next(run.glob(f"links/{link}/log.csv"))) as fh:
        return list(csv.DictReader(fh))


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cache_fixture", ["stub_cache", REAL_CACHE])
def test_params_budget_card_and_weights_only_checkpoint(cache_fixture, request, tmp_path):
    cache = request.getfixturevalue(cache_fixture)
    result = train_student(TrainConfig(cache=cache, out=tmp_path / "run", params=20000, **FAST))
    assert abs(result.parameters - 20000) <= 0.05 * 20000
    card = json.loads(result.card.read_text())
    assert card["format"] == "distill-student-card" and card["parameters"] == result.parameters
    assert card["output_kind"] == "sigmoid" and card["channels"] == ["WT", "TC", "ET"]
    assert card["macs_128"] > 0 and card["data"]["teacher_parameters_per_member"] == _teacher_params(cache)
    assert set(card["validation"]) >= {"dice_gt/WT", "hd95_gt/ET", "dice_teacher/TC"}
    model = build_student(StudentConfig.from_dict(card["student"]))
    model.load_state_dict(torch.load(result.weights, weights_only=True))
    assert model(torch.zeros(1, 4, 20, 19, 17)).shape == (1, 3, 20, 19, 17)
    link = next((tmp_path / "run" / "links").iterdir())
    assert (link / "log.csv").is_file() and any((link / "tensorboard").iterdir())


def test_ratio_sizes_against_one_teacher_member(stub_cache, tmp_path):
    teacher = _teacher_params(stub_cache)
    result = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", ratio=0.25, **FAST))
    assert abs(result.parameters - 0.25 * teacher) <= 0.05 * 0.25 * teacher


@pytest.mark.parametrize("kw", [dict(params=500), dict(ratio=2.0)])
def test_budgets_outside_the_range_are_refused(stub_cache, tmp_path, kw):
    with pytest.raises((StudentSizingError, TrainConfigError)):
        train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", **kw, **FAST))


def test_chain_with_graph_flow_trains_every_link(stub_cache, tmp_path):
    result = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", params=6000, assistants="1",
                                       graph_flow_weight=1.0, graph_flow_ramp=0, paraphraser_steps=5,
                                       **FAST))  # fmt: skip
    assert len(result.chain) == 2 and result.chain[0] > result.chain[1]
    rows = _log(tmp_path / "run", "link1_*")
    assert len(rows) == FAST["steps"] and all(float(r["graph_flow/raw"]) > 0 for r in rows)
    card = json.loads(result.card.read_text())
    assert [link["name"] for link in card["chain"]] == [link.name for link in result.links]
    assert [link["name"].split("_")[1] for link in card["chain"]] == ["assistant", "student"]
    assert [link["parameters"] for link in card["chain"]] == result.chain[:1] + [result.parameters]
    assert all(link["steps"] == FAST["steps"] and set(link["validation"]) >= {"dice_gt/WT"} for link in card["chain"])
    assert card["validation"] == card["chain"][-1]["validation"]
    for link in card["chain"]:
        assert (tmp_path / "run" / "links" / link["name"] / "weights.pt").is_file()


@pytest.mark.nnunet
@pytest.mark.slow
def test_graph_flow_and_region_affinity_from_the_live_nnunet_teacher(nnunet_teacher, phantom_cache, tmp_path):
    """Link 0 (direct KD) runs fold 0 of the cache's own nnU-Net teacher for its features, given
    16 voxels of context around each patch."""
    model_dir = str(nnunet_teacher.model_dir)
    train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "run", params=20000,
                              teacher_model_dir=model_dir, graph_flow_weight=1.0, graph_flow_ramp=0,
                              region_affinity_weight=1.0, paraphraser_steps=5, paraphraser_batches=2,
                              teacher_context=16, **FAST))  # fmt: skip
    rows = _log(tmp_path / "run")
    assert len(rows) == FAST["steps"] and all(float(r["graph_flow/raw"]) > 0 for r in rows)
    assert all(np.isfinite(float(r["region_affinity/raw"])) for r in rows) and float(rows[0]["kd/weight"]) > 0
    with pytest.raises(TrainConfigError, match="teacher_context: .*multiple of the network's total stride"):
        train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "odd", params=20000,
                                  teacher_model_dir=model_dir, graph_flow_weight=1.0, teacher_context=3, **FAST))
    # the fold must be one the cache recorded, with the same checkpoint
    with pytest.raises(TrainConfigError, match="not a member of the cache's teacher"):
        train_student(TrainConfig(cache=phantom_cache, out=tmp_path / "other", params=20000,
                                  teacher_model_dir=model_dir, teacher_fold="3", graph_flow_weight=1.0, **FAST))
    with pytest.raises(TrainConfigError, match="records no nnU-Net checkpoints"):
        from distill.cache import TeacherCache
        from distill.train.chain import live_nnunet_teacher

        cache = TeacherCache.open(phantom_cache)
        cache.spec.teacher["identity"] = {}
        live_nnunet_teacher(TrainConfig(cache=phantom_cache, out=tmp_path / "x", params=20000,
                                        teacher_model_dir=model_dir), cache, ["WT", "TC", "ET"], "cpu")


@pytest.mark.nnunet
@pytest.mark.slow
def test_kd_from_the_live_nnunet_teacher_on_the_students_patch(nnunet_teacher, phantom_cache, tmp_path):
    """kd_source=live: the same first batch and initial weights, so the supervised term of step 0
    is unchanged while the KD term differs: its target is the fold's sigmoid on the patch, not
    the cached 8-TTA map."""
    live = dict(cache=phantom_cache, params=20000, teacher_model_dir=str(nnunet_teacher.model_dir),
                teacher_context=16, **FAST)  # fmt: skip
    train_student(TrainConfig(out=tmp_path / "cache_kd", **live))
    train_student(TrainConfig(out=tmp_path / "live_kd", kd_source="live", **live))
    cached, taught = _log(tmp_path / "cache_kd")[0], _log(tmp_path / "live_kd")[0]
    assert cached["supervised/raw"] == taught["supervised/raw"]
    assert float(taught["kd/raw"]) > 0 and cached["kd/raw"] != taught["kd/raw"]
    card = json.loads((tmp_path / "live_kd" / "student.json").read_text())
    assert card["training"]["kd_source"] == "live"


def test_graph_flow_chain_shares_the_plain_chains_first_link(stub_cache, tmp_path):
    """Link 0 of a chain is the same with or without graph flow: training it once gives identical weights."""
    from distill.train.chain import share_first_link

    chain = dict(params=6000, assistants="1", paraphraser_steps=5, **FAST)
    plain = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "plain", **chain))
    assert share_first_link(tmp_path / "plain", tmp_path / "shared")
    assert not share_first_link(tmp_path / "plain", tmp_path / "shared")  # target already has links
    assert not share_first_link(tmp_path / "nothing", tmp_path / "other")
    shared = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "shared", graph_flow_weight=1.0, **chain))
    fresh = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "fresh", graph_flow_weight=1.0, **chain))
    link0 = {run: next((tmp_path / run / "links").glob("link0_*/weights.pt")) for run in ("plain", "shared", "fresh")}
    weights = {run: torch.load(path, weights_only=True) for run, path in link0.items()}
    assert all(torch.equal(weights["fresh"][k], weights["plain"][k]) for k in weights["plain"])
    assert all(torch.equal(weights["shared"][k], weights["plain"][k]) for k in weights["plain"])
    final = [torch.load(r.weights, weights_only=True) for r in (shared, fresh)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert plain.chain == shared.chain


def test_dense_guidance_runs(stub_cache, tmp_path):
    result = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", params=6000, assistants="1",
                                       dense_guidance=True, **FAST))  # fmt: skip
    assert len(result.links) == 2


def test_same_seed_same_weights(stub_cache, tmp_path):
    first = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "a", params=6000, **FAST))
    second = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "b", params=6000, **FAST))
    a, b = torch.load(first.weights, weights_only=True), torch.load(second.weights, weights_only=True)
    assert _same_weights(a, b)


def test_a_weight_average_is_what_ships(stub_cache, tmp_path):
    """The average changes nothing the run trains (same losses), only the weights it ships."""
    last = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "last", params=6000, **FAST))
    averaged = train_student(TrainConfig(cache=stub_cache, out=tmp_path / "ema", params=6000, ema_decay=0.5, **FAST))
    assert [r["total"] for r in _log(tmp_path / "last")] == [r["total"] for r in _log(tmp_path / "ema")]
    a, b = torch.load(last.weights, weights_only=True), torch.load(averaged.weights, weights_only=True)
    assert a.keys() == b.keys() and not _same_weights(a, b)
    assert json.loads(averaged.card.read_text())["training"]["ema_decay"] == 0.5


def test_resume_with_changed_options_is_refused(stub_cache, tmp_path):
    train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", params=6000, **FAST))
    with pytest.raises(TrainConfigError, match="changed: kd_weight"):
        train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", params=6000, kd_weight=0.2, **FAST))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(stub_cache, tmp_path, monkeypatch,
                                                                           ema_decay):
    """Killed after the checkpoint of step 2 of 4, then resumed: the same weights and losses, bit for bit
    (with a weight average too: it is checkpointed with the model)."""
    from distill.train.sampler import PatchSampler

    config = dict(cache=stub_cache, params=6000, assistants="1", ema_decay=ema_decay, **FAST)
    whole = train_student(TrainConfig(out=tmp_path / "whole", **config))
    real_sample, calls = PatchSampler.sample, []

    class Killed(Exception):
        pass

    def killed_in_step_3(self, batch_size):
        calls.append(batch_size)
        if len(calls) == 3:
            raise Killed
        return real_sample(self, batch_size)

    monkeypatch.setattr(PatchSampler, "sample", killed_in_step_3)
    with pytest.raises(Killed):
        train_student(TrainConfig(out=tmp_path / "resumed", **config))
    link0 = next((tmp_path / "resumed" / "links").glob("link0_*"))
    assert torch.load(link0 / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (link0 / "weights.pt").exists() and not (tmp_path / "resumed" / "student.pt").exists()
    monkeypatch.undo()
    resumed = train_student(TrainConfig(out=tmp_path / "resumed", **config))
    assert _same_weights(torch.load(whole.weights, weights_only=True), torch.load(resumed.weights, weights_only=True))
    for link in ("link0_*", "link1_*"):
        losses = [[(r["step"], r["total"]) for r in _log(run, link)]
                  for run in (tmp_path / "whole", tmp_path / "resumed")]
        assert losses[0] == losses[1] and len(losses[0]) == FAST["steps"]
    assert resumed.chain == whole.chain and resumed.metrics == whole.metrics


def test_the_loss_falls(stub_cache, tmp_path):
    """A student learns the stub teacher's cases: over 20 steps the loss drops by well over a tenth."""
    train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", params=6000, steps=20, batch_size=2, lr=1e-2,
                              patch_size=(24, 24, 24), checkpoint_every=20, progress=False))  # fmt: skip
    rows = _log(tmp_path / "run")
    totals, supervised = ([float(r[key]) for r in rows] for key in ("total", "supervised/raw"))
    assert len(totals) == 20 and np.mean(totals[-4:]) < 0.85 * np.mean(totals[:4]), totals
    assert np.mean(supervised[-4:]) < np.mean(supervised[:4]), supervised


@pytest.mark.slow  # a real process is SIGKILLed and started again
def test_killed_run_resumes_at_the_step_it_reached(stub_cache, tmp_path):
    out = tmp_path / "run"
    steps = 60  # far more than can run in the <= 50 ms between the first checkpoint and the kill, on any CPU
    command = [sys.executable, "-m", "distill", "train-student", "--cache", str(stub_cache), "--out", str(out),
               "--params", "6000", "--steps", str(steps), "--batch-size", "1", "--patch-size", "32",
               "--checkpoint-every", "5"]  # fmt: skip
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
    logged = [int(r["step"]) for r in _log(out)]
    assert logged[-1] == steps and (out / "student.pt").is_file()


@pytest.mark.slow  # two torchrun processes on the CPU
def test_torchrun_two_cpu_processes(stub_cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "distill",
               "train-student", "--cache", str(stub_cache), "--out", str(tmp_path / "run"), "--params", "6000",
               "--steps", "3", "--batch-size", "1", "--patch-size", "32"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "student.json").read_text())
    assert card["training"]["world_size"] == 2
    weights = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert all(np.isfinite(v.numpy()).all() for v in weights.values() if v.is_floating_point())
