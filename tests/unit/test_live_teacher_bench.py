"""benchmarks/realdata/live_teacher.py: every timed run is a valid training configuration, and its page names it."""

from pathlib import Path

import pytest
from script_module import script_module

from distill.train import TrainConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata" / "live_teacher.py"


@pytest.fixture(scope="module")
def live_teacher():
    with script_module(SCRIPT, "live_teacher") as module:
        yield module


def test_every_timed_run_is_a_config_train_student_accepts(live_teacher):
    kinds = live_teacher.cost_kinds(Path("model"), fold=3, context=16)
    assert list(kinds) == ["direct_kd", "live_graph_flow", "live_graph_flow_context16", "strong_augment",
                           "live_kd_strong_context16"]
    configs = {k: TrainConfig(cache=Path("c"), out=Path("o"), params=30000, **v) for k, v in kinds.items()}
    assert configs["live_kd_strong_context16"].kd_source == "live" and configs["strong_augment"].augment == "strong"
    assert configs["live_kd_strong_context16"].graph_flow_weight == 0 and configs["direct_kd"].teacher_model_dir is None
    assert len({c.training_hash() for c in configs.values()}) == len(configs)  # five different runs


def test_the_page_lists_every_run_with_its_ratio(live_teacher):
    medians = {"30k_direct_kd": 0.5, "30k_live_graph_flow": 2.0, "30k_strong_augment": 0.6,
               "30k_live_kd_strong_context16": 1.5}
    ratios = {"live_graph_flow": {"30k": 4.0}, "strong_augment": {"30k": 1.2}, "live_kd_strong_context16": {"30k": 3.0}}
    result = {"command": "c", "fold": 0, "machine": {"threads": 2},
              "agreement": {"patches": 4, "patch": 48, "dice_live_vs_cache": {"WT": 0.7},
                            "mean_abs_probability_difference": 0.1},
              "cost": {"median_seconds_per_step": medians, "ratio_live_over_direct": {"30k": 4.0},
                       "ratio_over_direct": ratios, "rounds": 2, "steps_per_run": 40}}  # fmt: skip
    page = "\n".join(live_teacher.page(result))
    assert "| strong_augment | 0.6 (1.2x) |" in page and "| live_kd_strong_context16 | 1.5 (3.0x) |" in page
