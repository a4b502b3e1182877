"""TFRecord framing and CRCs, Example encoding against protobuf, DALI index files, and the
index-sharded MLPerf dataset: every record once per epoch over data-parallel ranks, resumable."""
import struct

import numpy as np
import pytest

from megatron.core.datasets import tfrecord
from megatron.core.datasets.samplers import MegatronPretrainingSampler
from megatron.core.datasets.tfrecord_dataset import MLPerfBertTFRecordDataset, shuffle_buffer_order
from tools import make_idx

SEQ, PREDS = 16, 4


def mlperf_features(i):
    ids = np.zeros(SEQ, dtype=np.int64)
    n = 6 + i % 8
    ids[:n] = 1000 + i  # the record number is recoverable from the tokens
    positions = np.array([1, 3, 0, 0]) if i % 2 else np.array([2, 0, 0, 0])
    weights = np.array([1.0, 1.0, 0.0, 0.0] if i % 2 else [1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    return {"input_ids": ids, "input_mask": (ids > 0).astype(np.int64), "segment_ids": np.zeros(SEQ, np.int64),
            "masked_lm_positions": positions, "masked_lm_ids": np.array([7, 8, 0, 0]) * (weights > 0),
            "masked_lm_weights": weights, "next_sentence_labels": np.array([i % 2])}


def write_files(tmp_path, counts):
    files, i = [], 0
    for k, count in enumerate(counts):
        path = str(tmp_path / f"part-{k:05d}")
        with tfrecord.TFRecordWriter(path) as w:
            for _ in range(count):
                w.write(tfrecord.encode_example(mlperf_features(i)))
                i += 1
        files.append(path)
    return files


def test_framing_and_masked_crc(tmp_path):
    import crc32c

    payload = b"hello tfrecord"
    framed = tfrecord.frame_record(payload)
    (length,) = struct.unpack_from("<Q", framed)
    assert length == len(payload) and len(framed) == len(payload) + 16

    def masked(data):
        c = crc32c.crc32c(data)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    assert struct.unpack_from("<I", framed, 8)[0] == masked(framed[:8])
    assert struct.unpack_from("<I", framed, 12 + len(payload))[0] == masked(payload)
    path = tmp_path / "f"
    payloads = [b"", b"x" * 300, payload]
    with tfrecord.TFRecordWriter(str(path)) as w:
        for p in payloads:
            w.write(p)
    assert tfrecord.read_records(str(path)) == payloads
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(tfrecord.TFRecordError, match="bad data checksum of the record at byte offset 332"):
        tfrecord.read_records(str(path))


def test_example_encoding_matches_protobuf():
    features = mlperf_features(3)
    features["negative"] = np.array([-1, 2 ** 40])
    payload = tfrecord.encode_example(features)
    decoded = tfrecord.decode_example(payload)
    assert sorted(decoded) == sorted(features)  # a protobuf map keeps no order
    for name, values in features.items():
        np.testing.assert_array_equal(decoded[name], values)
        assert decoded[name].dtype == (np.float32 if name == "masked_lm_weights" else np.int64)
    # protobuf's own serialization of the same message decodes to the same features.
    message = tfrecord.example_message_class()()
    message.ParseFromString(payload)
    again = tfrecord.decode_example(message.SerializeToString(deterministic=True))
    assert {k: v.tolist() for k, v in again.items()} == {k: v.tolist() for k, v in decoded.items()}
    with pytest.raises(tfrecord.TFRecordError, match="where: not a tf.train.Example"):
        tfrecord.decode_example(b"\xff\xff\xff", "where")


def test_index_files_and_truncation(tmp_path, capsys):
    files = write_files(tmp_path, [5, 3])
    offsets = [(o, s) for o, s, _ in tfrecord.scan_records(files[0])]
    np.testing.assert_array_equal(tfrecord.build_index(files[0]), np.array(offsets))
    assert make_idx.main([f"--tfrecord_train={tmp_path}", f"--tfrecord_output={tmp_path / 'idx'}"]) == 0
    lines = (tmp_path / "idx" / "train" / "part-00000.idx").read_text().splitlines()
    assert lines == [f"{o} {s}" for o, s in offsets]
    np.testing.assert_array_equal(tfrecord.read_index(str(tmp_path / "idx/train/part-00000.idx"), files[0]),
                                  np.array(offsets))
    with pytest.raises(tfrecord.TFRecordError, match="does not index"):
        tfrecord.read_index(str(tmp_path / "idx/train/part-00000.idx"), files[1])
    truncated = tmp_path / "bad" / "part-cut"
    truncated.parent.mkdir()
    truncated.write_bytes(open(files[0], "rb").read()[:-5])
    capsys.readouterr()
    assert make_idx.main([f"--tfrecord_train={truncated.parent}", f"--output_idx={tmp_path / 'idx2'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {truncated}: truncated record at byte offset {offsets[-1][0]} " \
                  f"(needs {offsets[-1][1]} bytes, {offsets[-1][1] - 5} left)"


def test_shuffle_buffer_order():
    for n, b in ((10, 1), (10, 3), (100, 1000), (1, 5)):
        order = shuffle_buffer_order(n, b, seed=(1, 2))
        assert sorted(order.tolist()) == list(range(n))
    assert shuffle_buffer_order(10, 1, 0).tolist() == list(range(10))
    assert shuffle_buffer_order(50, 8, 0).tolist() != list(range(50))
    # A buffer of b items cannot emit item k before position k - b + 1.
    order = shuffle_buffer_order(200, 8, 3)
    assert all(pos >= item - 7 for pos, item in enumerate(order.tolist()))


def record_number(sample):
    return int(sample["text"][0]) - 1000


@pytest.mark.parametrize("shuffle", [False, True])
def test_dp2_covers_every_record_once_per_epoch_and_resumes(tmp_path, shuffle):
    files = write_files(tmp_path, [7, 4])  # 11 records: shards of 5 and 6
    mbs, dp, samples = 2, 2, 48
    ds = MLPerfBertTFRecordDataset(files, samples, SEQ, mbs, dp, seed=5, shuffle=shuffle, shuffle_buffer=4,
                                   index_dir=str(tmp_path / "idx"))
    assert ds.num_records == 11 and ds.max_predictions_per_seq == PREDS
    assert (tmp_path / "idx" / "part-00000.idx").exists()  # built on the fly, then reused
    streams = {}
    for rank in range(dp):
        sampler = MegatronPretrainingSampler(samples, 0, mbs, rank, dp)
        streams[rank] = [record_number(ds[i]) for batch in sampler for i in batch]
    assert [ds.shard_bounds[r] for r in range(dp)] == [(0, 5), (5, 11)]
    seen = []
    for rank, (start, stop) in enumerate(ds.shard_bounds):
        size = stop - start
        for epoch in range(len(streams[rank]) // size):
            chunk = streams[rank][epoch * size:(epoch + 1) * size]
            assert sorted(chunk) == list(range(start, stop))  # its own range, each record once
        seen += streams[rank][:size]
    assert sorted(seen) == list(range(11))  # together: every record exactly once
    if shuffle:
        assert streams[1][:6] != streams[1][6:12]  # a fresh order each epoch
    # Resuming from consumed_samples continues the same streams.
    consumed = 12
    for rank in range(dp):
        sampler = MegatronPretrainingSampler(samples, consumed, mbs, rank, dp)
        resumed = [record_number(ds[i]) for batch in sampler for i in batch]
        assert resumed == streams[rank][consumed // dp:]


def test_sample_layout_and_length_check(tmp_path):
    files = write_files(tmp_path, [3])
    ds = MLPerfBertTFRecordDataset(files, 3, SEQ, 1, 1, seed=1, shuffle=False)
    sample = ds[1]
    assert sample["labels"].tolist()[:5] == [-1, 7, -1, 8, -1] and sample["loss_mask"].sum() == 2
    assert sample["is_random"] == 1 and sample["padding_mask"].sum() == 7
    assert ds[0]["labels"].tolist()[:3] == [-1, -1, 7] and ds[0]["loss_mask"].sum() == 1
    with pytest.raises(tfrecord.TFRecordError, match=r"part-00000: record at byte offset 0: 16 tokens, but "
                                                     r"--seq-length is 32"):
        MLPerfBertTFRecordDataset(files, 3, 32, 1, 1, seed=1, shuffle=False)


def test_dataloader_workers_read_what_the_main_process_reads(tmp_path):
    from megatron.core.datasets.samplers import build_pretraining_data_loader

    files = write_files(tmp_path, [40, 25])
    ds = MLPerfBertTFRecordDataset(files, 64, SEQ, 4, 1, seed=2, shuffle=True, shuffle_buffer=8)
    direct = [record_number(ds[i]) for i in range(64)]  # opens descriptors before the workers fork
    loader = build_pretraining_data_loader(ds, 0, 4, 0, 1, num_workers=2)
    via_workers = [int(t[0]) - 1000 for batch in loader for t in batch["text"]]
    assert via_workers == direct
