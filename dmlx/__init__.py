"""dmlx: deep metric learning in JAX/Flax.

Subpackages: ``losses`` (jittable losses), ``data`` (datasets, splits,
samplers), ``models`` (backbones and heads), ``methods`` (NNGK, Magnet, MIC,
DML-DA and plain losses as pure-function bundles), ``index`` (FAISS host
steps), ``eval`` (Recall@K, NMI, MAP@R), ``train`` (data-parallel loop).
"""
__version__ = "0.1.0"
