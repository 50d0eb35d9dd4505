"""Research scripts beside the library: run from the repository root, e.g. ``python -m scripts.synthav.probe``."""
