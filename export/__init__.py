"""export: source model -> bundle, and the quantization recipes it builds with. Imports
contract only: the runtime that checks a new bundle's parity comes in as a callable
(parity.py), and preparing a preset on first use is apps/prepare.py's."""
