"""`python -m detr ...` (and `torchrun -m detr train ...`) run the `detr` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
