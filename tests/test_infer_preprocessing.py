"""`biper infer` preprocesses an image exactly as evaluation does: the ImageNet eval folder's
resize + centre crop and the loader's normalisation give bit-identical input tensors."""

import numpy as np
import pytest
import torch

from biper.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from biper.data.augment import normalize
from biper.deploy.predict import load_inputs

Image = pytest.importorskip("PIL.Image", reason="image decoding needs Pillow")


@pytest.mark.parametrize("wh", [(120, 90), (70, 160), (64, 64)])
def test_infer_input_equals_the_eval_batch(tmp_path, wh):
    rng = np.random.default_rng(sum(wh))
    path = tmp_path / "val" / "n01" / "img.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)).save(path)
    size = 64                                       # resize_size = round(64 * 256 / 224) = 73
    val = load_dataset("imagenet", tmp_path, "val", image_size=size, resize_size=round(size * 256 / 224),
                       workers=1)
    expected = normalize(val.fetch(torch.tensor([0]), augment=False), IMAGENET_MEAN, IMAGENET_STD)
    got, names = load_inputs([path], input_size=(3, size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert names == [str(path)] and got.shape == (1, 3, size, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_small_inputs_are_resized_whole(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (20, 12, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    got, _ = load_inputs([tmp_path / "a.png"], input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)
    ref = np.asarray(Image.fromarray(img).resize((8, 8), Image.BILINEAR))
    expected = normalize(torch.from_numpy(ref.copy()).permute(2, 0, 1)[None], (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
