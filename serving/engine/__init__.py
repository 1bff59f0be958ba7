"""Inference engines behind one interface (base.py); vllm.py is the only importer of vllm."""
