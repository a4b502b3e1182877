// MLPerf BERT pretraining examples (Google's create_pretraining_data.py algorithm) in C++.
//
// Record-for-record equality with the Python reference needs the very same draws from
// Python's random.Random: this file replays CPython's Mersenne Twister from a state taken
// with Random.getstate(), and draws exactly as CPython 3.x does (random() from two 32-bit
// words, randint/shuffle through getrandbits-based _randbelow, which for n == 1 still
// consumes a word). The plain Python algorithm is megatron/preprocessing/mlperf_bert/reference.py;
// tests compare the two record for record and the final generator states for equality.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------- CPython's MT19937 --------
class PyMersenneTwister {
 public:
  static constexpr int N = 624;
  static constexpr int M = 397;

  explicit PyMersenneTwister(const std::vector<uint64_t>& state) {
    if (state.size() != N + 1) throw std::invalid_argument("Mersenne Twister state must hold 625 integers");
    for (int i = 0; i < N; ++i) mt_[i] = static_cast<uint32_t>(state[i]);
    index_ = static_cast<int>(state[N]);
    if (index_ < 0 || index_ > N) throw std::invalid_argument("Mersenne Twister state index out of range");
  }

  std::vector<uint64_t> state() const {
    std::vector<uint64_t> out(mt_, mt_ + N);
    out.push_back(static_cast<uint64_t>(index_));
    return out;
  }

