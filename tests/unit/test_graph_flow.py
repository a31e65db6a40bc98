"""Graph-flow distillation and the paraphraser: the invariances the module docstring claims."""

from __future__ import annotations

import pytest
import torch

from distill.losses import (
    GraphFlowLoss,
    Paraphraser,
    edge_loss,
    mean_reconstruction_loss,
    pool_to_nodes,
    pretrain_paraphraser,
    variation_graph,
    vertex_loss,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run far faster on one thread than on contended shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def identity_loss(width: int = 4, nodes: int = 2) -> GraphFlowLoss:
    """Graph flow with identity projections on both sides (no translator, no paraphraser)."""
    return GraphFlowLoss(
        student_channels=(width, width),
        teacher_channels=(width, width),
        embed_channels=width,
        nodes_per_axis=nodes,
        translate_student=False,
    )


def features(gen, width=4, shallow=(8, 8, 8), deep=(4, 4, 4), batch=2):
    return (
        torch.randn(batch, width, *shallow, generator=gen, dtype=torch.float64),
        torch.randn(batch, width, *deep, generator=gen, dtype=torch.float64),
    )


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return terms["vertex"] + terms["edge"]


def test_zero_when_student_equals_teacher(gen):
    loss = identity_loss()
    shallow, deep = features(gen)
    terms = loss(shallow, deep, shallow.clone(), deep.clone())
    assert terms["vertex"].item() == pytest.approx(0.0, abs=1e-12)
    assert terms["edge"].item() == pytest.approx(0.0, abs=1e-12)


def test_positive_when_features_differ(gen):
    loss = identity_loss()
    shallow, deep = features(gen)
    other_shallow, other_deep = features(gen)
    terms = loss(shallow, deep, other_shallow, other_deep)
    assert terms["vertex"].item() > 0 and terms["edge"].item() > 0
    assert terms["vertex"].item() <= 16 and terms["edge"].item() <= 4


def test_invariant_to_positive_scale_of_each_stage(gen):
    loss = identity_loss()
    s1, s2 = features(gen)
    t1, t2 = features(gen)
    reference = loss(s1, s2, t1, t2)
    scaled = loss(0.1 * s1, 7.0 * s2, 3.0 * t1, 1e-3 * t2)
    for name in ("vertex", "edge"):
        assert scaled[name].item() == pytest.approx(reference[name].item(), rel=1e-9)


def test_invariant_to_scale_of_raw_student_features_through_translator(gen):
    torch.manual_seed(0)
    loss = GraphFlowLoss(student_channels=(3, 5), teacher_channels=(4, 4), embed_channels=4, nodes_per_axis=2).double()
    s1 = torch.randn(2, 3, 8, 8, 8, generator=gen, dtype=torch.float64)
    s2 = torch.randn(2, 5, 4, 4, 4, generator=gen, dtype=torch.float64)
    t1, t2 = features(gen)
    reference = total(loss(s1, s2, t1, t2)).item()
    assert total(loss(5.0 * s1, 0.2 * s2, t1, t2)).item() == pytest.approx(reference, rel=1e-9)


def test_joint_spatial_flip_leaves_loss_unchanged_student_only_flip_does_not(gen):
    loss = identity_loss()
    s1, s2 = features(gen)
    t1, t2 = features(gen)
    reference = total(loss(s1, s2, t1, t2)).item()
    flipped = [x.flip(-1) for x in (s1, s2, t1, t2)]
    assert total(loss(*flipped)).item() == pytest.approx(reference, rel=1e-9)
    student_only = total(loss(s1.flip(-1), s2.flip(-1), t1, t2)).item()
    assert student_only != pytest.approx(reference, rel=1e-6)


def test_node_permutation_behaviour(gen):
    nodes = [torch.randn(2, 8, 4, generator=gen, dtype=torch.float64) for _ in range(4)]
    student, teacher = variation_graph(nodes[0], nodes[1]), variation_graph(nodes[2], nodes[3])
    perm = torch.randperm(8, generator=gen)
    p_student = variation_graph(nodes[0][:, perm], nodes[1][:, perm])
    p_teacher = variation_graph(nodes[2][:, perm], nodes[3][:, perm])
    # One permutation of all node sets: nothing changes.
    assert vertex_loss(p_student, p_teacher).item() == pytest.approx(vertex_loss(student, teacher).item(), rel=1e-12)
    assert edge_loss(p_student, p_teacher).item() == pytest.approx(edge_loss(student, teacher).item(), rel=1e-12)
    # Permuting the student's nodes alone breaks the node correspondence.
    assert vertex_loss(p_student, teacher).item() != pytest.approx(vertex_loss(student, teacher).item(), rel=1e-6)
    assert edge_loss(p_student, teacher).item() != pytest.approx(edge_loss(student, teacher).item(), rel=1e-6)


def test_edge_term_invariant_to_rotation_of_student_embedding_vertex_term_not(gen):
    shallow, deep = (torch.randn(2, 8, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    teacher = variation_graph(shallow, deep)
    rotated_student = variation_graph(shallow @ rotation, deep @ rotation)
    assert edge_loss(rotated_student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    assert vertex_loss(rotated_student, teacher).item() > 1e-3


def test_gradients_reach_student_and_translator_only(gen):
    teacher_shallow = torch.randn(2, 6, 8, 8, 8, generator=gen)
    teacher_deep = torch.randn(2, 10, 4, 4, 4, generator=gen)
    shallow_para = Paraphraser(6, 4, kernel_size=1)
    deep_para = Paraphraser(10, 4, kernel_size=1)
    loss = GraphFlowLoss(
        student_channels=(3, 5),
        teacher_channels=(6, 10),
        embed_channels=4,
        nodes_per_axis=2,
        teacher_paraphrasers=(shallow_para, deep_para),
    )
    student_shallow = torch.randn(2, 3, 16, 16, 16, generator=gen, requires_grad=True)
    student_deep = torch.randn(2, 5, 2, 2, 2, generator=gen, requires_grad=True)
    teacher_shallow.requires_grad_()
    terms = loss(student_shallow, student_deep, teacher_shallow, teacher_deep)
    total(terms).backward()
    assert student_shallow.grad is not None and student_deep.grad is not None
    assert all(p.grad is not None for p in loss.student_projections.parameters())
    assert teacher_shallow.grad is None
    assert all(not p.requires_grad and p.grad is None for p in shallow_para.parameters())
    trainable = [p for p in loss.parameters() if p.requires_grad]
    assert len(trainable) == 2  # the two bias-free translators
    loss.train()
    assert not shallow_para.training  # the frozen encoder stays in eval mode


def test_rejected_configurations():
    with pytest.raises(ValueError, match="paraphraser"):
        GraphFlowLoss(student_channels=(4, 4), teacher_channels=(8, 4), embed_channels=4)
    with pytest.raises(ValueError, match="translate_student"):
        GraphFlowLoss(student_channels=(3, 4), teacher_channels=(4, 4), embed_channels=4, translate_student=False)
    with pytest.raises(ValueError, match="maps 8 -> 3"):
        GraphFlowLoss(
            student_channels=(4, 4),
            teacher_channels=(8, 4),
            embed_channels=4,
            teacher_paraphrasers=(Paraphraser(8, 3), None),
        )
    with pytest.raises(ValueError, match="nodes_per_axis"):
        GraphFlowLoss(student_channels=(4, 4), teacher_channels=(4, 4), embed_channels=4, nodes_per_axis=0)
    with pytest.raises(ValueError, match="coarser than the node grid"):
        pool_to_nodes(torch.zeros(1, 4, 2, 8, 8), (4, 4, 4))
    loss = identity_loss()
    with pytest.raises(ValueError, match=r"teacher deep features must be \(B, 4, D, H, W\)"):
        loss(
            torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 2, 2, 2),
            torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2),
        )
    with pytest.raises(ValueError, match="differs from the teacher"):
        loss(
            torch.zeros(2, 4, 4, 4, 4), torch.zeros(2, 4, 2, 2, 2),
            torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 2, 2, 2),
        )


def test_pool_to_nodes_orders_cells_like_the_grid():
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2).repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    nodes = pool_to_nodes(x, (2, 2, 2))
    assert nodes.shape == (1, 8, 1)
    assert nodes[0, :, 0].tolist() == list(range(8))


