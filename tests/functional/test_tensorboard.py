"""--tensorboard-dir with the real tensorboard package: the event file is read back and holds the
same losses and learning rates as the iteration lines."""
import pytest

from test_training_lib import demo_data, gpt_args, losses, run_script

pytest.importorskip("tensorboard")


def test_event_file_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = demo_data()
    result = run_script("pretrain_gpt.py", gpt_args(data, "--num-workers", "0", "--split", "90,8,2",
                                                    "--tensorboard-dir", str(tmp_path / "tb"), train_iters=6))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"lm loss", "learning-rate", "lm loss vs samples", "grad-norm"} <= set(scalars), scalars
    logged = [event.value for event in events.Scalars("lm loss")]
    steps = [event.step for event in events.Scalars("lm loss")]
    assert steps == list(range(1, 7))
    printed = losses(result.stdout)
    assert len(printed) == 6
    for got, want in zip(logged, printed):
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (logged, printed)
    learning_rates = [event.value for event in events.Scalars("learning-rate")]
    for got, want in zip(learning_rates, losses(result.stdout, "learning rate")):
        assert abs(got - want) <= 1e-3 * abs(want), (learning_rates, want)  # printed to 4 significant digits
