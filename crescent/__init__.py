"""Crescent: self-improving language models with zero external supervision (arXiv 2502.13441)."""