  uint32_t genrand() {
    if (index_ >= N) refill();
    uint32_t y = mt_[index_++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
  }

  // random.random(): 53 bits from two words.
  double random() {
    uint32_t a = genrand() >> 5, b = genrand() >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
  }

  // random.getrandbits(k) for 0 < k <= 64: words filled least significant first.
  uint64_t getrandbits(int k) {
    if (k <= 32) return genrand() >> (32 - k);
    uint64_t low = genrand();
    uint64_t high = genrand() >> (64 - k);
    return low | (high << 32);
  }

  // Random._randbelow_with_getrandbits(n), n >= 1.
  uint64_t randbelow(uint64_t n) {
    int k = 64 - __builtin_clzll(n);  // n.bit_length()
    uint64_t r = getrandbits(k);
    while (r >= n) r = getrandbits(k);
    return r;
  }

  int64_t randint(int64_t a, int64_t b) {
    if (b < a) throw std::invalid_argument("empty range for randint(" + std::to_string(a) + ", " + std::to_string(b) + ")");
    return a + static_cast<int64_t>(randbelow(static_cast<uint64_t>(b - a + 1)));
  }

  template <typename T>
  void shuffle(std::vector<T>& x) {
    for (size_t i = x.size(); i-- > 1;) {
      size_t j = static_cast<size_t>(randbelow(i + 1));
      std::swap(x[i], x[j]);
    }
  }

 private:
  void refill() {
    static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
    const uint32_t upper = 0x80000000U, lower = 0x7fffffffU;
    int kk = 0;
    uint32_t y;
    for (; kk < N - M; ++kk) {
      y = (mt_[kk] & upper) | (mt_[kk + 1] & lower);
      mt_[kk] = mt_[kk + M] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    for (; kk < N - 1; ++kk) {
      y = (mt_[kk] & upper) | (mt_[kk + 1] & lower);
      mt_[kk] = mt_[kk + (M - N)] ^ (y >> 1) ^ mag01[y & 0x1U];
    }
    y = (mt_[N - 1] & upper) | (mt_[0] & lower);
    mt_[N - 1] = mt_[M - 1] ^ (y >> 1) ^ mag01[y & 0x1U];
    index_ = 0;
  }

  uint32_t mt_[N];
  int index_;
};

// ---------------------------------------------------------------- CRC-32C, TFRecord framing --
uint32_t crc_table[8][256];

void init_crc_table() {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78U : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (int t = 1; t < 8; ++t) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t crc32c(const uint8_t* p, size_t n) {
  uint32_t c = 0xffffffffU;
  while (n >= 8) {  // slicing by 8 (little-endian hosts)
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= c;
    c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
        crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
        crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
  return c ^ 0xffffffffU;
}

uint32_t masked_crc(const uint8_t* p, size_t n) {
  uint32_t c = crc32c(p, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8U;
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void append_framed(std::string& out, const std::string& payload) {
  std::string len;
  put_le(len, payload.size(), 8);
  out += len;
  put_le(out, masked_crc(reinterpret_cast<const uint8_t*>(len.data()), 8), 4);
  out += payload;
  put_le(out, masked_crc(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()), 4);
}

// ---------------------------------------------------------------- tf.train.Example wire format --
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_len_field(std::string& out, int field, const std::string& body) {
  out.push_back(static_cast<char>((field << 3) | 2));
  put_varint(out, body.size());
  out += body;
}

// One map entry of Features: key (1) -> Feature (2) holding Int64List (3) or FloatList (2).
void put_feature(std::string& features, const char* key, const std::string& feature) {
  std::string entry;
  put_len_field(entry, 1, std::string(key));
  put_len_field(entry, 2, feature);
  put_len_field(features, 1, entry);
}

size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) v >>= 7, ++n;
  return n;
}

// A Features map entry written straight into `out` (sizes computed first, no temporaries):
// entry = key (1) + Feature (2); Feature = Int64List (3) holding packed values (1).
void append_int64_entry(std::string& out, const char* key, const int32_t* values, size_t n, size_t padded) {
  size_t packed = padded - n;  // zero padding: one byte each
  for (size_t i = 0; i < n; ++i) packed += varint_size(static_cast<uint64_t>(static_cast<int64_t>(values[i])));
  const size_t key_len = std::strlen(key);
  const size_t list = 1 + varint_size(packed) + packed;
  const size_t feature = 1 + varint_size(list) + list;
  const size_t entry = 1 + varint_size(key_len) + key_len + 1 + varint_size(feature) + feature;
  out.push_back(0x0a);
  put_varint(out, entry);
  out.push_back(0x0a);
  put_varint(out, key_len);
  out.append(key, key_len);
  out.push_back(0x12);
  put_varint(out, feature);
  out.push_back(0x1a);
  put_varint(out, list);
  out.push_back(0x0a);
  put_varint(out, packed);
  for (size_t i = 0; i < n; ++i) put_varint(out, static_cast<uint64_t>(static_cast<int64_t>(values[i])));
  out.append(padded - n, '\0');
}

std::string float_feature(const std::vector<float>& values) {
  std::string packed(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  std::string list, feature;
  put_len_field(list, 1, packed);
  put_len_field(feature, 2, list);
  return feature;
}

// ---------------------------------------------------------------- the algorithm -------------
struct Params {
  int64_t max_seq_length, max_predictions_per_seq, vocab_size, cls_id, sep_id, mask_id;
  int64_t dupe_factor;
  double short_seq_prob, masked_lm_prob;
  bool do_whole_word_mask;
};

class InstanceBuilder {
 public:
  InstanceBuilder(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                  py::array_t<int64_t, py::array::c_style | py::array::forcecast> sentence_offsets,
                  py::array_t<int64_t, py::array::c_style | py::array::forcecast> document_offsets,
                  py::array_t<bool, py::array::c_style | py::array::forcecast> is_continuation,
                  std::vector<uint64_t> rng_state, Params p)
      : rng_(rng_state), p_(p) {
    tokens_.assign(tokens.data(), tokens.data() + tokens.size());
    sent_off_.assign(sentence_offsets.data(), sentence_offsets.data() + sentence_offsets.size());
    doc_off_.assign(document_offsets.data(), document_offsets.data() + document_offsets.size());
    continuation_.assign(is_continuation.data(), is_continuation.data() + is_continuation.size());
    if (p_.max_seq_length < 5) throw std::invalid_argument("max_seq_length must be >= 5");
  }

  // Documents shuffled, dupe_factor passes of instances, instances shuffled: the reference's
  // create_training_instances after its documents are read.
  void build() {
    int64_t n_docs = static_cast<int64_t>(doc_off_.size()) - 1;
    perm_.resize(n_docs);
    for (int64_t d = 0; d < n_docs; ++d) perm_[d] = d;
    rng_.shuffle(perm_);
    for (int64_t pass = 0; pass < p_.dupe_factor; ++pass)
      for (int64_t k = 0; k < n_docs; ++k) from_document(k);
    order_.resize(labels_.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
    rng_.shuffle(order_);
    // The token lists are no longer needed once instances exist.
    std::vector<int32_t>().swap(tokens_);
    std::vector<int64_t>().swap(sent_off_);
  }

  size_t size() const { return order_.size(); }
  std::vector<uint64_t> rng_state() const { return rng_.state(); }

  // Framed TFRecords of the shuffled instances [start, stop), instance i going to writer
  // i % num_writers (the reference's round robin), one bytes object per writer.
  std::vector<py::bytes> serialize(int64_t start, int64_t stop, int64_t num_writers) const {
    std::vector<std::string> out(num_writers);
    {
      py::gil_scoped_release release;
      for (int64_t i = start; i < stop; ++i) append_framed(out[i % num_writers], example(order_[i]));
    }
    std::vector<py::bytes> result;
    for (auto& s : out) result.emplace_back(s);
    return result;
  }

  // (input_ids, segment_a_length, masked_lm_positions, masked_lm_ids, is_random_next) of the
  // i-th shuffled instance, unpadded: for tests and inspection.
  py::tuple instance(int64_t i) const {
    int64_t k = order_.at(i);
    std::vector<int32_t> ids(inst_tokens_.begin() + tok_off_[k], inst_tokens_.begin() + tok_off_[k + 1]);
    std::vector<int32_t> pos(masked_pos_.begin() + mask_off_[k], masked_pos_.begin() + mask_off_[k + 1]);
    std::vector<int32_t> lab(masked_ids_.begin() + mask_off_[k], masked_ids_.begin() + mask_off_[k + 1]);
    return py::make_tuple(ids, len_a_[k], pos, lab, static_cast<int>(labels_[k]));
  }

 private:
  int64_t sentence_length(int64_t s) const { return sent_off_[s + 1] - sent_off_[s]; }

  void extend(std::vector<int32_t>& v, int64_t s) const {
    v.insert(v.end(), tokens_.begin() + sent_off_[s], tokens_.begin() + sent_off_[s + 1]);
  }

  void from_document(int64_t k) {
    const int64_t n_docs = static_cast<int64_t>(perm_.size());
    const int64_t first = doc_off_[perm_[k]], doc_len = doc_off_[perm_[k] + 1] - first;
    const int64_t max_num_tokens = p_.max_seq_length - 3;
    int64_t target = max_num_tokens;
    if (rng_.random() < p_.short_seq_prob) target = rng_.randint(2, max_num_tokens);
    std::vector<int64_t> chunk;
    int64_t current_length = 0;
    for (int64_t i = 0; i < doc_len; ++i) {
      chunk.push_back(first + i);
      current_length += sentence_length(first + i);
      if (i != doc_len - 1 && current_length < target) continue;
      const int64_t chunk_size = static_cast<int64_t>(chunk.size());
      int64_t a_end = 1;
      if (chunk_size >= 2) a_end = rng_.randint(1, chunk_size - 1);
      std::vector<int32_t> a, b;
      for (int64_t j = 0; j < a_end; ++j) extend(a, chunk[j]);
      bool is_random = false;
      if (chunk_size == 1 || rng_.random() < 0.5) {
        is_random = true;
        const int64_t target_b = target - static_cast<int64_t>(a.size());
        int64_t r = 0;
        for (int t = 0; t < 10; ++t) {
          r = rng_.randint(0, n_docs - 1);
          if (r != k) break;
        }
        const int64_t r_first = doc_off_[perm_[r]], r_len = doc_off_[perm_[r] + 1] - r_first;
        const int64_t r_start = rng_.randint(0, r_len - 1);
        for (int64_t j = r_start; j < r_len; ++j) {
          extend(b, r_first + j);
          if (static_cast<int64_t>(b.size()) >= target_b) break;
        }
        i -= chunk_size - a_end;  // the unused segments are "put back"
      } else {
        for (int64_t j = a_end; j < chunk_size; ++j) extend(b, chunk[j]);
      }
      add_instance(a, b, max_num_tokens, is_random);
      chunk.clear();
      current_length = 0;
    }
  }

  void add_instance(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int64_t max_num_tokens,
                    bool is_random) {
    // truncate_seq_pair: trim the longer segment from a random end.
    size_t a_lo = 0, a_hi = a.size(), b_lo = 0, b_hi = b.size();
    while (static_cast<int64_t>((a_hi - a_lo) + (b_hi - b_lo)) > max_num_tokens) {
      bool trim_a = (a_hi - a_lo) > (b_hi - b_lo);
      size_t& lo = trim_a ? a_lo : b_lo;
      size_t& hi = trim_a ? a_hi : b_hi;
      if (rng_.random() < 0.5)
        ++lo;
      else
        --hi;
    }
    std::vector<int32_t> tokens;
    tokens.reserve((a_hi - a_lo) + (b_hi - b_lo) + 3);
    tokens.push_back(static_cast<int32_t>(p_.cls_id));
    tokens.insert(tokens.end(), a.begin() + a_lo, a.begin() + a_hi);
    tokens.push_back(static_cast<int32_t>(p_.sep_id));
    tokens.insert(tokens.end(), b.begin() + b_lo, b.begin() + b_hi);
    tokens.push_back(static_cast<int32_t>(p_.sep_id));
    const int32_t len_a = static_cast<int32_t>(a_hi - a_lo);

    // create_masked_lm_predictions: candidate positions (word groups with whole-word masking).
    std::vector<int32_t> output = tokens;
    std::vector<std::pair<int32_t, int32_t>> masked;  // (position, original id)
    const int64_t num_to_predict = std::min<int64_t>(
        p_.max_predictions_per_seq,
        std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(static_cast<double>(tokens.size()) * p_.masked_lm_prob))));
    if (!p_.do_whole_word_mask) {
      // Single positions: the same draws as the general case below, without a vector per candidate.
      cand_flat_.clear();
      for (size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] != p_.cls_id && tokens[i] != p_.sep_id) cand_flat_.push_back(static_cast<int32_t>(i));
      rng_.shuffle(cand_flat_);
      for (int32_t index : cand_flat_) {
        if (static_cast<int64_t>(masked.size()) >= num_to_predict) break;
        output[index] = replacement(tokens[index]);
        masked.emplace_back(index, tokens[index]);
      }
    } else {
      mask_whole_words(tokens, num_to_predict, output, masked);
    }
    std::sort(masked.begin(), masked.end());
    store(output, masked, len_a, is_random);
  }

  int32_t replacement(int32_t original) {
    if (rng_.random() < 0.8) return static_cast<int32_t>(p_.mask_id);
    if (rng_.random() < 0.5) return original;
    return static_cast<int32_t>(rng_.randint(0, p_.vocab_size - 1));
  }

  void mask_whole_words(const std::vector<int32_t>& tokens, int64_t num_to_predict, std::vector<int32_t>& output,
                        std::vector<std::pair<int32_t, int32_t>>& masked) {
    std::vector<std::vector<int32_t>> cand;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == p_.cls_id || tokens[i] == p_.sep_id) continue;
      if (p_.do_whole_word_mask && !cand.empty() && continuation_[tokens[i]])
        cand.back().push_back(static_cast<int32_t>(i));
      else
        cand.push_back({static_cast<int32_t>(i)});
    }
    rng_.shuffle(cand);
    for (const auto& index_set : cand) {
      if (static_cast<int64_t>(masked.size()) >= num_to_predict) break;
      if (static_cast<int64_t>(masked.size() + index_set.size()) > num_to_predict) continue;
      // Candidate sets are disjoint, so none is ever already covered.
      for (int32_t index : index_set) {
        output[index] = replacement(tokens[index]);
        masked.emplace_back(index, tokens[index]);
      }
    }
  }

  void store(const std::vector<int32_t>& output, const std::vector<std::pair<int32_t, int32_t>>& masked,
             int32_t len_a, bool is_random) {
    if (tok_off_.empty()) tok_off_.push_back(0), mask_off_.push_back(0);
    inst_tokens_.insert(inst_tokens_.end(), output.begin(), output.end());
    tok_off_.push_back(static_cast<int64_t>(inst_tokens_.size()));
    for (const auto& m : masked) masked_pos_.push_back(m.first), masked_ids_.push_back(m.second);
    mask_off_.push_back(static_cast<int64_t>(masked_pos_.size()));
    len_a_.push_back(len_a);
    labels_.push_back(is_random ? 1 : 0);
  }

  std::string example(int64_t k) const {
    const int32_t* ids = inst_tokens_.data() + tok_off_[k];
    const size_t n = static_cast<size_t>(tok_off_[k + 1] - tok_off_[k]);
    const size_t seq = static_cast<size_t>(p_.max_seq_length), preds = static_cast<size_t>(p_.max_predictions_per_seq);
    std::vector<int32_t> ones(n, 1), segments(n, 0);
    for (size_t i = static_cast<size_t>(len_a_[k]) + 2; i < n; ++i) segments[i] = 1;
    const size_t n_masked = static_cast<size_t>(mask_off_[k + 1] - mask_off_[k]);
    std::vector<float> weights(preds, 0.0f);
    for (size_t i = 0; i < n_masked; ++i) weights[i] = 1.0f;
    const int32_t label = labels_[k];
    std::string features;
    features.reserve(8 * seq + 12 * preds + 256);
    append_int64_entry(features, "input_ids", ids, n, seq);
    append_int64_entry(features, "input_mask", ones.data(), n, seq);
    append_int64_entry(features, "segment_ids", segments.data(), n, seq);
    append_int64_entry(features, "masked_lm_positions", masked_pos_.data() + mask_off_[k], n_masked, preds);
    append_int64_entry(features, "masked_lm_ids", masked_ids_.data() + mask_off_[k], n_masked, preds);
    put_feature(features, "masked_lm_weights", float_feature(weights));
    append_int64_entry(features, "next_sentence_labels", &label, 1, 1);
    std::string example_bytes;
    example_bytes.reserve(features.size() + 8);
    put_len_field(example_bytes, 1, features);
    return example_bytes;
  }

  PyMersenneTwister rng_;
  Params p_;
  std::vector<int32_t> tokens_;
  std::vector<int64_t> sent_off_, doc_off_, perm_, order_;
  std::vector<bool> continuation_;
  std::vector<int32_t> cand_flat_;
  // Instances in creation order, flat.
  std::vector<int32_t> inst_tokens_, masked_pos_, masked_ids_, len_a_, labels_;
  std::vector<int64_t> tok_off_, mask_off_;
};

}  // namespace

