// Index-building helpers for the datasets, compiled by `pip install -e .` (pybind11).
//
// The algorithms match Megatron-LM's helpers so that the same seed yields the same
// samples; each function has a NumPy reference in megatron/core/datasets/helpers.py
// that the tests compare against.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// Megatron skips documents holding a sentence longer than this many tokens: such a
// sentence is almost always a table or a dump that would be truncated to noise.
constexpr int32_t kLongSentenceLen = 512;

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

// GPT: walk the documents in doc_idx order; each sample takes seq_length + 1 tokens and
// shares its last token with the next sample, so row i + 1 is where sample i ends.
template <typename DocT, typename OutT>
py::array build_sample_idx_impl(const py::array_t<int32_t> &sizes_,
                                const py::array_t<DocT> &doc_idx_, int32_t seq_length,
                                int32_t num_epochs, int64_t tokens_per_epoch) {
  auto sizes = sizes_.template unchecked<1>();
  auto doc_idx = doc_idx_.template unchecked<1>();
  const int64_t num_samples = (static_cast<int64_t>(num_epochs) * tokens_per_epoch - 1) / seq_length;
  const int64_t num_docs = doc_idx.shape(0);
  const int64_t num_sizes = sizes.shape(0);
  auto *sample_idx = new OutT[2 * (num_samples + 1)];
  std::string error;
  {
    py::gil_scoped_release release;
    int64_t doc_pos = 0;
    int64_t doc_offset = 0;
    sample_idx[0] = 0;
    sample_idx[1] = 0;
    for (int64_t sample = 1; sample <= num_samples && error.empty(); ++sample) {
      int64_t remaining = static_cast<int64_t>(seq_length) + 1;
      while (remaining != 0) {
        if (doc_pos >= num_docs) {
          error = "build_sample_idx: ran past the end of doc_idx at sample " +
                  std::to_string(sample) + "; tokens_per_epoch does not match sizes[doc_idx]";
          break;
        }
        const int64_t doc_id = static_cast<int64_t>(doc_idx(doc_pos));
        if (doc_id < 0 || doc_id >= num_sizes) {
          error = "build_sample_idx: doc_idx holds document " + std::to_string(doc_id) +
                  " outside sizes of length " + std::to_string(num_sizes);
          break;
        }
        const int64_t doc_length = static_cast<int64_t>(sizes(doc_id)) - doc_offset;
        remaining -= doc_length;
        if (remaining <= 0) {
          // The -1 keeps the last token of this sample as the first of the next.
          doc_offset += remaining + doc_length - 1;
          remaining = 0;
        } else {
          ++doc_pos;
          doc_offset = 0;
        }
      }
      sample_idx[2 * sample] = static_cast<OutT>(doc_pos);
      sample_idx[2 * sample + 1] = static_cast<OutT>(doc_offset);
    }
  }
  if (!error.empty()) {
    delete[] sample_idx;
    throw std::invalid_argument(error);
  }
  py::capsule owner(sample_idx, [](void *p) { delete[] reinterpret_cast<OutT *>(p); });
  const auto item = static_cast<py::ssize_t>(sizeof(OutT));
  return py::array(std::vector<py::ssize_t>{num_samples + 1, 2}, {2 * item, item}, sample_idx,
                   owner);
}

template <typename DocT>
py::array build_sample_idx(const py::array_t<int32_t> &sizes, const py::array_t<DocT> &doc_idx,
                           int32_t seq_length, int32_t num_epochs, int64_t tokens_per_epoch) {
  if (seq_length <= 1) {
    throw std::invalid_argument("build_sample_idx: seq_length must be > 1, got " +
                                std::to_string(seq_length));
  }
  if (num_epochs <= 0 || tokens_per_epoch <= 1) {
    throw std::invalid_argument("build_sample_idx: need num_epochs > 0 and tokens_per_epoch > 1, got " +
                                std::to_string(num_epochs) + " and " +
                                std::to_string(tokens_per_epoch));
  }
  // int32 rows as Megatron writes them, unless a position or an offset would not fit.
  int64_t max_size = 0;
  auto s = sizes.template unchecked<1>();
  for (py::ssize_t i = 0; i < s.shape(0); ++i) max_size = std::max<int64_t>(max_size, s(i));
  const int64_t limit = std::numeric_limits<int32_t>::max();
  if (doc_idx.shape(0) < limit && max_size < limit) {
    return build_sample_idx_impl<DocT, int32_t>(sizes, doc_idx, seq_length, num_epochs,
                                                tokens_per_epoch);
  }
  return build_sample_idx_impl<DocT, int64_t>(sizes, doc_idx, seq_length, num_epochs,
                                              tokens_per_epoch);
}

