"""``python -m spectrograms`` is the ``spectrograms`` command."""
from spectrograms.cli import run

if __name__ == "__main__":
    run()
