// Index-building helpers for the datasets, compiled by `pip install -e .` (pybind11).
//
// The algorithms match Megatron-LM's helpers so that the same seed yields the same
// samples; each function has a NumPy reference in megatron/core/datasets/helpers.py
// that the tests compare against.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace py = pybind11;

namespace {

// Greedy blending: sample i goes to the dataset whose share lags its weight the most
// (weight * max(i, 1) - taken so far); ties go to the lowest dataset index.
void build_blending_indices(py::array_t<int16_t> &dataset_index,
                            py::array_t<int64_t> &dataset_sample_index,
                            const py::array_t<double> &weights, int32_t num_datasets,
                            int64_t size, bool verbose) {
  if (weights.ndim() != 1 || weights.shape(0) < num_datasets) {
    throw std::invalid_argument("build_blending_indices: weights must hold num_datasets entries");
  }
  if (dataset_index.size() < size || dataset_sample_index.size() < size) {
    throw std::invalid_argument("build_blending_indices: output arrays are shorter than size");
  }
  auto out_ds = dataset_index.mutable_unchecked<1>();
  auto out_sample = dataset_sample_index.mutable_unchecked<1>();
  auto w = weights.unchecked<1>();
  std::vector<int64_t> taken(num_datasets, 0);
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < size; ++i) {
      const double position = std::max(static_cast<double>(i), 1.0);
      int32_t best = 0;
      double best_error = w(0) * position - static_cast<double>(taken[0]);
      for (int32_t d = 1; d < num_datasets; ++d) {
        const double error = w(d) * position - static_cast<double>(taken[d]);
        if (error > best_error) {
          best_error = error;
          best = d;
        }
      }
      out_ds(i) = static_cast<int16_t>(best);
      out_sample(i) = taken[best];
      ++taken[best];
    }
  }
  if (verbose) {
    py::print(" > blending indices built for", size, "samples over", num_datasets, "datasets");
  }
}

}  // namespace

PYBIND11_MODULE(helpers_cpp, m) {
  m.doc() = "C++ index builders for Megatron-style datasets";
  m.def("build_blending_indices", &build_blending_indices, py::arg("dataset_index"),
        py::arg("dataset_sample_index"), py::arg("weights"), py::arg("num_datasets"),
        py::arg("size"), py::arg("verbose") = false);
}
