"""The SPT network: shapes, schema, batch invariance, no host reads in the forward pass."""

from __future__ import annotations

import pytest
import torch

from spt_stream.core.grid import GRID_POINTS
from spt_stream.errors import ConfigError
from spt_stream.model.descriptors import load_descriptor_schema
from spt_stream.model.network import SPTConfig, SPTInference
from spt_stream.model.network.layers import FrequencyBandBlock, LocalGraphAttention
from spt_stream.training.train import heads_from_schema


@pytest.fixture(scope="module")
def schema():  # type: ignore[no-untyped-def]
    return load_descriptor_schema().subset(["os", "cn", "nnrs", "mean_nn_distance"])


@pytest.fixture(scope="module")
def model(schema):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return SPTInference(SPTConfig(heads=heads_from_schema(schema))).eval()


def test_packaged_schema_has_paper_descriptors() -> None:
    """The packaged schema names the paper's descriptors with the right kinds."""
    s = load_descriptor_schema()
    assert {"os", "cn", "cn2", "ocn", "nnrs", "mood", "mean_nn_distance"} <= set(s.names)
    assert s.get("os").kind == "discrete"
    assert s.get("os").classes == tuple(float(i) for i in range(8))
    assert s.get("nnrs").kind == "continuous"
    assert s.get("nnrs").units == "angstrom"
    assert s.get("os").class_labels[3] == "3"
    with pytest.raises(ConfigError):
        s.get("nope")


def test_forward_shapes(model: SPTInference, schema) -> None:  # type: ignore[no-untyped-def]
    """Values/stds per head, probabilities per class of discrete heads, one OOD score per row."""
    x = torch.rand(5, GRID_POINTS)
    el = torch.tensor([model.cfg.element_index(e) for e in ["Co", "Fe", "Mn", "Ni", "Xx"]])
    assert el[-1] == 0  # unknown element allowed
    values, stds, probs, ood = model(x, el)
    n_cls = sum(d.n_classes for d in schema.discrete)
    assert values.shape == (5, 4)
    assert stds.shape == (5, 4)
    assert probs.shape == (5, n_cls)
    assert ood.shape == (5,)
    assert torch.allclose(probs[:, :8].sum(1), torch.ones(5), atol=1e-5)
    assert (stds >= 0).all()
    raw = model.net(x, el)
    assert raw["features"].shape == (5, model.cfg.feature_dim)
    assert raw["nnrs"].shape == (5, 2)