// Draws the target length of the next BERT/T5 sample from a 32-bit Mersenne Twister:
// with probability 1/short_seq_ratio a length in [2, max_length], else max_length.
inline int32_t target_sample_length(uint32_t short_seq_ratio, int32_t max_length,
                                    std::mt19937 &rng) {
  if (short_seq_ratio == 0) return max_length;
  const uint64_t draw = rng();
  if (draw % short_seq_ratio == 0) {
    return static_cast<int32_t>(2 + draw % static_cast<uint64_t>(max_length - 1));
  }
  return max_length;
}

// Fisher-Yates over rows of `width`, with the 64-bit generator Megatron uses so that
// more than 2^32 samples can be shuffled.
template <typename T>
void shuffle_rows(T *rows, int64_t num_rows, int width, int64_t seed) {
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  for (int64_t i = num_rows - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    for (int k = 0; k < width; ++k) std::swap(rows[width * i + k], rows[width * j + k]);
  }
}

template <typename T>
py::array rows_to_array(T *rows, int64_t num_rows, int width) {
  py::capsule owner(rows, [](void *p) { delete[] reinterpret_cast<T *>(p); });
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  return py::array(std::vector<py::ssize_t>{num_rows, width}, {width * item, item}, rows, owner);
}

bool has_long_sentence(const py::detail::unchecked_reference<int32_t, 1> &sizes, int64_t first,
                       int64_t last) {
  for (int64_t s = first; s < last; ++s) {
    if (sizes(s) > kLongSentenceLen) return true;
  }
  return false;
}

void check_sentence_bounds(const py::detail::unchecked_reference<int64_t, 1> &docs,
                           int64_t num_sentences, const char *name) {
  if (docs.shape(0) < 1) {
    throw std::invalid_argument(std::string(name) + ": docs must hold at least one boundary");
  }
  for (py::ssize_t d = 0; d + 1 < docs.shape(0); ++d) {
    if (docs(d) < 0 || docs(d) > docs(d + 1) || docs(d + 1) > num_sentences) {
      throw std::invalid_argument(std::string(name) + ": docs[" + std::to_string(d) +
                                  "] is not a valid sentence range for " +
                                  std::to_string(num_sentences) + " sentences");
    }
  }
}

// BERT/T5: rows [first_sentence, end_sentence, target_length]. Two passes with the same
// seed (count, then fill) so the map is allocated exactly once.
template <typename T>
py::array build_mapping_impl(const py::array_t<int64_t> &docs_, const py::array_t<int32_t> &sizes_,
                             int32_t num_epochs, uint64_t max_num_samples, int32_t max_seq_length,
                             double short_seq_prob, int32_t seed, bool verbose,
                             int32_t min_num_sent) {
  auto docs = docs_.unchecked<1>();
  auto sizes = sizes_.unchecked<1>();
  check_sentence_bounds(docs, sizes.shape(0), "build_mapping");
  const uint32_t short_seq_ratio =
      short_seq_prob > 0 ? static_cast<uint32_t>(std::round(1.0 / short_seq_prob)) : 0;
  const int64_t num_docs = docs.shape(0) - 1;
  int64_t num_samples = -1;
  T *maps = nullptr;
  {
    py::gil_scoped_release release;
    for (int pass = 0; pass < 2; ++pass) {
      const bool fill = pass == 1;
      std::mt19937 rng(static_cast<uint32_t>(seed));
      uint64_t map_index = 0;
      for (int32_t epoch = 0; epoch < num_epochs; ++epoch) {
        if (map_index >= max_num_samples) break;
        for (int64_t doc = 0; doc < num_docs; ++doc) {
          const int64_t first = docs(doc);
          const int64_t last = docs(doc + 1);
          int64_t remaining = last - first;
          const bool long_sentence = remaining > 1 && has_long_sentence(sizes, first, last);
          if (remaining < min_num_sent || long_sentence) continue;
          int64_t start = first;
          int64_t seq_len = 0;
          int32_t num_sent = 0;
          int32_t target = target_sample_length(short_seq_ratio, max_seq_length, rng);
          for (int64_t s = first; s < last; ++s) {
            seq_len += sizes(s);
            ++num_sent;
            --remaining;
            if ((seq_len >= target && remaining > 1 && num_sent >= min_num_sent) ||
                remaining == 0) {
              if (fill) {
                maps[3 * map_index] = static_cast<T>(start);
                maps[3 * map_index + 1] = static_cast<T>(s + 1);
                maps[3 * map_index + 2] = static_cast<T>(target);
              }
              ++map_index;
              start = s + 1;
              target = target_sample_length(short_seq_ratio, max_seq_length, rng);
              seq_len = 0;
              num_sent = 0;
            }
          }
        }
        // An epoch that yields nothing would be repeated up to num_epochs (often 2^31)
        // times: that is the hang Megatron users hit, so stop here instead.
        if (epoch == 0 && map_index == 0) break;
      }
      if (!fill) {
        num_samples = static_cast<int64_t>(map_index);
        if (num_samples == 0) break;
        maps = new T[3 * map_index];
      }
    }
  }
  if (num_samples == 0) {
    throw std::invalid_argument(
        "build_mapping: no sample can be built: every document has fewer than " +
        std::to_string(min_num_sent) + " sentences or a sentence over " +
        std::to_string(kLongSentenceLen) + " tokens");
  }
  shuffle_rows(maps, num_samples, 3, static_cast<int64_t>(seed) + 1);
  if (verbose) {
    py::print(" > built BERT/T5 samples mapping with", num_samples, "samples");
  }
  return rows_to_array(maps, num_samples, 3);
}

