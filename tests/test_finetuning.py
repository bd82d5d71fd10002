"""Fine-tuning an MLE model with SEARNN: the roll-in warm-up and the MLE-weight decay follow
fairseq's update count (restarting at 0 under --finetune-from-model, kept across resumes), and
the fine-tuning run's --stop-time-hours clock starts at zero."""

import os
import re

import pytest
import torch
from fairseq.distributed import ModuleProxyWrapper
from fairseq.logging import metrics

import test_cli as cli
import tiny
from searnn_fairseq.schedule import num_updates_of
from test_cli import data_bin  # noqa: F401  (the tiny reversal task, built once per module)

SEARNN = ("--criterion", "searnn_llcas")


def criterion_with(*flags, arch="lstm"):
    return tiny.build(arch, (*SEARNN, *flags))


def test_defaults_keep_the_configured_policy_and_weight_at_every_update():
    _, _, criterion = criterion_with("--rollin", "learned", "--mle-weight", "0.5")
    assert not criterion.schedule.scheduled
    for updates in (0, 1, 1000):
        assert criterion.schedule.policy_at(updates) is criterion.policy
        assert criterion.schedule.mle_weight(updates) == 0.5


@pytest.mark.parametrize("updates, expected", [(0, 1.0), (25, 0.75), (50, 0.5), (99, 0.01)])
def test_a_learned_rollin_warms_up_from_the_reference(updates, expected):
    _, _, criterion = criterion_with("--rollin", "learned", "--rollin-warmup-updates", "100")
    policy = criterion.schedule.policy_at(updates)
    assert policy.rollin == "mixed"
    assert policy.rollin_ref_prob == pytest.approx(expected)
    assert criterion.schedule.rollin_ref_prob(updates) == pytest.approx(expected)
    assert (policy.rollout, policy.rollout_ref_prob) == (criterion.policy.rollout, criterion.policy.rollout_ref_prob)


@pytest.mark.parametrize("updates", [100, 101, 5000])
def test_after_the_warmup_the_rollin_is_exactly_the_configured_one(updates):
    _, _, criterion = criterion_with("--rollin", "learned", "--rollin-warmup-updates", "100")
    assert criterion.schedule.policy_at(updates) is criterion.policy
    assert criterion.schedule.rollin_ref_prob(updates) == 0.0


@pytest.mark.parametrize("updates, expected", [(0, 1.0), (4, 0.8), (5, 0.75), (10, 0.5), (20, 0.5)])
def test_a_mixed_rollin_warms_up_to_its_reference_probability(updates, expected):
    _, _, criterion = criterion_with("--rollin", "mixed", "--rollin-ref-prob", "0.5", "--rollin-warmup-updates", "10")
    assert criterion.schedule.policy_at(updates).rollin == "mixed"
    assert criterion.schedule.policy_at(updates).rollin_ref_prob == pytest.approx(expected)


def test_a_reference_rollin_has_nothing_to_warm_up():
    _, _, criterion = criterion_with("--rollin", "reference", "--rollin-warmup-updates", "10")
    assert criterion.schedule.policy_at(3) is criterion.policy
    assert criterion.schedule.rollin_ref_prob(3) == 1.0


@pytest.mark.parametrize("updates, expected", [(0, 2.0), (1, 1.5), (3, 0.5), (4, 0.0), (40, 0.0)])
def test_the_mle_weight_decays_linearly_to_zero(updates, expected):
    _, _, criterion = criterion_with("--mle-weight", "2", "--mle-weight-decay-updates", "4")
    assert criterion.schedule.mle_weight(updates) == pytest.approx(expected)


@pytest.mark.parametrize("flags, message", [
    (("--rollin-warmup-updates", "-1"), "must be >= 0"),
    (("--mle-weight-decay-updates", "-1"), "must be >= 0"),
    (("--mle-weight-decay-updates", "10"), "set --mle-weight"),
])
def test_invalid_schedules_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        criterion_with(*flags)


class DDPLike(torch.nn.Module):
    """What fairseq's DDP wrappers look like from outside: the model under ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_the_count_fairseq_gives_the_model_is_read_through_ddp_wrappers():
    _, model, _ = criterion_with()
    wrapped = ModuleProxyWrapper(DDPLike(model))
    wrapped.set_num_updates(7)  # as FairseqTask.train_step does, on the wrapped model
    assert num_updates_of(wrapped) == num_updates_of(model) == 7
    model.set_num_updates(8)
    assert num_updates_of(wrapped) == 8
    assert "searnn_num_updates" not in model.state_dict() and not any(
        "searnn" in name for name, _ in model.named_modules())


def test_a_scheduled_criterion_refuses_a_model_without_a_count():
    _, model, criterion = criterion_with("--rollin-warmup-updates", "10")
    sample = tiny.batch(tiny.letter_dictionary(), tiny.random_pairs(4, seed=1))
    model.train()
    with pytest.raises(RuntimeError, match="update count"):
        criterion(model, sample)


def run_at(criterion, model, sample, updates):
    """The policy the training step at ``updates`` searched with, and its logged values."""
    used = []
    search = criterion.search
    criterion.search = lambda m, s, policy=None: used.append(policy) or search(m, s, policy)
    model.train()
    model.set_num_updates(updates)
    _, _, logging_output = criterion(model, sample)
    criterion.search = search
    return used[0], logging_output


def test_a_training_step_searches_with_the_scheduled_policy_and_logs_it():
    _, model, criterion = criterion_with("--rollin", "learned", "--rollin-warmup-updates", "4", "--mle-weight", "1",
                                         "--mle-weight-decay-updates", "2")
    sample = tiny.batch(tiny.letter_dictionary(), tiny.random_pairs(4, seed=1))
    policy, output = run_at(criterion, model, sample, 1)
    assert (policy.rollin, policy.rollin_ref_prob) == ("mixed", 0.75)
    assert output["rollin_ref_prob_sum"] == pytest.approx(0.75 * 4)
    assert output["mle_weight_sum"] == pytest.approx(0.5 * 4)
    with metrics.aggregate() as aggregate:
        criterion.reduce_metrics([output, run_at(criterion, model, sample, 2)[1]])
    assert aggregate.get_smoothed_values()["rollin_ref_prob"] == pytest.approx((0.75 + 0.5) / 2)
    assert aggregate.get_smoothed_values()["mle_weight"] == pytest.approx(0.25)
    policy, _ = run_at(criterion, model, sample, 4)
    assert policy is criterion.policy


def test_the_default_logs_no_schedule_and_validation_needs_no_count():
    _, model, criterion = criterion_with()
    sample = tiny.batch(tiny.letter_dictionary(), tiny.random_pairs(4, seed=1))
    model.train()
    _, _, output = criterion(model, sample)  # no count given: the defaults never read it
    assert "rollin_ref_prob_sum" not in output and "mle_weight_sum" not in output
    _, model, criterion = criterion_with("--rollin-warmup-updates", "10")
    model.eval()
    with torch.no_grad():
        _, _, output = criterion(model, sample)  # validation: greedy decoding, whatever the update
    assert "greedy_cost_sum" in output and "rollin_ref_prob_sum" not in output


def logged(output, name):
    """The values of ``name`` in fairseq-train's per-update log lines (--log-format simple)."""
    return [float(v) for v in re.findall(rf"\| INFO \| train_inner \|.*?{name}=([0-9.]+)", output)]


