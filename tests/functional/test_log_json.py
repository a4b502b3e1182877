"""--log-json FILE: one JSON object per logged iteration and per evaluation, with the numbers of the
iteration and validation lines unrounded; resumed runs append."""
import json

from test_training_lib import demo_data, gpt_args, losses, parse_iterations, run_script


def test_log_json_holds_what_the_lines_print(tmp_path):
    data = demo_data()
    path = tmp_path / "logs" / "metrics.jsonl"
    result = run_script("pretrain_gpt.py", gpt_args(data, "--num-workers", "0", "--split", "90,8,2",
                                                    "--log-json", str(path), "--eval-interval", "3",
                                                    "--log-params-norm", train_iters=6))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    iterations = [r for r in records if r["kind"] == "iteration"]
    assert [r["iteration"] for r in iterations] == list(range(1, 7))
    printed = parse_iterations(result.stdout)
    for record in iterations:
        line = printed[record["iteration"]]
        assert f"{record['losses']['lm loss']:.6E}" == f"{line['lm loss']:.6E}"
        assert f"{record['learning_rate']:.3E}" == f"{line['learning rate']:.3E}"
        assert record["consumed_samples"] == line["consumed samples"] == 8 * record["iteration"]
        assert record["global_batch_size"] == 8 and record["skipped_iterations"] == 0
        assert f"{record['params_norm']:.3f}" == f"{line['params norm']:.3f}"
    validations = [r for r in records if r["kind"] == "validation"]
    assert [r["iteration"] for r in validations] == [3, 6, 6]  # every 3, and at the end of training
    assert all("lm loss" in r["losses"] for r in validations)
    assert [r for r in records if r["kind"] == "test"]
    assert losses(result.stdout) == [float(f"{r['losses']['lm loss']:.6E}") for r in iterations]


def test_unwritable_log_json_is_refused_at_start_up(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_script("pretrain_gpt.py", gpt_args(demo_data(), "--num-workers", "0", "--log-json",
                                                    str(tmp_path / "file" / "m.jsonl")), check=False)
    assert result.returncode == 2
    assert "--log-json" in result.stderr and "cannot be written" in result.stderr
    assert "building GPT model" not in result.stdout
