"""Global variables of the training layer, and the Timers."""
import time

import pytest

from megatron import global_vars
from megatron.arguments import parse_args
from megatron.timers import Timers

BASE = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 16 "
        "--micro-batch-size 2 --vocab-size 100")


@pytest.fixture(autouse=True)
def _reset_globals():
    global_vars.unset_global_variables()
    yield
    global_vars.unset_global_variables()


def test_getters_before_set_fail():
    with pytest.raises(RuntimeError, match="args is not initialized"):
        global_vars.get_args()
    with pytest.raises(RuntimeError, match="num microbatches calculator is not initialized"):
        global_vars.get_num_microbatches()


def test_set_global_variables_without_tokenizer_files(capsys):
    args = parse_args(argv=(BASE + " --global-batch-size 8 --train-samples 100 --lr 1e-3 "
                                   "--rampup-batch-size 2 2 40").split())
    global_vars.set_global_variables(args)
    assert global_vars.get_args() is args
    assert global_vars._GLOBAL_TOKENIZER is None  # --vocab-size: no tokenizer files to build from
    assert global_vars.get_current_global_batch_size() == 2 and global_vars.get_num_microbatches() == 1
    global_vars.update_num_microbatches(40)
    assert global_vars.get_current_global_batch_size() == 8 and global_vars.get_num_microbatches() == 4
    assert global_vars.get_tensorboard_writer() is None  # no --tensorboard-dir
    assert isinstance(global_vars.get_timers(), Timers)


def test_tokenizer_is_built_from_flags(tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    args = parse_args(argv=(BASE.replace(" --vocab-size 100", "") +
                            f" --tokenizer-type BertWordPieceLowerCase --vocab-file {vocab}").split())
    global_vars.set_global_variables(args)
    assert global_vars.get_tokenizer().tokenize("hello world") == [5, 6]
    assert args.padded_vocab_size == 128


def test_tensorboard_writer_names_missing_package(monkeypatch, tmp_path, capsys):
    import builtins

    args = parse_args(argv=BASE.split())
    args.tensorboard_dir = str(tmp_path)  # as if the package check at parse time had passed
    global_vars.set_global_variables(args)
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(RuntimeError, match=r"--tensorboard-dir .* needs the tensorboard package.*pip install "
                                           "tensorboard"):
        global_vars.get_tensorboard_writer()


def test_timers_levels_and_log(capsys):
    timers = Timers(log_level=1)
    timers("iteration").start()
    time.sleep(0.01)
    timers("iteration").stop()
    timers("comm", log_level=2).start()  # above the level: a no-op stand-in
    timers("comm", log_level=2).stop()
    assert "comm" not in timers.timers
    line = timers.log(["iteration", "comm"], normalizer=1.0)
    assert line.startswith("time (ms) | iteration: ") and float(line.split(": ")[1]) >= 10.0
    assert timers("iteration").elapsed() == 0.0  # log resets by default
    timers("iteration").start()
    with pytest.raises(RuntimeError, match="timer 'iteration' has already been started"):
        timers("iteration").start()
    assert timers("iteration").elapsed(reset=False) >= 0.0  # a running timer can be read
    timers("iteration").stop()

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, name, value, step):
            self.scalars.append((name, step))

    writer = Writer()
    timers.write(["iteration"], writer, 7)
    assert writer.scalars == [("iteration-time", 7)]
    with pytest.raises(ValueError, match="--timing-log-level 3 must be 0, 1 or 2"):
        Timers(3)
