"""devices: execution providers and latency profiles. Imports contract only."""
