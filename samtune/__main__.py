"""`python -m samtune` (and `accelerate launch -m samtune`)."""

from samtune.cli import main

main()
