"""`python -m drdc_cli ...` (also what torchrun launches)."""
from .app import main

main()
