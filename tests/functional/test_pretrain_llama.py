"""examples/pretrain_llama.sh trains and saves a Llama-style GPT on 2 CPU ranks (PP2: the untied
output layer keeps both stages out of the embedding all-reduce), and the trained checkpoint exports
to transformers' LlamaForCausalLM with the same logits; (slow) it resumes at TP2."""
import argparse

import pytest
import torch

from test_examples_pretrain import _check_trained, _run_example
from test_training_lib import demo_data, parse_iterations

from megatron.config_from_args import core_transformer_config_from_args
from megatron.checkpoint_tools.reshard import SourceCheckpoint, merge_shards
from megatron.core.models import GPTModel
from tools.convert_hf_checkpoint import main as convert

TINY_LLAMA = {"GPUS_PER_NODE": "2", "TP": "1", "PP": "2", "NUM_LAYERS": "2", "HIDDEN_SIZE": "32", "NUM_HEADS": "4",
              "NUM_QUERY_GROUPS": "2", "FFN_HIDDEN_SIZE": "48", "ROTARY_BASE": "10000"}


def _train(tmp_path, **extra):
    data = demo_data()
    env = {**TINY_LLAMA, "DATA_PATH": f"{data}/gpt_text_document", "CHECKPOINT_PATH": str(tmp_path / "llama"),
           "TOKENIZER_ARGS": f"--tokenizer-type GPT2BPETokenizer --vocab-file {data}/gpt2/vocab.json "
                             f"--merge-file {data}/gpt2/merges.txt", **extra}
    result = _run_example("pretrain_llama.sh", env)
    _check_trained(result, tmp_path / "llama")
    return env


@pytest.mark.slow
def test_pretrain_llama_example_resumes_at_tp2(tmp_path):
    env = _train(tmp_path, TP="2", PP="1")  # query groups split over TP, sequence parallel
    resumed = _run_example("pretrain_llama.sh", {**env, "TRAIN_ITERS": "6", "LOAD_ARGS": "--override-lr-scheduler"})
    parsed = parse_iterations(resumed.stdout)
    assert sorted(parsed) == [5, 6]


def test_pretrain_llama_example_trains_and_exports(tmp_path):
    _train(tmp_path)
    transformers = pytest.importorskip("transformers")
    assert convert(["--direction", "to-hf", "--model-type", "llama", "--load", str(tmp_path / "llama"),
                    "--save", str(tmp_path / "hf")]) == 0
    source = SourceCheckpoint(str(tmp_path / "llama"))
    saved = argparse.Namespace(**{**vars(source.args), "sequence_parallel": False, "recompute_granularity": None})
    ours = GPTModel(core_transformer_config_from_args(saved), saved.padded_vocab_size, saved.max_position_embeddings,
                    parallel_output=False)
    ours.load_state_dict(merge_shards(source), strict=True)
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours.eval()(tokens), rtol=1e-5, atol=1e-5)