# --------------------------------------------------------------------------- paraphraser


def toy_teacher_features(gen, batches=4):
    """Low-rank smooth features: 8 channels mixing 3 smooth fields, so a 3-channel factor suffices."""
    mixing = torch.randn(8, 3, generator=gen)
    out = []
    for _ in range(batches):
        fields = torch.nn.functional.interpolate(
            torch.randn(2, 3, 2, 2, 2, generator=gen), size=(4, 4, 4), mode="trilinear"
        )
        out.append(torch.einsum("cf,bfxyz->bcxyz", mixing, fields))
    return out


def test_paraphraser_shapes():
    para = Paraphraser(8, 3, hidden_channels=6)
    x = torch.randn(2, 8, 5, 6, 7)
    assert para.encode(x).shape == (2, 3, 5, 6, 7)
    assert para(x).shape == x.shape


def test_pretraining_reduces_reconstruction_loss(gen):
    data = toy_teacher_features(gen)
    torch.manual_seed(0)
    start = Paraphraser(8, 3, hidden_channels=8, kernel_size=1)
    before = mean_reconstruction_loss(start, data)
    trained = pretrain_paraphraser(data, steps=200, lr=1e-2, paraphraser=start)
    after = mean_reconstruction_loss(trained, data)
    assert after < 0.5 * before
    assert not trained.training and not any(p.requires_grad for p in trained.parameters())


def test_pretrain_builds_a_new_paraphraser_and_handles_iterators(gen):
    data = toy_teacher_features(gen, batches=2)
    torch.manual_seed(0)
    para = pretrain_paraphraser(iter(data), steps=50, lr=1e-2, factor_channels=3, kernel_size=1)  # stops after 2
    assert (para.in_channels, para.factor_channels) == (8, 3)
    with pytest.raises(ValueError, match="no feature batch"):
        pretrain_paraphraser([], steps=1, factor_channels=3)
    with pytest.raises(ValueError, match="exactly one"):
        pretrain_paraphraser(data, steps=1)
    with pytest.raises(ValueError, match=r"\(B, 8, D, H, W\)"):
        pretrain_paraphraser([data[0], torch.zeros(1, 5, 4, 4, 4)], steps=2, factor_channels=3)
    # steps=0: the initialised paraphraser, frozen, untouched (what paraphraser_steps=0 asks for)
    torch.manual_seed(0)
    untrained = pretrain_paraphraser(data, steps=0, factor_channels=3, kernel_size=1)
    torch.manual_seed(0)
    fresh = Paraphraser(8, 3, kernel_size=1)
    assert all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(), fresh.state_dict().values()))
    assert not untrained.training and not any(p.requires_grad for p in untrained.parameters())
    with pytest.raises(ValueError, match="steps must be >= 0"):
        pretrain_paraphraser(data, steps=-1, factor_channels=3)
    with pytest.raises(ValueError, match=r"\(B, 8, D, H, W\)"):  # checked although no step runs
        pretrain_paraphraser([torch.zeros(1, 5, 4, 4, 4)], steps=0, paraphraser=untrained)
