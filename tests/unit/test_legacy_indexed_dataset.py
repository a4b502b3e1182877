"""The legacy TNTIDX module: its classes stay reachable through ``indexed_dataset`` and
the MMap module does not load it until a legacy name or impl is asked for."""
import subprocess
import sys

import numpy as np

from megatron.core.datasets import indexed_dataset, legacy_indexed_dataset

LEGACY_NAMES = ("LazyIndexedDataset", "IndexedCachedDataset", "LegacyIndexedDatasetBuilder")


def test_reexported_names_are_the_legacy_module_classes():
    for name in LEGACY_NAMES:
        assert getattr(indexed_dataset, name) is getattr(legacy_indexed_dataset, name)
        assert name in indexed_dataset.__all__ and name in dir(indexed_dataset)
    star = {}
    exec("from megatron.core.datasets.indexed_dataset import *", star)
    assert all(star[name] is getattr(legacy_indexed_dataset, name) for name in LEGACY_NAMES)


def test_mmap_import_does_not_load_the_legacy_module():
    code = ("import sys\n"
            "import megatron.core.datasets.indexed_dataset as m\n"
            "before = 'megatron.core.datasets.legacy_indexed_dataset' in sys.modules\n"
            "m.LazyIndexedDataset\n"
            "print(before, 'megatron.core.datasets.legacy_indexed_dataset' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_unknown_attribute_still_raises_attribute_error():
    try:
        indexed_dataset.NoSuchDataset
    except AttributeError as err:
        assert "NoSuchDataset" in str(err)
    else:
        raise AssertionError("indexed_dataset.NoSuchDataset did not raise AttributeError")


def test_builder_from_legacy_module_round_trips_through_make_dataset(tmp_path):
    prefix = str(tmp_path / "lg")
    with legacy_indexed_dataset.LegacyIndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as builder:
        builder.add_document(np.array([3, 1, 4, 1, 5], dtype=np.int32), [2, 3])
        builder.finalize()
    assert indexed_dataset.infer_dataset_impl(prefix) == "cached"
    ds = indexed_dataset.make_dataset(prefix, "lazy")
    assert isinstance(ds, legacy_indexed_dataset.LazyIndexedDataset)
    assert [s.tolist() for s in ds[0:2]] == [[3, 1], [4, 1, 5]]
    assert ds.doc_idx.tolist() == [0, 2]
