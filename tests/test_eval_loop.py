"""`biper.train.evaluate.eval_loop`: the one test loop every task uses."""

import torch
from torch import nn

from biper.data.loader import TensorLoader
from biper.data.synthetic import make_synthetic
from biper.train.evaluate import eval_loop, evaluate


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3 * 8 * 8), nn.Linear(3 * 8 * 8, 4))


def test_eval_loop_drops_the_padding_duplicates_and_restores_train_mode():
    ds = make_synthetic("test", num_classes=4, size=8, length=10)
    # rank 2 of 3: 3 real samples of 10, padded to 4 with a duplicate
    loader = TensorLoader(ds, 3, train=False, rank=2, world_size=3)
    assert loader.num_real == 3 and loader.num_samples == 4 and sum(len(y) for _, y in loader) == 4
    model = _model().train()
    seen, modes = [], []

    def add(out, y, hw):
        seen.append((out.shape[0], y.shape[0], tuple(hw)))
        modes.append(model.training)

    eval_loop(model, loader, add, device=torch.device("cpu"))
    assert sum(n for n, _, _ in seen) == 3 and all(n == m for n, m, _ in seen)
    assert all(hw == (8, 8) for _, _, hw in seen)
    assert modes and not any(modes) and model.training


def test_evaluate_matches_a_hand_written_pass():
    ds = make_synthetic("test", num_classes=4, size=8, length=10)
    loader = TensorLoader(ds, 4, train=False)
    model = _model().eval()
    loss, acc = evaluate(model, loader, device=torch.device("cpu"))
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        logits = model(x)
    assert abs(loss - nn.functional.cross_entropy(logits, y).item()) < 1e-6
    assert acc == 100.0 * int((logits.argmax(1) == y).sum()) / len(y)