def test_finetuning_from_a_model_restarts_the_count_and_the_clock_and_resumes_them(data_bin, tmp_path):  # noqa: F811
    source = str(tmp_path / "mle")
    cli.train(data_bin, source, "searnn_gru", 3, extra=["--criterion", "searnn_mle"])
    checkpoint = os.path.join(source, "checkpoint_last.pt")
    state = torch.load(checkpoint, weights_only=False)
    state["extra_state"]["previous_training_time"] = 10 * 3600.0  # a source run that trained 10 hours
    torch.save(state, checkpoint)
    finetune = str(tmp_path / "searnn")
    flags = ["--finetune-from-model", checkpoint, "--rollin-warmup-updates", "4", "--mle-weight", "1",
             "--mle-weight-decay-updates", "2", "--stop-time-hours", "1"]
    first = cli.train(data_bin, finetune, "searnn_gru", 3, extra=flags)
    # the count starts at 0 (not the source's 3), so update 1 rolls in with the reference
    assert logged(first, "rollin_ref_prob") == [1.0, 0.75, 0.5]
    assert logged(first, "mle_weight") == [1.0, 0.5, 0.0]
    # and the source's 10 hours do not count against --stop-time-hours 1 (fix 6 under --finetune-from-model)
    extra = torch.load(os.path.join(finetune, "checkpoint_last.pt"), weights_only=False)["extra_state"]
    assert extra["previous_training_time"] < 3600
    # resumed (fairseq loads checkpoint_last.pt, not the source): the count goes on from 3
    second = cli.train(data_bin, finetune, "searnn_gru", 5, extra=flags)
    assert "loading pretrained model" not in second
    assert logged(second, "rollin_ref_prob") == [0.25, 0.0]


# ------------------------------------------------------------- the runner's fine-tuned runs

def runner_module():
    import sys

    sys.path.insert(0, cli.REPO)
    from examples import runner

    return runner


def test_a_run_fine_tuned_from_another_loads_its_best_checkpoint_and_trains_after_it(tmp_path):
    runner = runner_module()
    experiment = runner.Experiment(task="t", data="DATA", work_dir=str(tmp_path), common=["--lr", "0.002"],
                                   scoring="hamming", results=str(tmp_path / "r.jsonl"), snapshots=str(tmp_path))
    mle = runner.Run("MLE", 1, ["--criterion", "searnn_mle"])
    searnn = runner.Run("LLCAS from MLE", 1, ["--criterion", "searnn_llcas", "--lr", "0.001"], init_from=mle)
    command = runner.train_command(experiment, searnn, str(tmp_path / searnn.name))
    position = command.index("--finetune-from-model")
    assert command[position + 1] == str(tmp_path / "mle-seed1" / "checkpoint_best.pt")
    assert "--finetune-from-model" not in runner.train_command(experiment, mle, str(tmp_path / mle.name))
    # the source comes first, even when only the fine-tuned run is asked for
    assert runner.with_sources([searnn]) == [mle, searnn]
    assert [[run.name for run in stage] for stage in runner.stages([searnn, mle])] == [["mle-seed1"],
                                                                                       ["llcas-from-mle-seed1"]]
    # extra flags keep the source
    assert runner.with_extra_flags([searnn], ["--clip-norm", "5"])[0].init_from == mle


def test_a_fine_tuned_row_keeps_its_source_and_the_total_wall_time():
    runner = runner_module()
    source = {"run": "mle-seed1", "wall_s": 100.0, "test_error": 3.0, "best_valid_cost": 0.2}
    curve = [{"updates": 89, "wall": 10.0, "cost": 0.25}, {"updates": 178, "wall": 20.0, "cost": 0.2},
             {"updates": 267, "wall": 30.0, "cost": 0.1}]
    fields = runner.source_fields(source, curve)
    assert fields["init_from"] == "mle-seed1"
    assert fields["total_wall_s"] == 130.0
    assert fields["reaches_source_best_s"] == 120.0
    assert runner.source_fields(source, curve[:1])["reaches_source_best_s"] is None
