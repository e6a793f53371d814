"""`python -m drdc_cli ...` (also what torchrun launches)."""
from . import main

main()
