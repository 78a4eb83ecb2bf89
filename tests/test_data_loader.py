"""Batched augmentation, normalisation, subsets and the deterministic TensorLoader.

References: a per-sample Python loop (pad, slice, flip) for the batched crop/flip; the textbook
``(x / 255 - mean) / std`` for normalisation; set algebra for sharding; replaying batches for
resume.
"""

import pytest
import torch
import torch.nn.functional as F

from biper.data import (
    ImageTensorDataset,
    TensorLoader,
    balanced_order,
    crop_flip,
    load_dataset,
    make_synthetic,
    normalize,
    random_crop_flip,
)
from biper.errors import BiperError


def _images(n=12, c=3, h=8, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _dataset(n=50, classes=5, h=8, w=8, seed=0):
    labels = torch.arange(n) % classes
    return ImageTensorDataset(_images(n, 3, h, w, seed), labels, [f"c{k}" for k in range(classes)])


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_flip_matches_per_sample_loop(padding):
    x = _images()
    g = torch.Generator().manual_seed(3)
    top = torch.randint(0, 2 * padding + 1, (12,), generator=g)
    left = torch.randint(0, 2 * padding + 1, (12,), generator=g)
    flip = torch.arange(12) % 3 == 0
    out = crop_flip(x, top, left, flip, padding)
    for b in range(12):
        xp = F.pad(x[b], (padding,) * 4)                                # (C, H+2p, W+2p)
        ref = xp[:, top[b]:top[b] + 8, left[b]:left[b] + 6]
        ref = ref.flip(-1) if flip[b] else ref
        assert torch.equal(out[b], ref)


def test_crop_flip_extremes_show_black_padding():
    x = torch.full((1, 3, 5, 5), 200, dtype=torch.uint8)
    out = crop_flip(x, torch.tensor([0]), torch.tensor([8]), torch.tensor([False]), 4)
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, 4:, :1] == 200).all()
    assert (out[0, :, 4:, 1:] == 0).all()


def test_random_crop_flip_covers_offsets_and_flips_half():
    x = torch.arange(32 * 32, dtype=torch.int64).view(1, 1, 32, 32).repeat(4000, 1, 1, 1)
    out = random_crop_flip(x.to(torch.float32), 4, torch.Generator().manual_seed(0))
    # recover each sample's offsets from its centre pixel and orientation from its first row
    centre = out[:, 0, 16, 15:17].to(torch.int64)                       # (B, 2)
    flipped = centre[:, 0] > centre[:, 1]
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    rows = centre.min(dim=1).values // 32 - 16
    assert set(rows.tolist()) == set(range(-4, 5))                      # all 9 vertical offsets
    counts = torch.bincount(rows + 4, minlength=9).float() / 4000
    assert (counts - 1 / 9).abs().max() < 0.03


def test_random_crop_flip_is_a_function_of_the_generator():
    x = _images(64, h=32, w=32)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_matches_formula():
    x = _images(4)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.25)
    ref = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) \
        / torch.tensor(std).double().view(1, 3, 1, 1)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    assert normalize(x, mean, std, torch.bfloat16).dtype == torch.bfloat16


def test_balanced_order_is_round_robin_within_class_order():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 2, 2])
    order = balanced_order(labels).tolist()
    # brute force: k-th occurrence of each class, classes ascending within a round
    seen, keyed = {}, []
    for i, c in enumerate(labels.tolist()):
        keyed.append((seen.get(c, 0), c, i))
        seen[c] = seen.get(c, 0) + 1
    assert order == [i for _, _, i in sorted(keyed)]


def test_subset_is_balanced_deterministic_and_in_dataset_order():
    ds = _dataset(n=50, classes=5)
    sub = ds.subset(20)
    assert sub.class_counts() == [4] * 5
    keep = [i for i in range(50) if i // 5 < 4]                          # labels cycle 0..4
    assert torch.equal(sub.images, ds.images[keep])
    assert torch.equal(ds.subset(20).images, sub.images)
    with pytest.raises(BiperError, match="subset"):
        ds.subset(0)


def test_synthetic_is_deterministic_and_learnable_by_template_matching():
    a = load_dataset("synthetic", None, "train", num_classes=4, size=16, length=200)
    b = make_synthetic("train", num_classes=4, size=16, length=200)
    assert torch.equal(a.images, b.images) and a.class_counts() == [50] * 4
    test = make_synthetic("test", num_classes=4, size=16, length=80)
    assert not torch.equal(test.images[:10], a.images[:10])
    # nearest class mean (fit on train) classifies test far above chance
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)])
    dist = ((test.images.float()[:, None] - means[None]) ** 2).sum(dim=(2, 3, 4))
    assert (dist.argmin(1) == test.labels).float().mean() > 0.9


