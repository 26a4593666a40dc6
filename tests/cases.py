"""Tiny float64 models and rows for the curvature and gradient tests.

Each case is a dict of lambdas: ``model()`` builds the network, ``rows(R)`` draws model inputs for
R rows, ``forward(m, X)`` runs it. ``forward`` receives a module (or a functional stand-in) so the
same case drives our hooks, curvlinops and the ``jacrev`` oracle.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from lit_attr.curvature import KFACAccumulator, select_kfac_modules


class TokenLinear(nn.Module):
    """A Linear over channels applied at every pixel: P = H W tokens share its weight."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return self.linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


def _seeded(build):
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build().double()

    return make


deep_linear = _seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3, bias=False), nn.Linear(3, 2)))
mlp = _seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
conv_net = _seeded(
    lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        TokenLinear(4),
        nn.Tanh(),
        nn.Conv2d(4, 2, 2, padding=1, bias=False),
    )
)
tiny_unet = _seeded(
    lambda: UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, attention_head_dim=8,
    )
)


def vector_rows(dim: int):
    def rows(num_rows: int, seed: int = 1) -> Tensor:
        return torch.randn(num_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    return rows


def image_rows(channels: int, size: int):
    def rows(num_rows: int, seed: int = 1) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(num_rows, channels, size, size, generator=gen, dtype=torch.float64)

    return rows


def unet_rows(num_rows: int, seed: int = 1) -> dict[str, Tensor]:
    """Noisy images and timesteps of R rows."""
    gen = torch.Generator().manual_seed(seed)
    return {"xt": torch.randn(num_rows, 1, 8, 8, generator=gen, dtype=torch.float64),
            "t": torch.randint(0, 1000, (num_rows,), generator=gen)}


def call_plain(m, x):
    return m(x)


def call_unet(m, x):
    return m(x["xt"], x["t"]).sample


MLP_CASE = {"model": mlp, "rows": vector_rows(4), "forward": call_plain}
DEEP_LINEAR_CASE = {"model": deep_linear, "rows": vector_rows(4), "forward": call_plain}
CONV_CASE = {"model": conv_net, "rows": image_rows(2, 6), "forward": call_plain}
UNET_CASE = {"model": tiny_unet, "rows": unet_rows, "forward": call_unet}


def our_factors(case, num_rows, fisher="type-2", approx="expand", mc_samples=1, targets=None, rows_per_example=1):
    """Build the case, draw R rows, and fit K-FAC factors on them in one batch (MC seed 3)."""
    model = case["model"]()
    modules = select_kfac_modules(model)
    rows = case["rows"](num_rows)
    accumulator = KFACAccumulator(modules, fisher, approx, mc_samples, seed=3, model=model)
    indices = torch.arange(num_rows // rows_per_example)
    accumulator.update(lambda: case["forward"](model, rows), indices, targets)
    return model, modules, rows, accumulator.finalize()


def ddpm_batches() -> list[dict[str, Tensor]]:
    """Two batches of two 8x8 images with stable indices 0..3."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    return [{"index": torch.tensor([0, 1]), "image": images[:2]}, {"index": torch.tensor([2, 3]), "image": images[2:]}]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny float64 models gain nothing from threads, and OpenMP threads on a busy 2-core machine
    can slow them down 10-50x; import this fixture into a test module to run it on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
