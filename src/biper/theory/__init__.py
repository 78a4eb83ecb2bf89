"""Closed forms and exact quadratures of the quantization error for Laplace latent weights."""
