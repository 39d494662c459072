"""chatsmith: from a base or instruct model plus instructions to your own chat model."""

__version__ = "0.1.0"
