"""runtime: sessions, drafting, verification and the generate API over bundles already
prepared. Imports contract and devices only, never export (tests/test_layering.py)."""
