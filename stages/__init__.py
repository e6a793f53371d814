"""drdc library, arranged by job (README, "Architecture"; tests/test_layers.py checks the layering):

models    the networks (backbone, reconstruction transformer, conditional UNet)
method    the paper's method as pure tensor math (Eq 2-4, 9-19), metrics
data      datasets, images, the validation split and its synthetic defects
store     the run store: keyed entries, locks, claims, checkpoints, presets, the stage registry
pipeline  one module per stage, and what stages share
apps      predict, calibrate, ablate, bound, report, pictures, export

Importable without typer; the CLI in ``drdc_cli`` is a thin layer over it.
"""
__version__ = "0.1.0"