def test_batch_invariance(model: SPTInference) -> None:
    """A spectrum alone and inside random batches of several sizes gives the same outputs."""
    g = torch.Generator().manual_seed(1)
    probe = torch.rand(1, GRID_POINTS, generator=g)
    el = torch.tensor([6])
    with torch.no_grad():
        alone = model(probe, el)
        for size in (2, 7, 64):
            others = torch.rand(size - 1, GRID_POINTS, generator=g) * 3.0
            x = torch.cat([others[: size // 2], probe, others[size // 2 :]])
            els = torch.randint(0, 11, (size,), generator=g)
            els[size // 2] = 6
            batched = model(x, els)
            for a, b in zip(alone, batched, strict=True):
                assert torch.allclose(a[0], b[size // 2], atol=1e-5, rtol=0), size


def test_band_selection_is_per_sample() -> None:
    """Each spectrum picks its own bands: a slow and a fast oscillation choose different bands."""
    blk = FrequencyBandBlock(4, 112, (1, 2, 4, 8), top_k=1, band_channels=4)
    t = torch.arange(112, dtype=torch.float32)
    slow = torch.sin(2 * torch.pi * 1 * t / 112)[None, :, None].repeat(1, 1, 4)
    fast = torch.sin(2 * torch.pi * 8 * t / 112)[None, :, None].repeat(1, 1, 4)
    mask = blk.selection_mask(blk.band_log_amplitude(torch.cat([slow, fast])))
    assert mask[0].argmax() == 0
    assert mask[1].argmax() == 3
    assert mask[0, 0] > 0.99
    assert mask[0, 3] < 0.01


def test_graph_attention_is_local() -> None:
    """Changing a token far outside the window leaves a node's output unchanged."""
    torch.manual_seed(0)
    gat = LocalGraphAttention(8, 40, window=3).eval()
    h = torch.randn(1, 40, 8)
    h2 = h.clone()
    h2[0, 30] += 5.0
    a, b = gat(h), gat(h2)
    assert torch.allclose(a[0, :26], b[0, :26])
    assert not torch.allclose(a[0, 27:34], b[0, 27:34])


def test_forward_never_reads_values_on_host(model: SPTInference) -> None:
    """The forward runs on the 'meta' device, where any host read (.item(), .cpu(), .tolist(),
    data-dependent shapes) raises: so the pass never synchronises with an accelerator."""
    meta = SPTInference(model.cfg).to("meta").eval()
    x = torch.empty(3, GRID_POINTS, device="meta")
    el = torch.zeros(3, dtype=torch.long, device="meta")
    values, _stds, _probs, ood = meta(x, el)
    assert values.device.type == "meta"
    assert values.shape == (3, 4)
    assert ood.shape == (3,)
    with pytest.raises(RuntimeError):
        (x.sum()).item()  # the control: a host read on meta fails


def test_model_is_small(model: SPTInference) -> None:
    """The default architecture stays small (well under the 20 MB checkpoint budget)."""
    n = sum(p.numel() for p in model.parameters())
    assert 10_000 < n < 1_000_000


def test_anchored_head_is_class_expectation_plus_residual() -> None:
    """An anchored continuous head's mean = the classifier's (standardized) class expectation +
    its own output; the classifier gets no gradient from the continuous head's loss; the anchor
    survives a JSON round trip and an unknown or wrong-kind anchor is refused."""
    schema = load_descriptor_schema().subset(["os", "os_cont", "cn"])
    cfg = SPTConfig(heads=heads_from_schema(schema), anchors=(("os_cont", "os"),))
    assert SPTConfig.from_json(cfg.to_json()).anchors == (("os_cont", "os"),)
    torch.manual_seed(0)
    net = SPTInference(cfg).net.train()
    net.anchor_norm_os_cont.copy_(torch.tensor([3.0, 1.5]))
    x = torch.rand(4, GRID_POINTS)
    el = torch.tensor([6, 7, 5, 0])
    out = net.eval()(x, el)
    f = net.features(x, el)
    own = net.heads["os_cont"](f)
    expect = (out["os"].softmax(-1) * torch.arange(8.0)).sum(-1)
    assert torch.allclose(out["os_cont"][:, 0], own[:, 0] + (expect - 3.0) / 1.5, atol=1e-5)
    assert torch.equal(out["os_cont"][:, 1], own[:, 1])
    net.zero_grad()
    net(x, el)["os_cont"][:, 0].sum().backward()
    cls_grad = [p.grad for p in net.heads["os"].parameters()]
    assert all(g is None or not g.any() for g in cls_grad)
    assert any(p.grad is not None and p.grad.any() for p in net.heads["os_cont"].parameters())
    meta = SPTInference(cfg).to("meta").eval()  # still no host read in the forward
    assert meta(torch.empty(2, GRID_POINTS, device="meta"), el[:2].to("meta"))[0].shape == (2, 3)
    with pytest.raises(ValueError, match="not a discrete head"):
        SPTConfig(heads=heads_from_schema(schema), anchors=(("os_cont", "cn2"),))
    with pytest.raises(ValueError, match="not a continuous head"):
        SPTConfig(heads=heads_from_schema(schema), anchors=(("os", "cn"),))


def test_gated_head_hands_the_lowest_class_to_the_classifier() -> None:
    """anchor_kind "gate": mean = (1 - p_0) * own + p_0 * (lowest class value), standardized;
    a wrong kind is refused."""
    schema = load_descriptor_schema().subset(["os", "os_cont"])
    cfg = SPTConfig(heads=heads_from_schema(schema), anchors=(("os_cont", "os"),),
                    anchor_kind="gate")  # fmt: skip
    assert SPTConfig.from_json(cfg.to_json()).anchor_kind == "gate"
    torch.manual_seed(0)
    net = SPTInference(cfg).net.eval()
    net.anchor_norm_os_cont.copy_(torch.tensor([3.0, 1.5]))
    x, el = torch.rand(4, GRID_POINTS), torch.tensor([6, 7, 5, 0])
    out = net(x, el)
    own = net.heads["os_cont"](net.features(x, el))
    p0 = out["os"].softmax(-1)[:, 0]
    expected = (1 - p0) * own[:, 0] + p0 * (0.0 - 3.0) / 1.5
    assert torch.allclose(out["os_cont"][:, 0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="anchor_kind"):
        SPTConfig(heads=heads_from_schema(schema), anchors=(("os_cont", "os"),), anchor_kind="x")
