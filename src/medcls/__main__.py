"""``python -m medcls``: the command line (also what ``torchrun -m medcls`` starts)."""

from medcls.cli import _console

if __name__ == "__main__":
    _console()
