"""Models: the session ranker (training, ONNX export) and its serving side (bundles, FAISS
retrieval, ONNX Runtime scoring, top-k, metrics).

Serving modules (bundle, retrieval, scoring, topk, evaluation) never import torch; only
ranker, training and export do. Nothing is imported here so that importing a serving module
does not pull in a training one.
"""
