"""apps: the `edgespec` commands, bench, and what joins export and runtime (a preset's first
use, prepare.py). The top layer: it imports every other, none imports it but `edgespec.load`."""
