"""What every layer of edgespec agrees on, importing none of them: the errors a user sees,
how files are written, and the bundle contract (the manifest, its integrity records, where
the cache is). export writes bundles to this contract and runtime reads them by it, so
neither imports the other. Layers, lowest first (tests/test_layering.py holds them):
contract < devices < runtime | export < quant < apps < edgespec (the package's `load`).
"""

__version__ = "0.1.0"  # edgespec's version, recorded in every manifest it writes
