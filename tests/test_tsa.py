"""The TSA cache's algorithms: seeds, groups, prototypes and keys, retrieval on planted keys, the
adapter at initialisation. The stage itself is tested in tests/test_tsa_stage.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def test_seeds_are_stable_distinct_and_groups_fixed():
    from pipeline.tsa.generate import generation_seed, group_of

    seeds = {generation_seed(0, c, i) for c in range(20) for i in range(100)}
    assert len(seeds) == 2000 and all(0 <= s < 2 ** 63 for s in seeds)
    assert generation_seed(0, 3, 7) == generation_seed(0, 3, 7) != generation_seed(1, 3, 7)
    assert list(group_of(5, 4)) == [4, 5, 6, 7] and list(group_of(4, 4)) == [4, 5, 6, 7] and list(group_of(3, 1)) == [3]


def test_prototypes_keys_and_values():
    from pipeline.tsa.prototypes import build_keys, patch_mask, prototypes

    label = np.zeros((8, 8), np.uint8)
    label[:4, :4] = 3
    inside = patch_mask(label, 4)
    assert inside.reshape(4, 4)[:2, :2].all() and inside.sum() == 4
    features = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    fg, bg = prototypes(features, inside)
    np.testing.assert_allclose(fg, features[inside].mean(0))
    np.testing.assert_allclose(bg, features[~inside].mean(0))
    assert prototypes(features, np.zeros(16, bool))[0] is None and prototypes(features, np.ones(16, bool))[1] is None
    rng = np.random.default_rng(0)
    fg_by_class = {0: rng.normal(size=(6, 4)), 2: rng.normal(size=(2, 4))}
    keys, values, key_class = build_keys(fg_by_class, rng.normal(size=(9, 4)), 3, per_class=3, background=4)
    assert keys.shape == (4 + 3 + 2, 4) and list(key_class) == [-1] * 4 + [0] * 3 + [2] * 2  # class 2: its 2 points
    assert (values.sum(1) == 1).all() and (values.argmax(1) == key_class + 1).all() and values.shape[1] == 4


def test_retrieval_returns_the_planted_class():
    """Patches equal to a class's planted key light up that class, and the background keys suppress."""
    from pipeline.tsa.retrieval import StaticCache, key_weights

    E, C, g = 16, 3, 4
    basis = torch.eye(E)
    keys = torch.stack([basis[0], basis[1], basis[2], basis[3]])  # bg, class 0, class 1, class 2
    key_class = torch.tensor([-1, 0, 1, 2])
    text = basis[1:4] + 0.1 * basis[5]
    weights = key_weights(keys, key_class, text, basis[0])
    assert torch.allclose(weights.sum(0), torch.ones(C + 1))  # one key per column: weight 1
    tokens = torch.zeros(1, 1 + g * g, E)
    tokens[0, 0] = basis[:4].sum(0)  # class token
    tokens[0, 1:] = basis[0]  # background everywhere ...
    tokens[0, 1 + 5] = basis[2]  # ... except patch 5, which is class 1
    tokens[0, 1 + 10] = basis[3]  # and patch 10, class 2
    cams = StaticCache(keys, key_class, text, basis[0])(tokens)
    assert cams.shape == (1, C, g * g)
    assert int(cams[0, 1].argmax()) == 5 and int(cams[0, 2].argmax()) == 10
    assert cams[0, 1, 5] > 0.999 and cams[0, 1, [i for i in range(16) if i != 5]].max() < 1e-6


def test_key_weights_prefer_keys_near_their_class_text():
    from pipeline.tsa.retrieval import key_weights

    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    w = key_weights(keys, torch.tensor([0, 0, 0]), torch.tensor([[1.0, 0.0]]), None)
    assert w[:, 1].argmax() == 0 and torch.isclose(w[:, 1].sum(), torch.tensor(1.0)) and (w[:, 1] > 0).all()
    assert (w[:, 0] == 0).all()  # column 0 is the background's: no background key here


