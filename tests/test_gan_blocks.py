"""GAN parts (droplab.models.gan_blocks): minibatch std, discriminator sets, MLP nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab.errors import InvalidValue
from droplab.layers import DropoutModule
from droplab.models import gan as nets
from droplab.models.gan_blocks import DiscriminatorSet, MinibatchStd, members


def test_minibatch_std_matches_a_direct_computation() -> None:
    # ProGAN's statistic: groups of G samples (sample i in group i mod N/G), the biased std
    # over the group of every feature, averaged over features, as one extra channel.
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    y = MinibatchStd(group_size=4)(x)
    assert y.shape == (8, 4, 5, 5) and torch.equal(y[:, :3], x)
    for i in range(8):
        group = x[[j for j in range(8) if j % 2 == i % 2]]  # N/G = 2 groups
        expect = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[i, 3], expect.expand(5, 5), atol=1e-6)
    # flat features: one extra column; the group shrinks to a divisor of N
    f = torch.randn(6, 7)
    out = MinibatchStd(4)(f)
    assert out.shape == (6, 8)
    expect = (f.reshape(3, 2, 7).var(dim=0, unbiased=False) + 1e-8).sqrt().mean(1).repeat(3)
    assert torch.allclose(out[:, 7], expect, atol=1e-6)
    # a collapsed batch (all samples equal) has std ≈ √1e-8 = 1e-4: the tell-tale sign
    same = MinibatchStd()(torch.ones(4, 2, 3, 3) * 0.7)
    assert torch.allclose(same[:, 2], torch.full((4, 3, 3), 1e-4), rtol=1e-3)
    with pytest.raises(InvalidValue):
        MinibatchStd(1)


def test_minibatch_std_gradient_reaches_every_sample_of_its_group() -> None:
    x = torch.randn(4, 2, requires_grad=True)
    MinibatchStd(2)(x)[:, 2].sum().backward()
    assert (x.grad != 0).all()


def test_discriminators_with_minibatch_std() -> None:
    d = nets.Discriminator((1, 16, 16), 8, minibatch_std=True, norm="none")
    assert any(isinstance(m, MinibatchStd) for m in d.modules())
    assert d(torch.randn(6, 1, 16, 16)).shape == (6,)
    g, md = nets.build_gan((2,), width=16, minibatch_std=True)
    assert isinstance(md.net[-2], MinibatchStd)
    assert md(g(torch.randn(8, 64))).shape == (8,)


def test_a_discriminator_set_has_independent_members() -> None:
    torch.manual_seed(0)
    _, d = nets.build_gan((1, 8, 8), width=8, discriminators=3, d_dropout=0.2)
    assert isinstance(d, DiscriminatorSet) and len(d) == 3 and len(members(d)) == 3
    w = [m.net[0].weight for m in members(d)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    x = torch.randn(5, 1, 8, 8)
    d.eval()
    scores = d(x)
    assert scores.shape == (3, 5)
    assert torch.equal(scores[1], members(d)[1](x))
    _, one = nets.build_gan((1, 8, 8), width=8)
    assert members(one) == [one]
    with pytest.raises(InvalidValue, match="positive integer"):
        nets.build_gan((1, 8, 8), discriminators=0)


def test_mlp_nets_for_points() -> None:
    g, d = nets.build_gan((2,), width=32, z_dim=8, d_dropout=0.3, d_dropout_where="all")
    assert isinstance(g, nets.MLPGenerator) and g.out_shape == (2,)
    pts = g(torch.randn(10, 8))
    assert pts.shape == (10, 2)
    drops = [m for m in d.modules() if isinstance(m, DropoutModule)]
    assert len(drops) == 4  # input + 3 hidden layers
    assert not torch.equal(d(pts), d(pts))  # dropout is on in training mode
    d.eval()
    assert torch.equal(d(pts), d(pts))
    sn = nets.build_gan((2,), spectral_norm=True)[1]
    assert any(hasattr(m, "parametrizations") for m in sn.modules())


@pytest.mark.parametrize(("kw", "match"), [
    ({"model": "dcgan"}, "dcgan is for images"),
    ({"d_dropout": 0.3, "d_dropout_kind": "spatial"}, "drops feature maps"),
    ({"g_dropout": 0.2}, "drop --g-dropout"),
])
def test_mlp_refuses_what_does_not_apply_to_points(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidValue, match=match) as e:
        nets.build_gan((2,), **kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_mlp_model_on_images_is_refused() -> None:
    with pytest.raises(InvalidValue, match="mlp"):
        nets.build_gan((1, 8, 8), model="mlp")


def test_gradient_penalty_on_points() -> None:
    # D(x) = <w, x> has gradient w at every interpolate: GP = (‖w‖ − 1)², here (5 − 1)².
    class Lin(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ torch.tensor([3.0, 4.0])

    gp = nets.gradient_penalty(Lin(), torch.randn(7, 2), torch.randn(7, 2))
    assert float(gp) == pytest.approx(16.0, rel=1e-6)
