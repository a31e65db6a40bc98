"""The teacher-cache benchmark's committed-teacher mode refuses an unfinished teacher in one line."""

from pathlib import Path

import pytest

from tests.script_module import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "teacher_cache" / "bench_teacher_cache.py"


def test_a_teacher_with_an_unfinished_fold_is_refused_naming_the_folds(tmp_path):
    assets = tmp_path / "iterations_2000"
    for fold in (0, 1, 2):
        (assets / f"fold_{fold}").mkdir(parents=True)
        (assets / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"weights")
    (assets / "fold_3").mkdir()
    (assets / "fold_3" / "checkpoint_latest.pth").write_bytes(b"half-trained")
    with script_module(SCRIPT, "bench_teacher_cache") as bench, pytest.raises(SystemExit) as refused:
        bench.restored_teacher(assets, tmp_path / "work")
    assert str(refused.value) == (f"{assets}: folds [3, 4] have no checkpoint_final.pth yet (train them with "
                                  "benchmarks/realdata/protocol.py first)")  # fmt: skip
    assert not (tmp_path / "work").exists()  # nothing copied before the refusal