def test_the_adapter_at_initialisation_reproduces_the_static_key_scores():
    from pipeline.tsa.adapter import KVAdapter
    from pipeline.tsa.prototypes import build_keys

    rng = np.random.default_rng(1)
    keys, values, _ = build_keys({0: rng.normal(size=(5, 8)), 1: rng.normal(size=(5, 8))}, rng.normal(size=(6, 8)), 2,
                                 per_class=2, background=3)
    adapter = KVAdapter(torch.from_numpy(keys), torch.from_numpy(values), hidden=32, dropout=0.1, seed=0).eval()
    f = F.normalize(torch.randn(10, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    static = torch.relu(f @ torch.from_numpy(keys).T)
    torch.testing.assert_close(adapter.scores(f)[:, :len(keys)], static)
    torch.testing.assert_close(adapter(f), static @ torch.from_numpy(values))  # the extra units carry no value yet
    with pytest.raises(ValueError, match="must hold the 7 keys"):
        KVAdapter(torch.from_numpy(keys), torch.from_numpy(values), hidden=4, dropout=0.1, seed=0)


def test_adapter_training_learns_planted_labels_and_is_seeded():
    from pipeline.tsa.adapter import AdaptedCache, KVAdapter, TensorPatches, balanced_cross_entropy, train_adapter, warmup_poly
    from pipeline.tsa.config import AdapterConfig

    g, E, S = 4, 8, 8
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(32, g * g, E, generator=gen), dim=-1)
    patch_labels = (features[..., 0] > 0).long() * 2  # class 1 (label 2) where feature 0 is positive
    labels = F.interpolate(patch_labels.reshape(32, 1, g, g).float(), size=(S, S), mode="nearest")[:, 0].to(torch.uint8)
    keys = torch.randn(3, E, generator=gen)
    values = torch.eye(3)

    config = AdapterConfig(hidden=16, iterations=150, batch=8, lr=0.05, weight_decay=0.0, warmup=10, seed=3)

    def trained():
        adapter = KVAdapter(keys, values, config.hidden, dropout=config.dropout, seed=config.seed)
        return adapter, train_adapter(adapter, TensorPatches(features, labels), config)

    adapter, losses = trained()
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    again, losses2 = trained()
    assert losses == losses2 and all(torch.equal(a, b) for a, b in zip(adapter.parameters(), again.parameters()))
    pred = adapter(features).argmax(-1)
    assert (pred == patch_labels).float().mean() > 0.9
    cams = AdaptedCache(adapter)(torch.cat([torch.zeros(32, 1, E), features], dim=1))
    assert cams.shape == (32, 2, g * g) and (cams >= 0).all()
    assert warmup_poly(0, 100, 10) == pytest.approx(1e-6) and warmup_poly(10, 100, 10) == 1 and warmup_poly(100, 100, 10) == 0
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = 10.0  # confident background everywhere
    loss = balanced_cross_entropy(logits, torch.tensor([[[0, 0], [2, 255]]]))
    assert loss == pytest.approx(0.5 * 0 + 0.5 * 10.0, abs=1e-3)


def test_an_adapter_trained_from_a_features_store_is_the_one_trained_in_memory(tmp_path):
    """Round 2 reads its training set from a per-image store a batch at a time (memory that does not grow
    with the train split): the same float16 features and labels give the same losses and weights."""
    from pipeline.store.image_store import ImageStore
    from pipeline.store.patch_features import StoredPatches, patch_specs
    from pipeline.tsa.adapter import TensorPatches, fit_adapter
    from pipeline.tsa.config import AdapterConfig

    g, E, S, N = 4, 8, 8, 24
    gen = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(N, g * g, E, generator=gen), dim=-1).half()
    labels = torch.randint(0, 3, (N, S, S), generator=gen, dtype=torch.uint8)
    labels[:, 0, 0] = 255
    ids = [f"train_{i:03d}" for i in range(N)]
    store = ImageStore.create_or_resume(tmp_path / "f.zarr", ids=ids, specs=patch_specs(g, E, S), key="k", attrs={},
                                        shard_images=5)
    for i in range(N):
        store.stage_image(i, {"features": features[i].numpy(), "labels": labels[i].numpy()}, bytes(32))
    for block in store.blocks():
        store.pack_block(block)
    store.mark_complete()
    stored = StoredPatches(ImageStore.open(tmp_path / "f.zarr"))
    assert (len(stored), stored.grid) == (N, g)
    rows = torch.tensor([5, 0, 23, 5])
    for a, b in zip(stored.take(rows), TensorPatches(features, labels).take(rows)):
        assert torch.equal(a, b)
    config = AdapterConfig(hidden=8, iterations=20, batch=4, lr=0.05, warmup=5, seed=2)
    keys, values = torch.randn(3, E, generator=gen), torch.eye(3)
    (mem, mem_losses), (disk, disk_losses) = (fit_adapter(keys, values, data, config)
                                              for data in (TensorPatches(features, labels), stored))
    assert mem_losses == disk_losses
    assert all(torch.equal(a, b) for a, b in zip(mem.parameters(), disk.parameters()))
