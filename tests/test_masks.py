"""Tests for stages.method.masks: the partition's properties (Sec 4.2), reproducible per-image generators, validation."""
from __future__ import annotations

import pytest
import torch

from stages.errors import ConfigError
from stages.method.masks import check_grid, grid_masks, image_generator


@pytest.mark.parametrize("size, c, n_s", [(16, 1, 2), (16, 4, 2), (32, 8, 4), (24, 4, 3), (32, 16, 4), (12, 1, 6),
                                         (28, 4, 2), (20, 4, 3), (224, 32, 2)])  # G = 49, 25, 49: near-equal
def test_masks_partition_the_image_into_equal_sets_of_whole_cells(size: int, c: int, n_s: int) -> None:
    m = grid_masks(size, c, n_s, image_generator(0, 7))
    assert m.shape == (n_s, 1, size, size) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    unknown = 1 - m[:, 0]  # (n_s, size, size): indicator of S_i
    assert torch.equal(unknown.sum(0), torch.ones(size, size))  # disjoint and covering
    g = (size // c) ** 2
    sizes = [g // n_s + (i < g % n_s) for i in range(n_s)]  # equal when n_s divides G, else one cell apart
    assert (unknown.sum((1, 2)) / (c * c)).tolist() == sizes
    blocks = unknown.view(n_s, size // c, c, size // c, c)
    assert torch.equal(blocks.amin((2, 4)), blocks.amax((2, 4)))  # constant on every c x c cell


def test_masks_are_reproducible_per_image() -> None:
    a = grid_masks(32, 4, 2, image_generator(3, 10))
    assert torch.equal(a, grid_masks(32, 4, 2, image_generator(3, 10)))
    assert not torch.equal(a, grid_masks(32, 4, 2, image_generator(3, 11)))  # another image
    assert not torch.equal(a, grid_masks(32, 4, 2, image_generator(4, 10)))  # another seed
    assert not torch.equal(a, grid_masks(32, 4, 2, image_generator(3, 10, stream=1)))  # another stream


def test_image_generator_is_a_fresh_cpu_generator() -> None:
    g1, g2 = image_generator(0, 0), image_generator(0, 0)
    assert g1.device.type == "cpu" and g1.initial_seed() == g2.initial_seed() < 2**63
    torch.randn(5, generator=g1)  # drawing from one leaves the other untouched
    assert torch.equal(torch.randn(3, generator=g2), torch.randn(3, generator=image_generator(0, 0)))
    seeds = {image_generator(s, i, k).initial_seed() for s in range(3) for i in range(3) for k in range(3)}
    assert len(seeds) == 27


@pytest.mark.parametrize("size, c, n_s, message", [
    (224, 35, 2, r"^c: 35 does not divide the image size 224$"),
    (16, 0, 2, r"^c: "),
    (16, 4, 1, r"^n_s: 1 is below 2"),
    (16, 16, 2, r"^n_s: 2 sets need at least 2 grid cells, but grid size 16 at image size 16 gives 1"),
    (16, 8, 5, r"^n_s: 5 sets need at least 5 grid cells, but grid size 8 at image size 16 gives 4"),
])
def test_bad_grids_raise_config_errors_naming_the_parameter(size: int, c: int, n_s: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_grid(size, c, n_s)
    with pytest.raises(ConfigError, match=message):
        grid_masks(size, c, n_s, image_generator(0, 0))


def test_paper_grids_are_valid() -> None:
    for c in (1, 16, 32):  # Sec 5: c in {1, 16, 32}, n_s = 2, 224 px; c = 32 gives 49 cells, split 25 / 24
        check_grid(224, c, 2)
    assert sorted((1 - grid_masks(224, 32, 2, image_generator(0, 0))).sum((1, 2, 3)).div(32 * 32).tolist()) == [24, 25]