py::array build_mapping(const py::array_t<int64_t> &docs, const py::array_t<int32_t> &sizes,
                        int32_t num_epochs, uint64_t max_num_samples, int32_t max_seq_length,
                        double short_seq_prob, int32_t seed, bool verbose, int32_t min_num_sent) {
  if (num_epochs <= 0 || max_seq_length <= 1 || short_seq_prob < 0.0 || short_seq_prob > 1.0 ||
      seed <= 0 || min_num_sent < 1) {
    throw std::invalid_argument(
        "build_mapping: need num_epochs > 0, max_seq_length > 1, 0 <= short_seq_prob <= 1, "
        "seed > 0 and min_num_sent >= 1");
  }
  if (static_cast<uint64_t>(sizes.shape(0)) > std::numeric_limits<uint32_t>::max()) {
    return build_mapping_impl<uint64_t>(docs, sizes, num_epochs, max_num_samples, max_seq_length,
                                        short_seq_prob, seed, verbose, min_num_sent);
  }
  return build_mapping_impl<uint32_t>(docs, sizes, num_epochs, max_num_samples, max_seq_length,
                                      short_seq_prob, seed, verbose, min_num_sent);
}

// ICT/REALM: rows [first_sentence, end_sentence, doc, block_id]. The title shares the
// token budget of its block, so the target is max_seq_length - title length.
template <typename T>
py::array build_blocks_mapping_impl(const py::array_t<int64_t> &docs_,
                                    const py::array_t<int32_t> &sizes_,
                                    const py::array_t<int32_t> &titles_sizes_, int32_t num_epochs,
                                    uint64_t max_num_samples, int32_t max_seq_length,
                                    int32_t seed, bool verbose, bool use_one_sent_blocks) {
  auto docs = docs_.unchecked<1>();
  auto sizes = sizes_.unchecked<1>();
  auto titles_sizes = titles_sizes_.unchecked<1>();
  check_sentence_bounds(docs, sizes.shape(0), "build_blocks_mapping");
  const int64_t num_docs = docs.shape(0) - 1;
  if (titles_sizes.shape(0) < num_docs) {
    throw std::invalid_argument("build_blocks_mapping: titles_sizes holds " +
                                std::to_string(titles_sizes.shape(0)) + " titles for " +
                                std::to_string(num_docs) + " documents");
  }
  const int64_t min_num_sent = use_one_sent_blocks ? 1 : 2;
  int64_t num_samples = -1;
  T *maps = nullptr;
  {
    py::gil_scoped_release release;
    for (int pass = 0; pass < 2; ++pass) {
      const bool fill = pass == 1;
      uint64_t map_index = 0;
      for (int32_t epoch = 0; epoch < num_epochs; ++epoch) {
        if (map_index >= max_num_samples) break;
        int64_t block_id = 0;  // unique within an epoch only, as in Megatron
        for (int64_t doc = 0; doc < num_docs; ++doc) {
          const int64_t first = docs(doc);
          const int64_t last = docs(doc + 1);
          const int64_t target = static_cast<int64_t>(max_seq_length) - titles_sizes(doc);
          int64_t remaining = last - first;
          if (remaining < min_num_sent || has_long_sentence(sizes, first, last)) continue;
          int64_t start = first;
          int64_t seq_len = 0;
          int64_t num_sent = 0;
          for (int64_t s = first; s < last; ++s) {
            seq_len += sizes(s);
            ++num_sent;
            --remaining;
            if ((seq_len >= target && remaining >= min_num_sent && num_sent >= min_num_sent) ||
                remaining == 0) {
              if (fill) {
                maps[4 * map_index] = static_cast<T>(start);
                maps[4 * map_index + 1] = static_cast<T>(s + 1);
                maps[4 * map_index + 2] = static_cast<T>(doc);
                maps[4 * map_index + 3] = static_cast<T>(block_id);
              }
              ++map_index;
              ++block_id;
              start = s + 1;
              seq_len = 0;
              num_sent = 0;
            }
          }
        }
        if (epoch == 0 && map_index == 0) break;
      }
      if (!fill) {
        num_samples = static_cast<int64_t>(map_index);
        if (num_samples == 0) break;
        maps = new T[4 * map_index];
      }
    }
  }
  if (num_samples == 0) {
    throw std::invalid_argument(
        "build_blocks_mapping: no block can be built: every document has fewer than " +
        std::to_string(min_num_sent) + " sentences or a sentence over " +
        std::to_string(kLongSentenceLen) +
        " tokens (one-sentence documents need use_one_sent_blocks / --use-one-sent-docs)");
  }
  shuffle_rows(maps, num_samples, 4, static_cast<int64_t>(seed) + 1);
  if (verbose) {
    py::print(" > built ICT blocks mapping with", num_samples, "blocks");
  }
  return rows_to_array(maps, num_samples, 4);
}

