"""The paper's method as pure tensor math, no IO: diffusion (Eq 3-4, 9), inpainting (Eq 10, 12-15), grid masks,
the heatmaps and their fusion (Eq 11, 16-19), the base map's residual norm (Eq 2), image scores and metrics."""
