"""Backbone plugins: multimodal LLMs wrapped to return raster-ordered ``VisualFeatures``."""
