"""A Megatron-style framework for training transformer language models and neural retrievers.

Importing the package is cheap on purpose: it imports neither torch nor the C++ helper,
so command-line tools such as ``tools/preprocess_data.py`` start in a fraction of a second.
"""

__version__ = "0.1.0"
