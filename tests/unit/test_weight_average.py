"""The moving average of a student's weights (distill.train.ema), on one-number models."""

import pytest
import torch

from distill.train import TrainConfig, TrainConfigError
from distill.train.ema import WeightAverage, decay_at


def one_weight(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    model.register_buffer("count", torch.tensor(0))
    return model


def test_the_decay_warms_up_then_holds():
    assert decay_at(0.99, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert decay_at(0.99, 8) == pytest.approx(0.5)  # 9 / 18
    assert decay_at(0.99, 10_000) == 0.99


def test_the_average_follows_the_hand_computed_sequence():
    model = one_weight(0.0)
    average = WeightAverage(model, decay=0.1)  # below the warm-up's 0.1 at every update: d = 0.1 throughout
    for value in (10.0, 10.0, 20.0):
        with torch.no_grad():
            model.weight.fill_(value)
        model.count += 1
        average.update(model)
    # 0.1·0 + 0.9·10 = 9; 0.1·9 + 0.9·10 = 9.9; 0.1·9.9 + 0.9·20 = 18.99
    target = one_weight(-1.0)
    average.copy_to(target)
    assert target.weight.item() == pytest.approx(18.99)
    assert target.count.item() == 3  # an integer buffer is the model's own, not averaged


def test_a_saved_average_continues_exactly():
    model = one_weight(2.0)
    average = WeightAverage(model, decay=0.9)
    average.update(model)
    restored = WeightAverage(one_weight(0.0), decay=0.9)
    restored.load_state_dict(average.state_dict())
    for a in (average, restored):
        a.update(one_weight(4.0))
    assert restored.updates == 2
    assert torch.equal(restored.state["weight"], average.state["weight"])


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay, tmp_path):
    with pytest.raises(TrainConfigError, match=r"ema_decay must lie in \[0, 1\)"):
        TrainConfig(cache=tmp_path, out=tmp_path, params=30_000, ema_decay=decay)


def test_runs_without_an_average_keep_their_hash(tmp_path):
    def hashed(**options):
        return TrainConfig(cache=tmp_path, out=tmp_path, params=30_000, **options).training_hash()

    assert hashed() == hashed(ema_decay=0.0) != hashed(ema_decay=0.99)
