"""drdc library: data, models, diffusion math, the run-store cache, metrics and the stages.

Importable without typer; the CLI in ``drdc_cli`` is a thin layer over it.
"""
__version__ = "0.1.0"
