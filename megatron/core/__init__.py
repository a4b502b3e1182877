"""The library layer: typed configs and explicit process groups in, tensors out.

Nothing here reads command-line arguments; see ``megatron/arguments.py`` for that.
"""
