"""Resizing items before the network (``--input-size``) and before a run predicts."""

import numpy as np


def test_resize_items_is_torch_bilinear_rounded_in_chunks_and_leaves_a_right_size_alone():
    import torch

    from medcls.infer import resize_items

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (37, 2, 28, 28), dtype=np.uint8)
    up = resize_items(x, 64, chunk=5)
    assert up.dtype == np.uint8 and up.shape == (37, 2, 64, 64)
    want = torch.nn.functional.interpolate(torch.from_numpy(x).float(), size=(64, 64), mode="bilinear",
                                           align_corners=False).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(up, want)
    np.testing.assert_array_equal(up, resize_items(x, 64))  # chunking changes nothing
    assert resize_items(x, 28) is x
    flat = np.full((2, 1, 28, 28, 28), 77, np.uint8)
    vol = resize_items(flat, 32)
    assert vol.shape == (2, 1, 32, 32, 32) and (vol == 77).all()