py::array build_blocks_mapping(const py::array_t<int64_t> &docs, const py::array_t<int32_t> &sizes,
                               const py::array_t<int32_t> &titles_sizes, int32_t num_epochs,
                               uint64_t max_num_samples, int32_t max_seq_length, int32_t seed,
                               bool verbose, bool use_one_sent_blocks) {
  if (num_epochs <= 0 || max_seq_length <= 1 || seed <= 0) {
    throw std::invalid_argument(
        "build_blocks_mapping: need num_epochs > 0, max_seq_length > 1 and seed > 0");
  }
  if (static_cast<uint64_t>(sizes.shape(0)) > std::numeric_limits<uint32_t>::max()) {
    return build_blocks_mapping_impl<uint64_t>(docs, sizes, titles_sizes, num_epochs,
                                               max_num_samples, max_seq_length, seed, verbose,
                                               use_one_sent_blocks);
  }
  return build_blocks_mapping_impl<uint32_t>(docs, sizes, titles_sizes, num_epochs,
                                             max_num_samples, max_seq_length, seed, verbose,
                                             use_one_sent_blocks);
}

}  // namespace

PYBIND11_MODULE(helpers_cpp, m) {
  m.doc() = "C++ index builders for Megatron-style datasets";
  // Outputs are written in place, so a converted copy would silently lose the result.
  m.def("build_blending_indices", &build_blending_indices, py::arg("dataset_index").noconvert(),
        py::arg("dataset_sample_index").noconvert(), py::arg("weights"), py::arg("num_datasets"),
        py::arg("size"), py::arg("verbose") = false);
  // No implicit conversion: the Python wrapper fixes dtypes so a huge array is never
  // copied silently here.
  m.def("build_sample_idx", &build_sample_idx<int32_t>, py::arg("sizes").noconvert(),
        py::arg("doc_idx").noconvert(), py::arg("seq_length"), py::arg("num_epochs"),
        py::arg("tokens_per_epoch"));
  m.def("build_sample_idx", &build_sample_idx<int64_t>, py::arg("sizes").noconvert(),
        py::arg("doc_idx").noconvert(), py::arg("seq_length"), py::arg("num_epochs"),
        py::arg("tokens_per_epoch"));
  m.def("build_mapping", &build_mapping, py::arg("docs").noconvert(),
        py::arg("sizes").noconvert(), py::arg("num_epochs"), py::arg("max_num_samples"),
        py::arg("max_seq_length"), py::arg("short_seq_prob"), py::arg("seed"),
        py::arg("verbose"), py::arg("min_num_sent"));
  m.def("build_blocks_mapping", &build_blocks_mapping, py::arg("docs").noconvert(),
        py::arg("sizes").noconvert(), py::arg("titles_sizes").noconvert(),
        py::arg("num_epochs"), py::arg("max_num_samples"), py::arg("max_seq_length"),
        py::arg("seed"), py::arg("verbose"), py::arg("use_one_sent_blocks"));
}
