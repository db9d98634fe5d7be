"""The one batch splitter, on the three kinds of sequence the package hands it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_deploy.batching import batches


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_batches_are_consecutive_slices_covering_everything(n, size):
    items = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    parts = list(batches(items, size))
    assert [len(p) for p in parts] == [size] * (n // size) + ([n % size] if n % size else [])
    np.testing.assert_array_equal(np.concatenate(parts) if parts else items, items)
    assert [t.tolist() for t in batches(torch.from_numpy(items), size)] == [p.tolist() for p in parts]
    assert list(batches(list(range(n)), size)) == [list(range(n))[i : i + size] for i in range(0, n, size)]


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match=">= 1"):
        list(batches([1, 2], 0))
