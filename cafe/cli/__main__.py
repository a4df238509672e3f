"""`python -m cafe.cli ...` (what the cluster job's torchrun runs)."""

from cafe.cli import main

main()
