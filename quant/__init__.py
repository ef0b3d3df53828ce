"""quant: what quantization costs, measured. Perplexity, top-1 agreement and KL of a bundle
against its source (quality.py, gguf_quality.py), and pass rates on programming tasks
(tasks.py). It runs bundles (runtime) and resolves and exports sources (export), so it sits
above both; the recipes themselves are export's (export/recipes.py)."""
