"""The generation tools' argument checks and prompt-file reading, in-process."""
import argparse

import pytest

from megatron.text_generation.api import RequestError, RequestLimits, parse_request
from megatron.text_generation.cli import add_sampling_args, check_generation_layout, sampling_params_from_args
from megatron.text_generation.sampling import SamplingParams
from tools.generate_samples_gpt import add_generate_args, check_args, read_prompts


def tool_args(*argv):
    args = add_generate_args(argparse.ArgumentParser()).parse_args(list(argv))
    args.pipeline_model_parallel_size, args.load = 1, "ckpt"
    return args


class WordTokenizer:
    def tokenize(self, text):
        return text.split()


@pytest.mark.parametrize("argv, message", [
    (["--num-samples", "2", "--sample-input-file", "p.txt", "--genfile", "o"], "give exactly one of --num-samples N"),
    (["--genfile", "o"], "give exactly one of --num-samples N"),
    (["--num-samples", "-1", "--genfile", "o"], "--num-samples must be >= 0, got -1"),
    (["--num-samples", "2"], "--genfile is required"),
    (["--num-samples", "2", "--genfile", "o", "--top_p", "1.5"], "--top_p must be a number in [0, 1], got 1.5"),
    (["--num-samples", "2", "--genfile", "o", "--temperature", "0"], "--temperature must be a number > 0"),
    (["--num-samples", "2", "--genfile", "o", "--temperature", "inf"], "--temperature must be a number > 0 (and finite)"),
    (["--num-samples", "2", "--genfile", "o", "--top-k", "-2"], "--top_k must be an integer >= 0, got -2"),
    (["--num-samples", "2", "--genfile", "o", "--out-seq-length", "-1"], "--out-seq-length must be >= 0"),
])
def test_generate_samples_flags_are_checked(argv, message):
    with pytest.raises(ValueError) as error:
        check_args(tool_args(*argv))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_layout_and_load_are_checked():
    args = tool_args("--num-samples", "1", "--genfile", "o")
    args.pipeline_model_parallel_size = 2
    check_generation_layout(args)  # pipeline stages generate together
    args.virtual_pipeline_model_parallel_size = 2
    with pytest.raises(ValueError, match="--num-layers-per-virtual-pipeline-stage is not supported by text generation"):
        check_generation_layout(args)
    args.virtual_pipeline_model_parallel_size, args.load = None, None
    with pytest.raises(ValueError, match="--load is required"):
        check_generation_layout(args)


def test_sampling_flags_map_onto_params():
    args = add_sampling_args(argparse.ArgumentParser()).parse_args(["--top_k", "4", "--top-p", "0.5", "--greedy"])
    assert sampling_params_from_args(args) == SamplingParams(temperature=1.0, top_k=4, top_p=0.5, greedy=True)


def test_read_prompts_names_path_and_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("one two\nthree\n", encoding="utf-8")
    assert read_prompts(str(path), 4, WordTokenizer()) == ["one two", "three"]
    path.write_text("one\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: empty prompt"):
        read_prompts(str(path), 4, WordTokenizer())
    path.write_text("ok\na b c d e\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: prompt of 5 tokens is longer than 4"):
        read_prompts(str(path), 4, WordTokenizer())
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: no prompts"):
        read_prompts(str(path), 4, WordTokenizer())
    with pytest.raises(ValueError, match="--sample-input-file .*missing.txt does not exist"):
        read_prompts(str(tmp_path / "missing.txt"), 4, WordTokenizer())


# -- server request validation --------------------------------------------------------------------------------
LIMITS = RequestLimits(max_prompts=2, max_prompt_chars=10, max_tokens_to_generate=8)
DEFAULTS = SamplingParams(temperature=0.7, top_k=3)


def test_a_valid_request_takes_the_server_defaults():
    request = parse_request({"prompts": ["hi"]}, LIMITS, DEFAULTS, 5)
    assert request.prompts == ["hi"] and request.tokens_to_generate == 5 and request.params == DEFAULTS
    request = parse_request({"prompts": ["a", "b"], "tokens_to_generate": 8, "temperature": 1, "top_k": 0,
                             "top_p": 0.9, "greedy": False, "random_seed": 3}, LIMITS, DEFAULTS, 5)
    assert request.params == SamplingParams(temperature=1.0, top_k=0, top_p=0.9) and request.random_seed == 3


@pytest.mark.parametrize("body, message", [
    ([], "the request body must be a JSON object, got list"),
    ({}, "prompts is required"),
    ({"prompts": "hi"}, "prompts must be a non-empty list of strings"),
    ({"prompts": []}, "prompts must be a non-empty list of strings"),
    ({"prompts": ["a", "b", "c"]}, "prompts has 3 entries; at most 2 are allowed"),
    ({"prompts": [1]}, "prompts[0] must be a string, got int"),
    ({"prompts": ["ok", ""]}, "prompts[1] is empty"),
    ({"prompts": ["x" * 11]}, "prompts[0] has 11 characters; at most 10 are allowed"),
    ({"prompts": ["a"], "tokens_to_generate": 9}, "tokens_to_generate must lie in [0, 8], got 9"),
    ({"prompts": ["a"], "tokens_to_generate": "3"}, "tokens_to_generate must be an integer, got str"),
    ({"prompts": ["a"], "tokens_to_generate": True}, "tokens_to_generate must be an integer, got bool"),
    ({"prompts": ["a"], "temperature": -1}, "temperature must be a number > 0"),
    ({"prompts": ["a"], "temperature": None}, "temperature must be a number, got NoneType"),
    ({"prompts": ["a"], "temperature": float("inf")}, "temperature must be a finite number, got inf"),
    ({"prompts": ["a"], "temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"prompts": ["a"], "top_p": float("-inf")}, "top_p must be a finite number, got -inf"),
    ({"prompts": ["a"], "top_k": -1}, "top_k must lie in [0, inf], got -1"),
    ({"prompts": ["a"], "top_p": 2}, "top_p must be a number in [0, 1], got 2.0"),
    ({"prompts": ["a"], "greedy": "yes"}, "greedy must be true or false, got str"),
    ({"prompts": ["a"], "random_seed": -5}, "random_seed must lie in"),
    ({"prompts": ["a"], "beam_width": 2}, "unknown field 'beam_width'"),
])
def test_bad_requests_are_rejected_with_the_field_named(body, message):
    with pytest.raises(RequestError) as error:
        parse_request(body, LIMITS, DEFAULTS, 5)
    assert message in str(error.value) and "\n" not in str(error.value)
