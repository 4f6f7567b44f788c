"""`python -m leankd` (and `torchrun ... -m leankd run recipe.yaml`): the `leankd` command."""
from .cli import main

main()