def test_loader_yields_normalised_batches_and_eval_order():
    ds = _dataset(n=50)
    loader = TensorLoader(ds, 16, train=False)
    batches = list(loader)
    assert len(loader) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    torch.testing.assert_close(x, normalize(ds.images, ds.mean, ds.std))
    assert TensorLoader(ds, 16, train=False, drop_last=True).__len__() == 3
    cl = next(iter(TensorLoader(ds, 8, train=True, channels_last=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_loader_epoch_order_is_seeded_and_a_permutation():
    ds = _dataset(n=50)
    loader = TensorLoader(ds, 10, train=True, augment=False, seed=1)
    loader.set_epoch(0)
    e0 = loader.indices()
    loader.set_epoch(1)
    e1 = loader.indices()
    assert sorted(e0.tolist()) == list(range(50)) and not torch.equal(e0, e1)
    other = TensorLoader(ds, 7, train=True, seed=1)
    other.set_epoch(1)
    assert torch.equal(other.indices(), e1)                             # same (seed, epoch)
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, ds.labels[e1])


def test_resume_mid_epoch_reproduces_exact_batches():
    ds = _dataset(n=64, h=12, w=12)
    loader = TensorLoader(ds, 8, train=True, seed=7)
    loader.set_epoch(3)
    full = list(loader)
    resumed = TensorLoader(ds, 8, train=True, seed=7)
    resumed.set_epoch(3, start_batch=5)
    tail = list(resumed)
    assert len(tail) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(resumed)) == len(full)                              # start applies once
    xb, yb = resumed.batch(6)
    assert torch.equal(xb, full[6][0])
    assert list(resumed.iter_from(len(resumed))) == []
    with pytest.raises(BiperError, match="batch index"):
        resumed.iter_from(99)


def test_augmentation_changes_images_but_not_labels():
    ds = _dataset(n=64, h=12, w=12)
    aug = TensorLoader(ds, 64, train=True, seed=0)
    plain = TensorLoader(ds, 64, train=True, seed=0, augment=False)
    (xa, ya), (xp, yp) = next(iter(aug)), next(iter(plain))
    assert torch.equal(ya, yp) and not torch.equal(xa, xp)


@pytest.mark.parametrize("n,world,bs,drop", [(50, 3, 4, False), (50, 4, 5, True), (7, 3, 2, False)])
def test_sharding_is_disjoint_padded_and_equal_length(n, world, bs, drop):
    ds = _dataset(n=n)
    loaders = [TensorLoader(ds, bs, train=True, seed=2, rank=r, world_size=world, drop_last=drop)
               for r in range(world)]
    for ld in loaders:
        ld.set_epoch(4)
    shards = [ld.indices() for ld in loaders]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    assert len({len(ld) for ld in loaders}) == 1
    assert len(loaders[0]) == (per_rank // bs if drop else -(-per_rank // bs))
    real = [s[:ld.num_real] for s, ld in zip(shards, loaders)]
    flat = torch.cat(real).tolist()
    assert sorted(flat) == list(range(n))                               # disjoint cover
    single = TensorLoader(ds, bs, train=True, seed=2)
    single.set_epoch(4)
    order = single.indices()
    for r, s in enumerate(shards):                                      # every world-th position
        padded = torch.cat([order, order.repeat(world)])[:per_rank * world]
        assert torch.equal(s, padded[r::world])
    # different ranks draw different augmentations for the same batch index
    xs = [next(iter(ld))[0] for ld in loaders[:2]]
    assert not torch.equal(xs[0], xs[1])


def test_loader_rejects_bad_arguments():
    ds = _dataset(n=10)
    with pytest.raises(BiperError, match="batch_size"):
        TensorLoader(ds, 0, train=True)
    with pytest.raises(BiperError, match="rank"):
        TensorLoader(ds, 2, train=True, rank=2, world_size=2)
    with pytest.raises(BiperError, match="dtype"):
        TensorLoader(ds, 2, train=True, dtype=torch.int32)
    with pytest.raises(BiperError, match="drop_last"):
        TensorLoader(ds, 20, train=True, drop_last=True)
