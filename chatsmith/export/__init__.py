"""Artifacts for other tools: merged standalone models (merge.py), GGUF files for llama.cpp (gguf.py)."""