PYBIND11_MODULE(instances_cpp, m) {
  init_crc_table();
  m.doc() = "MLPerf BERT pretraining instances with CPython's random stream, and TFRecord framing";
  py::class_<Params>(m, "Params")
      .def(py::init<>())
      .def_readwrite("max_seq_length", &Params::max_seq_length)
      .def_readwrite("max_predictions_per_seq", &Params::max_predictions_per_seq)
      .def_readwrite("vocab_size", &Params::vocab_size)
      .def_readwrite("cls_id", &Params::cls_id)
      .def_readwrite("sep_id", &Params::sep_id)
      .def_readwrite("mask_id", &Params::mask_id)
      .def_readwrite("dupe_factor", &Params::dupe_factor)
      .def_readwrite("short_seq_prob", &Params::short_seq_prob)
      .def_readwrite("masked_lm_prob", &Params::masked_lm_prob)
      .def_readwrite("do_whole_word_mask", &Params::do_whole_word_mask);
  py::class_<InstanceBuilder>(m, "InstanceBuilder")
      .def(py::init<py::array_t<int32_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<int64_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<int64_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<bool, py::array::c_style | py::array::forcecast>, std::vector<uint64_t>, Params>())
      .def("build", &InstanceBuilder::build, py::call_guard<py::gil_scoped_release>())
      .def("__len__", &InstanceBuilder::size)
      .def("rng_state", &InstanceBuilder::rng_state)
      .def("serialize", &InstanceBuilder::serialize)
      .def("instance", &InstanceBuilder::instance);
  m.def("masked_crc32c", [](py::bytes data) {
    std::string s = data;
    return masked_crc(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  });
  m.def("random_draws", [](std::vector<uint64_t> state, std::vector<int64_t> bounds) {
    // For tests: randint(0, b) for each b (b < 0: random() scaled to an integer of 2**53).
    PyMersenneTwister rng(state);
    std::vector<int64_t> out;
    for (int64_t b : bounds) out.push_back(b >= 0 ? rng.randint(0, b) : static_cast<int64_t>(rng.random() * 9007199254740992.0));
    return py::make_tuple(out, rng.state());
  });
}
