"""Build script for the C++ helpers (pybind11): dataset index builders and MLPerf BERT instances.

The helper is compiled by ``pip install -e .``; torch is not needed to build it.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "megatron.core.datasets.helpers_cpp",
        ["megatron/core/datasets/helpers.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
    Pybind11Extension(
        "megatron.preprocessing.mlperf_bert.instances_cpp",
        ["megatron/preprocessing/mlperf_bert/instances.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
