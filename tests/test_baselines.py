"""Baselines: seeded projections, TRAK's closed form, D-TRAK's gradients, cosine similarities, CLIP."""

import numpy as np
import pytest
import torch

from lit_attr.baselines.projection import RandomProjector
from lit_attr.baselines.similarity import clip_embeddings, cosine_scores, load_open_clip, pixel_scores
from lit_attr.baselines.trak import trak_scores
from lit_attr.errors import ConfigError
from tests.helpers import tiny_open_clip


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_is_seeded_chunked_and_cache_independent(kind):
    g = torch.randn(5, 1000, dtype=torch.float32)
    a = RandomProjector(1000, 64, seed=3, kind=kind, chunk_params=128)
    b = RandomProjector(1000, 64, seed=3, kind=kind, chunk_params=128, cache_bytes=0)  # regenerated chunks
    c = RandomProjector(1000, 64, seed=4, kind=kind, chunk_params=128)
    assert a.cache is not None and b.cache is None
    torch.testing.assert_close(a.project(g), b.project(g))
    torch.testing.assert_close(a.project(g), g @ a.matrix().T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.project(g[:2]), a.project(g)[:2])  # batch split does not matter
    assert not torch.allclose(a.project(g), c.project(g))
    p = a.matrix()
    assert p.shape == (64, 1000)
    if kind == "rademacher":
        assert torch.allclose(p.abs(), torch.full_like(p, 64 ** -0.5))
    # E[P^T P] = I: column norms are 1 on average
    assert abs(p.pow(2).sum(0).mean().item() - 1.0) < 0.05


def test_projection_rejects_bad_shapes():
    with pytest.raises(ConfigError, match="shape"):
        RandomProjector(10, 4).project(torch.zeros(2, 11))
    with pytest.raises(ConfigError, match="gaussian or rademacher"):
        RandomProjector(10, 4, kind="sparse")


def linear_model_features(num_train, num_params, dim, seed=0):
    """Per-example squared-error gradients of a linear model, projected: Phi (N, d), phi_q (Q, d), and P."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_train + 3, num_params, generator=gen, dtype=torch.float64)
    y = torch.randn(num_train + 3, generator=gen, dtype=torch.float64)
    w = torch.randn(num_params, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = torch.stack([torch.autograd.grad(0.5 * (x[i] @ w - y[i]) ** 2, w)[0] for i in range(len(x))])
    projector = RandomProjector(num_params, dim, seed=seed, chunk_params=7, dtype=torch.float64)
    features = projector.project(grads)
    return features[:num_train], features[num_train:]


@pytest.mark.parametrize("num_train, dim", [(40, 12), (10, 24)])  # full-rank and rank-deficient H
def test_trak_equals_dense_closed_form(num_train, dim):
    phi, queries = linear_model_features(num_train, 30, dim)
    dampings = [1e-3, 1e-1, 10.0]
    scores = trak_scores(phi, queries, dampings)
    for d, damping in enumerate(dampings):
        h = phi.T @ phi / num_train + damping * torch.eye(dim, dtype=torch.float64)
        dense = phi @ torch.linalg.solve(h, queries.T)
        torch.testing.assert_close(scores[d], dense, rtol=1e-8, atol=1e-10)
    # TRAK's unnormalised units: (Phi^T Phi + N lambda I)^{-1} gives scores / N
    h_trak = phi.T @ phi + num_train * dampings[1] * torch.eye(dim, dtype=torch.float64)
    torch.testing.assert_close(scores[1] / num_train, phi @ torch.linalg.solve(h_trak, queries.T))


def test_trak_without_damping_is_the_pseudo_inverse():
    phi, queries = linear_model_features(10, 30, 24)
    pinv = torch.linalg.pinv(phi.T @ phi / 10, hermitian=True)
    torch.testing.assert_close(trak_scores(phi, queries, [0.0])[0], phi @ pinv @ queries.T, rtol=1e-6, atol=1e-8)
    with pytest.raises(ConfigError, match=">= 0"):
        trak_scores(phi, queries, [-1.0])


def test_cosine_scores_by_hand():
    train = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    query = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    expected = torch.tensor([[1.0, 0.0], [2 ** -0.5, -(2 ** -0.5)], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cosine_scores(train, query), expected)
    images = torch.randn(4, 1, 3, 3)
    by_hand = torch.tensor([[float(a.flatten() @ b.flatten() / (a.norm() * b.norm())) for b in images[:2]]
                            for a in images], dtype=torch.float64)
    torch.testing.assert_close(pixel_scores(images, images[:2]), by_hand, rtol=1e-6, atol=1e-7)


def test_clip_cosine_with_a_tiny_random_open_clip_model(tmp_path):
    pytest.importorskip("open_clip")
    config_path, weights, reference = tiny_open_clip(tmp_path)
    model = load_open_clip(str(config_path), str(weights))
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    embeddings = clip_embeddings(model, images, batch_size=2)
    assert embeddings.shape == (5, 16)
    x = torch.nn.functional.interpolate(((images + 1) / 2).repeat(1, 3, 1, 1), size=(32, 32), mode="bicubic",
                                        align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.encode_image((x - mean) / std)
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-5)
    scores = cosine_scores(embeddings, embeddings[:2])
    np.testing.assert_allclose(np.diag(scores[:2].numpy()), 1.0, rtol=1e-6)
    with pytest.raises(ConfigError, match="never downloaded"):
        load_open_clip(str(config_path), str(tmp_path / "missing.pt"))
