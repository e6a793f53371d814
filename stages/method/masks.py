"""Grid partition masks for diffusion inpainting (Sec 4.2) and per-image random generators.

Pure tensor functions: no IO. The image (size x size) is cut into G = (size / c)^2 cells of c x c pixels, which are
split uniformly at random into n_s disjoint sets S_i of G / n_s cells each; M_i is 0 on S_i and 1 elsewhere.
When n_s does not divide G the sets differ by one cell: the paper's own defaults need it (224 px, c = 32 gives
G = 49 cells for n_s = 2), so only G < n_s (an empty set) is an error.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from stages.method.choices import check_grid  # noqa: F401 (torch-free home; re-exported)


def grid_masks(size: int, c: int, n_s: int, generator: torch.Generator) -> Tensor:
    """(n_s, 1, size, size) float32 binary masks M_i: 0 on the cells of set S_i, 1 elsewhere.

    The G = (size / c)^2 cells are split uniformly at random (torch.randperm with ``generator``, a CPU generator)
    into n_s disjoint sets of floor(G / n_s) or ceil(G / n_s) cells (the first G mod n_s sets get one more).
    sum_i (1 - M_i) == 1 everywhere: each pixel is unknown in exactly one mask, which assembly (Eq 10) relies on."""
    check_grid(size, c, n_s)
    cells = size // c
    g = cells * cells
    perm = torch.randperm(g, generator=generator)
    owner = torch.empty(g, dtype=torch.long)
    owner[perm] = torch.arange(g) % n_s  # the k-th drawn cell goes to set k mod n_s: a uniform random partition
    owner = owner.view(cells, cells).repeat_interleave(c, 0).repeat_interleave(c, 1)  # cell -> pixel
    unknown = owner[None] == torch.arange(n_s)[:, None, None]  # (n_s, size, size): pixel in S_i
    return (~unknown).to(torch.float32)[:, None]


def image_generator(seed: int, image_index: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, image_index, stream) through sha256 (63 bits).

    Each image draws from its own generator, so its masks and noise do not depend on which other images share its
    batch, their order or the sharding of the run. ``stream`` separates independent uses for the same image (e.g.
    the masks and the noise of each grid size c), so adding a c or a stage does not shift the others' numbers."""
    digest = hashlib.sha256(f"drdc:{int(seed)}:{int(image_index)}:{int(stream)}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
