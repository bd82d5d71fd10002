"""The experiment runner's parsing of fairseq's logs and scores."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import runner  # noqa: E402

# Two fairseq-train processes, as fairseq 0.12 logs them: the resumed one reports "wall": "0" throughout.
LOG = """\
2026-11-25 09:59:50 | INFO | fairseq.trainer | Preparing to load checkpoint runs/x/checkpoint_last.pt
2026-11-25 10:00:00 | INFO | train_inner | {"epoch": 1, "loss": "4.1", "num_updates": "50", "wall": "10"}
2026-11-25 10:00:05 | INFO | valid | {"epoch": 1, "valid_loss": "4", "valid_cost": "7.5", "valid_num_updates": "89"}
2026-11-25 10:00:06 | INFO | train | {"epoch": 1, "train_loss": "4", "train_num_updates": "89", "train_wall": "15"}
2026-11-25 10:00:08 | INFO | fairseq_cli.train | (killed here)
2026-11-25 10:59:58 | INFO | fairseq_cli.train | {'_name': None, ...}
2026-11-25 11:00:00 | INFO | fairseq.trainer | Preparing to load checkpoint runs/x/checkpoint_last.pt
2026-11-25 11:00:10 | INFO | train_inner | {"epoch": 2, "loss": "3", "num_updates": "139", "wall": "0"}
2026-11-25 11:00:12 | INFO | valid | {"epoch": 2, "valid_loss": "3", "valid_cost": "2.25", "valid_num_updates": "178"}
2026-11-25 11:00:13 | INFO | fairseq_cli.train | done training in 20.0 seconds
"""


def test_validation_curve_reads_updates_cost_and_wall_across_a_resume(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    curve = runner.validation_curve(str(log))
    assert [p["updates"] for p in curve] == [89, 178]
    assert [p["cost"] for p in curve] == [7.5, 2.25]
    # 15 s into the first process; then its 16 s (to its last progress line) + 12 s into the second
    assert math.isclose(curve[0]["wall"], 15.0) and math.isclose(curve[1]["wall"], 28.0)


def test_progress_is_reported_once_per_new_validation(tmp_path):
    run = runner.Run("MLE", 1, [])
    (tmp_path / run.name).mkdir()
    log_file = tmp_path / run.name / "train.log"
    lines, reported = [], {}
    report = lambda: runner.report_progress(experiment(tmp_path, 1), run, lines.append, reported)  # noqa: E731
    report()  # no log yet: nothing to say
    log_file.write_text(LOG.splitlines(keepends=True)[0])
    report(), report()
    assert lines == ["[t] mle-seed1: started, no validation yet"]
    log_file.write_text("".join(LOG.splitlines(keepends=True)[:3]))
    report(), report()
    log_file.write_text(LOG)
    report(), report()
    assert lines[1:] == ["[t] mle-seed1: 89 updates, 0.2 min, valid cost 7.5000 (best 7.5000)",
                         "[t] mle-seed1: 178 updates, 0.5 min, valid cost 2.2500 (best 2.2500)"]


def experiment(tmp_path, max_epoch):
    return runner.Experiment(task="t", data="d", work_dir=str(tmp_path), common=["--max-epoch", str(max_epoch)],
                             scoring="edit", results=str(tmp_path / "t.jsonl"))


def test_a_run_trained_with_other_flags_is_stale_and_trains_further(tmp_path):
    run = runner.Run("MLE", 1, ["--criterion", "searnn_mle"])
    old, new = experiment(tmp_path, 20), experiment(tmp_path, 30)
    row = {"run": run.name, "train_command": "/any/bin/fairseq-train /any/data --user-dir searnn_fairseq "
           + run.signature(old) + " --save-dir /any/dir --cpu"}
    done = {run.name: row}
    assert runner.is_recorded(done, old, run) and not runner.is_recorded(done, new, run)
    assert not runner.is_recorded(done, old, runner.Run("MLE", 2, run.flags))
    # whole flags only: a row trained with --seed 10 is not this run's "--seed 1"
    ten = {run.name: {"train_command": row["train_command"].replace("--seed 1 ", "--seed 10 ")}}
    assert not runner.is_recorded(ten, old, run)
    (tmp_path / runner.FINISHED).write_text(run.signature(old) + "\n")
    assert runner.finished_training(str(tmp_path), run.signature(old))
    assert not runner.finished_training(str(tmp_path), run.signature(new))
    assert not runner.finished_training(str(tmp_path / "elsewhere"), run.signature(old))


def test_configs_select_table_rows_and_unknown_names_are_refused():
    runs = [runner.Run("MLE", 1, []), runner.Run("sLL policy", 1, []), runner.Run("sLL topk", 1, [])]
    assert [r.config for r in runner.select(runs, ["sll POLICY", "MLE"])] == ["MLE", "sLL policy"]
    assert runner.select(runs, None) == runs
    with pytest.raises(SystemExit, match="unknown --configs"):
        runner.select(runs, ["LL policy"])


def test_scores_are_read_from_fairseq_generate_output():
    out = "...\n2026 | INFO | fairseq_cli.generate | Generate test with beam=1: HAMMING = 2.84 (131 errors / 4617)\n"
    assert runner.parse_score(out, "hamming") == 2.84


def test_summary_gives_mean_and_std_over_seeds():
    rows = [
        {"config": "MLE", "group": "table1", "seed": s, "test_error": e, "updates": 100, "wall_s": 60}
        for s, e in ((1, 2.0), (2, 3.0), (3, 4.0))
    ]
    table = runner.summary(rows, "table1")
    assert table["MLE"]["mean"] == 3.0 and math.isclose(table["MLE"]["std"], 1.0)
    assert "| MLE | 3.00 ± 1.00 | 1,2,3 |" in runner.format_table(table, "Hamming")


def test_the_paired_test_enumerates_every_sign_flip_of_the_per_seed_differences():
    # 3 seeds all lower by 1: of the 8 sign assignments only all-minus and all-plus reach |mean| 1
    assert runner.sign_flip_p([-1.0, -1.0, -1.0]) == 2 / 8
    # one large gain and two small losses: every assignment's |sum| is at least the observed 1.05
    assert runner.sign_flip_p([-1.64, 0.33, 0.26]) == 1.0
    # 10 seeds, 9 lower by 1 and one higher by 1: |sum| >= 8 needs at most one plus among ten
    # signs, or at most one minus: (1 + 10) * 2 of 1024
    assert math.isclose(runner.sign_flip_p([-1.0] * 9 + [1.0]), 22 / 1024)


def test_rows_are_paired_with_the_baseline_by_seed_and_unpaired_seeds_are_left_out():
    def row(config, seed, error, group="table1"):
        return {"config": config, "seed": seed, "test_error": error, "group": group}

    rows = [row("MLE", 1, 3.0), row("MLE", 2, 2.0), row("MLE", 3, 4.0), row("LL", 1, 2.0), row("LL", 2, 1.0),
            row("LL", 4, 0.5), row("LL", 3, 9.0, group="diagnostic"), row("LLCAS", 1, 1.0)]
    [paired] = runner.paired_against(rows, "MLE", ["LL", "LLCAS"], group="table1")  # LLCAS: one seed, no test
    assert paired["seeds"] == [1, 2] and paired["mean_difference"] == -1.0 and paired["lower"] == 2
    assert math.isclose(paired["relative"], -1.0 / 2.5) and paired["p"] == 0.5
    assert "| LL | 2 | -1.00 | -40% | 2/2 | 0.500 |" in runner.format_paired([paired], "MLE")


def test_a_diagnostic_is_paired_with_the_grid_row_it_adds_flags_to_and_with_the_baseline():
    def row(config, seed, error):
        return {"config": config, "seed": seed, "test_error": error, "group": "x"}

    grid = [row("MLE", 1, 10.0), row("MLE", 2, 12.0), row("sLL", 1, 9.0), row("sLL", 2, 11.0),
            row("sLL policy", 1, 8.0), row("sLL policy", 2, 8.0)]
    diagnostics = [row("sLL policy, --reference-rollout best", 1, 7.0), row("sLL policy, --reference-rollout best", 2, 9.0),
                   row("MLE rerun", 1, 10.5)]
    paired = {(p["config"], p["against"]): p for p in runner.paired_diagnostics(diagnostics, grid, "MLE")}
    assert sorted(paired) == [("MLE rerun", "MLE"), ("sLL policy, --reference-rollout best", "MLE"),
                              ("sLL policy, --reference-rollout best", "sLL policy")]  # not "sLL": the longest row
    best = paired[("sLL policy, --reference-rollout best", "sLL policy")]
    assert (best["seeds"], best["mean_difference"], best["lower"], best["p"]) == ([1, 2], 0.0, 1, 1.0)
    assert paired[("sLL policy, --reference-rollout best", "MLE")]["mean_difference"] == -3.0
    rerun = paired[("MLE rerun", "MLE")]
    assert (rerun["seeds"], rerun["mean_difference"], rerun["p"]) == ([1], 0.5, 1.0)
    assert "| sLL policy, --reference-rollout best | MLE | 1,2 | -3.00 | -27.3% | 2/2 | 0.500 |" in \
        runner.format_paired_diagnostics(list(paired.values()))


def test_the_spelling_finetune_grid_starts_sll_policy_from_each_seeds_mle_with_the_ocr_recipe():
    from examples.ocr import run as ocr
    from examples.spelling import run as spelling

    finetune = spelling.runs("finetune")
    sources = [run for run in finetune if run.init_from is None]
    assert [(run.name, run.flags) for run in sources] == [(f"mle-seed{s}", ["--criterion", "searnn_mle"]) for s in (1, 2)]
    tuned = [run for run in finetune if run.init_from is not None]
    assert [(run.seed, run.init_from.name) for run in tuned] == [(1, "mle-seed1"), (2, "mle-seed2")]
    # the Table 2 row it is compared with, then the budget and MLE term chosen on OCR (whose --lr 1e-3
    # is spelling's own)
    assert tuned[0].flags == [*dict(spelling.TABLE2)["sLL policy"], "--max-epoch", "10", "--patience", "3",
                              "--mle-weight", "1", "--mle-weight-decay-updates", "300"]
    assert ocr.FINETUNE[-len(ocr.DECAYING_MLE_TERM) - 2:] == ["--lr", "0.001", *ocr.DECAYING_MLE_TERM]
    assert "--lr" in spelling.common(30) and spelling.common(30)[spelling.common(30).index("--lr") + 1] == "0.001"


def test_the_three_ways_are_compared_on_test_error_total_wall_time_and_time_to_mles_best():
    from examples import finetuning

    def row(config, seed, wall_costs, test, updates):
        curve = [{"updates": 10 * (i + 1), "wall": wall, "cost": cost} for i, (wall, cost) in enumerate(wall_costs)]
        run = runner.Run(config, seed, []).name
        return {"run": run, "config": config, "seed": seed, "test_error": test, "updates": updates,
                "wall_s": wall_costs[-1][0] + 5, "best_valid_cost": min(c for _, c in wall_costs), "curve": curve}

    mle = row("MLE", 1, [(10, 0.5), (20, 0.3), (30, 0.31)], 3.0, 30)
    scratch = row("sLL policy", 1, [(50, 0.9), (100, 0.3), (150, 0.2)], 2.5, 60)
    tuned = row("sLL policy from MLE", 1, [(40, 0.35), (80, 0.25)], 2.0, 20)
    rows = {r["run"]: r for r in (mle, tuned)}
    [found] = finetuning.triples(rows, {scratch["run"]: scratch}, "sLL policy", "sLL policy from MLE")
    assert found == (mle, scratch, tuned)
    c = finetuning.comparison(*found)
    # MLE's best is 0.3: scratch gets there at 100 s; the fine-tuning at MLE's 35 s + 80 s
    assert (c["mle_reaches_s"], c["scratch_reaches_s"], c["finetune_reaches_s"]) == (20, 100, 115)
    assert c["finetune_wall_s"] == 35 + 80 and c["finetune_s_per_update"] == 4.0
    assert c["scratch_reaches_updates"] == 20
    assert ("seed 1: scratch 60 updates x 4.000 s = 240 s (recorded: 155 s); reaches MLE's best at 20 updates x "
            "4.000 s = 80 s") in finetuning.format_rescaled_scratch([c])
    assert "| 1 | 3.00 | 35 | 2.50 | 155 | 100 | 2.00 | 115 | 115 |" in finetuning.format_table([c])


def test_gpu_runs_drop_cpu_and_a_time_cap_makes_a_different_run(tmp_path):
    run = runner.Run("MLE", 1, ["--criterion", "searnn_mle"])
    cpu = experiment(tmp_path, 30)
    gpu = runner.Experiment(task="t", data="d", work_dir=str(tmp_path), common=cpu.common, scoring="edit",
                            device="cuda")
    for command in (runner.train_command(cpu, run, "s"), runner.generate_command(cpu, "s")):
        assert "--cpu" in command
    for command in (runner.train_command(gpu, run, "s"), runner.generate_command(gpu, "s")):
        assert "--cpu" not in command
    assert runner.capped(["--max-epoch", "30"], 0) == ["--max-epoch", "30"]
    capped = runner.Experiment(task="t", data="d", work_dir=str(tmp_path), scoring="edit",
                               common=runner.capped(cpu.common, 0.5))
    assert capped.common[-2:] == ["--stop-time-hours", "0.5"]
    row = {"run": run.name, "train_command": "fairseq-train d " + run.signature(capped) + " --cpu"}
    assert runner.is_recorded({run.name: row}, capped, run) and not runner.is_recorded({run.name: row}, cpu, run)


def test_an_unfinished_run_travels_as_a_snapshot_outside_the_repository(tmp_path):
    run, finished = runner.Run("LL learned/mixed", 1, ["--criterion", "searnn_ll"]), runner.Run("MLE", 1, [])
    snapshots = tmp_path / "snapshots"
    trained = runner.Experiment(task="t", data="d", work_dir=str(tmp_path / "here"), common=[], scoring="edit",
                                results=str(tmp_path / "results" / "t.jsonl"), snapshots=str(snapshots))
    for r in (run, finished):
        (tmp_path / "here" / r.name).mkdir(parents=True)
        (tmp_path / "here" / r.name / "checkpoint_last.pt").write_bytes(b"state of " + r.name.encode())
        (tmp_path / "here" / r.name / "train.log").write_text("log of " + r.name)
    # the best epoch is not the last: the snapshot must carry both checkpoints
    (tmp_path / "here" / run.name / "checkpoint_best.pt").write_bytes(b"best of " + run.name.encode())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.jsonl").write_text(
        '{"run": "%s", "train_command": "x %s y"}\n' % (finished.name, finished.signature(trained)))
    runner.save_snapshots(trained, [run, finished], log=lambda *_: None)
    snapshot = snapshots / "t" / "t"
    assert sorted(p.name for p in snapshot.iterdir()) == [run.name]  # the recorded run needs none
    assert not list((tmp_path / "results").glob("*_unfinished"))
    # another machine: same results file and snapshot directory (copied there), empty runs folder
    elsewhere = runner.Experiment(task="t", data="d", work_dir=str(tmp_path / "there"), common=[], scoring="edit",
                                  results=trained.results, snapshots=str(snapshots))
    save_dir = tmp_path / "there" / run.name
    save_dir.mkdir(parents=True)
    runner.restore_snapshot(elsewhere, run, str(save_dir), log=lambda *_: None)
    assert (save_dir / "checkpoint_last.pt").read_bytes() == b"state of " + run.name.encode()
    assert (save_dir / "checkpoint_best.pt").read_bytes() == b"best of " + run.name.encode()
    assert (save_dir / "train.log").read_text() == "log of " + run.name
    assert not runner.resumed_from_weights_only(str(save_dir))
    # a machine that has its own, newer checkpoint keeps it
    (save_dir / "checkpoint_last.pt").write_bytes(b"newer")
    runner.restore_snapshot(elsewhere, run, str(save_dir), log=lambda *_: None)
    assert (save_dir / "checkpoint_last.pt").read_bytes() == b"newer"


def test_snapshots_go_outside_the_repository_by_default_and_refuse_a_directory_inside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SEARNN_SNAPSHOTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert runner.default_snapshot_root() == str(tmp_path / "cache" / "searnn-fairseq" / "snapshots")
    monkeypatch.setenv("SEARNN_SNAPSHOTS", str(tmp_path / "mine"))
    plain = runner.Experiment(task="t", data="d", work_dir="w", common=[], scoring="edit")
    assert plain.snapshots == str(tmp_path / "mine")
    inside = os.path.join(runner.REPO, "examples", "results")
    with pytest.raises(ValueError, match="inside the repository"):
        runner.Experiment(task="t", data="d", work_dir="w", common=[], scoring="edit", snapshots=inside)
    parser = runner.common_arguments("")
    with pytest.raises(SystemExit):
        parser.parse_args(["--snapshot-dir", inside])
    assert parser.parse_args(["--snapshot-dir", str(tmp_path / "s")]).snapshot_dir == str(tmp_path / "s")
    with pytest.raises(SystemExit):
        runner.parse_arguments(parser, ["--weights-only"])  # only with --snapshot


def test_a_weights_only_snapshot_keeps_fp16_weights_and_the_training_position_and_refuses_more_than_10_mb(
        tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    run = runner.Run("LL learned/mixed", 1, ["--criterion", "searnn_ll"])
    experiment = runner.Experiment(task="t", data="d", work_dir=str(tmp_path / "here"), common=[], scoring="edit",
                                   results=str(tmp_path / "t.jsonl"), snapshots=str(tmp_path / "snapshots"))
    save_dir = tmp_path / "here" / run.name
    save_dir.mkdir(parents=True)
    weight = torch.randn(300, 300)
    state = {
        "model": {"w": weight, "steps": torch.tensor([3])},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.randn(300, 300)}}, "param_groups": [{"lr": 0.001}]},
        "optimizer_history": [{"num_updates": 7}],
        "extra_state": {"train_iterator": {"epoch": 2, "iterations_in_epoch": 3}, "previous_training_time": 60.0},
    }
    torch.save(state, save_dir / "checkpoint_last.pt")
    (save_dir / "train.log").write_text("log")
    runner.save_snapshots(experiment, [run], log=lambda *_: None, weights_only=True)
    target = tmp_path / "snapshots" / "t" / "t" / run.name
    compact = torch.load(target / "checkpoint_last.pt", weights_only=False)
    assert compact["model"]["w"].dtype == torch.float16 and torch.allclose(compact["model"]["w"].float(), weight,
                                                                           atol=1e-2)
    assert compact["model"]["steps"].dtype == torch.int64
    assert compact["last_optimizer_state"] == {"state": {}, "param_groups": [{"lr": 0.001}]}
    assert compact["extra_state"] == state["extra_state"] and compact["optimizer_history"] == [{"num_updates": 7}]
    assert (target / "checkpoint_last.pt").stat().st_size < (save_dir / "checkpoint_last.pt").stat().st_size / 3
    # a run resumed from it is marked, and its recorded row will say so
    there = tmp_path / "there" / run.name
    there.mkdir(parents=True)
    runner.restore_snapshot(experiment, run, str(there), log=lambda *_: None)
    assert runner.resumed_from_weights_only(str(there))
    # too large: refused with the size, and the earlier snapshot left as it was
    monkeypatch.setattr(runner, "WEIGHTS_ONLY_MAX_BYTES", 100_000)
    with pytest.raises(SystemExit, match=r"0\.2 MB, over the 0\.1 MB limit"):
        runner.save_snapshots(experiment, [run], log=lambda *_: None, weights_only=True)
    assert (target / "checkpoint_last.pt").exists()


def test_a_results_file_apart_is_plotted_against_the_tasks_mle_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "REPO", str(tmp_path))
    main = tmp_path / "examples" / "results" / "t.jsonl"
    main.parent.mkdir(parents=True)
    rows = [{"run": f"{c.lower()}-seed1", "config": c, "seed": 1} for c in ("MLE", "sLL policy")]
    main.write_text("\n".join(map(json.dumps, rows)) + "\n")
    apart = runner.Experiment(task="t", data="d", work_dir="w", common=[], scoring="edit",
                              results=str(tmp_path / "capped.jsonl"))
    assert [r["config"] for r in runner.baseline_rows(apart)] == ["MLE"]
    own = runner.Experiment(task="t", data="d", work_dir="w", common=[], scoring="edit")
    assert runner.baseline_rows(own) == []
    # the file apart is drawn whole (its rows are rarely the grid's), the task's own file its configs alone
    drawn = {}
    monkeypatch.setattr(runner, "plot_curves",
                        lambda rows, path, title, configs=None: drawn.update({path: (rows, configs)}))
    capped_row = {"run": "sllcas-policy-seed1", "config": "sLLCAS policy", "seed": 1}
    runner.plot_results(apart, [capped_row], "t", configs=["MLE", "LL learned/mixed"])
    assert drawn[str(tmp_path / "capped_validation.png")] == ([capped_row, rows[0]], None)
    runner.plot_results(own, rows, "t", configs=["MLE"])
    assert drawn[str(main.parent / "t_validation.png")] == (rows, ["MLE"])


def test_reevaluating_appends_a_superseding_row_for_each_run_whose_best_checkpoint_is_here(tmp_path, monkeypatch):
    here, gone = runner.Run("sLL topk", 1, ["--criterion", "searnn_ll"]), runner.Run("sLL policy", 1, ["--foo"])
    trained = experiment(tmp_path, 30)
    for run in (here, gone):
        (tmp_path / run.name).mkdir()
        (tmp_path / run.name / "train.log").write_text(LOG)
    (tmp_path / here.name / runner.BEST_CHECKPOINT).write_text("weights")
    rows = [{"run": r.name, "config": r.config, "seed": 1, "test_error": 42.79,
             "train_command": "fairseq-train d " + r.signature(trained) + " --cpu"} for r in (here, gone)]
    (tmp_path / "t.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    commands = []

    def generate(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "Generate test with beam=1: EDIT = 40.18 (17596 errors / 43794", "")

    monkeypatch.setattr(runner.subprocess, "run", generate)
    lines = []
    runner.reevaluate(trained, [here, gone, runner.Run("MLE", 1, [])], log=lines.append)
    assert len(commands) == 1 and os.path.join(str(tmp_path), here.name, "checkpoint_best.pt") in commands[0]
    done = runner.recorded(trained)
    assert done[here.name]["test_error"] == 40.18 and done[here.name]["previous_test_error"] == 42.79
    assert done[here.name]["updates"] == 178 and done[gone.name]["test_error"] == 42.79
    assert lines[-1] == "[t] sll-policy-seed1: no checkpoint_best.pt on this machine; its row stands"
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 3


def test_a_capped_run_that_ended_before_its_cap_counts_as_the_uncapped_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "REPO", str(tmp_path))
    common = ["--max-epoch", "30", "--patience", "3"]
    own = runner.Experiment(task="t", data="d", work_dir="w", common=common, scoring="edit")
    early, late, mle = (runner.Run("LL learned/mixed", 1, ["--criterion", "searnn_ll"]),
                        runner.Run("LLCAS learned/mixed", 1, ["--criterion", "searnn_llcas"]),
                        runner.Run("MLE", 1, ["--criterion", "searnn_mle"]))

    def row(run, cap, wall_s, test_error):
        experiment = replace(own, common=runner.capped(common, cap))
        return {"run": run.name, "config": run.config, "seed": 1, "test_error": test_error, "wall_s": wall_s,
                "updates": 1, "train_command": "fairseq-train d " + run.signature(experiment) + " --cpu"}

    capped_file = tmp_path / "examples" / "results" / "t-capped.jsonl"
    capped_file.parent.mkdir(parents=True)
    rows = [row(early, 6.25, 16686.0, 39.46),  # the patience rule ended it at 4.6 h of its 6.25
            row(late, 4.1, 14769.0, 39.47),  # stopped by its 4.1 h cap (14,760 s): a different run
            row(mle, 9.0, 100.0, 99.0)]  # the task's own row comes first
    capped_file.write_text("\n".join(map(json.dumps, rows)) + "\n")
    (capped_file.parent / "t.jsonl").write_text(json.dumps(row(mle, 0, 100.0, 44.0)) + "\n")
    assert runner.capped_results("t") == str(capped_file)

    done = runner.recorded(own)
    assert runner.is_recorded(done, own, early) and not runner.is_recorded(done, own, late)
    assert done[early.name]["unbound_cap_hours"] == 6.25
    assert "--stop-time-hours" not in done[early.name]["train_command"]
    assert done[mle.name]["test_error"] == 44.0
    assert "| LL learned/mixed | 39.46 | 1 |" in runner.format_table(runner.summary(list(done.values())), "edit")
    # the capped experiment itself sees its own rows as they were run, the bound one included
    capped = replace(own, common=runner.capped(common, 4.1), results=str(capped_file))
    assert runner.is_recorded(runner.recorded(capped), capped, late)
    assert runner.recorded(replace(own, common=runner.capped(common, 6.25))) == runner.read_rows(
        str(capped_file.parent / "t.jsonl"))


def test_a_budget_cap_adds_what_is_left_of_the_budget_to_the_runs_trained_time_unless_its_own_cap_comes_first(
        tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"extra_state": {"previous_training_time": 5 * 3600.0}}, tmp_path / "checkpoint_last.pt")

    def budget(common, budget_hours):
        return runner.Experiment(task="t", data="d", work_dir="w", common=common, scoring="edit",
                                 budget_hours=budget_hours, snapshots=str(tmp_path / "snapshots"))

    def cap(common, budget_hours, save_dir=tmp_path):
        return runner.budget_cap(budget(common, budget_hours), str(save_dir))

    assert runner.trained_hours(str(tmp_path)) == 5.0
    assert math.isclose(cap(["--max-epoch", "30"], 1.5), 6.5, abs_tol=1e-3)
    assert math.isclose(cap(runner.capped(["--max-epoch", "30"], 9), 1.5), 6.5, abs_tol=1e-3)  # its own 9 h is further
    assert cap(runner.capped(["--max-epoch", "30"], 6), 1.5) == 0.0  # its own cap stops it first: a recorded run
    assert cap(["--max-epoch", "30"], 0) == 0.0
    assert math.isclose(cap(["--max-epoch", "30"], 1.5, tmp_path / "new-run"), 1.5, abs_tol=1e-3)
    # a run that starts after another has used 1 h of the budget gets what is left
    late = budget(["--max-epoch", "30"], 1.5)
    late.budget_end -= 3600
    assert math.isclose(runner.budget_cap(late, str(tmp_path)), 5.5, abs_tol=1e-3)
    # and none starts once the budget is spent
    late.budget_end -= 3600
    late.work_dir = str(tmp_path / "w")
    run = runner.Run("LL", 1, ["--criterion", "searnn_ll"])
    assert runner.run_one(late, run, threads=1, log=lambda *_: None) is None
    assert not (tmp_path / "w" / run.name / "train.log").exists()


def test_seeds_named_on_the_command_line_apply_to_every_row_and_the_default_keeps_the_costly_rows_on_seed_1():
    from examples.spelling import run as spelling

    parser = runner.common_arguments("")

    def names(argv, grid):
        args = parser.parse_args(argv)
        return [run.name for run in runner.chosen_runs(args, spelling.runs(grid, args.seeds))]

    assert names(["--configs", "sLL policy"], "table2") == ["sll-policy-seed1"]
    assert names(["--configs", "MLE"], "table2") == ["mle-seed1", "mle-seed2", "mle-seed3"]
    assert names(["--seeds", "2", "3", "--configs", "sLL policy"], "table2") == ["sll-policy-seed2", "sll-policy-seed3"]
    assert names(["--seeds", "3", "--configs", "MLE", "sLL policy"], "table2") == ["mle-seed3", "sll-policy-seed3"]
    default = [run for run in spelling.runs("all") if run.config not in dict(spelling.TABLE1_MAIN)]
    assert default and {run.seed for run in default} == {1}


def test_extra_flags_make_diagnostic_runs_recorded_apart_and_match_the_recorded_clipping_row():
    from examples.spelling import run as spelling

    parser = runner.common_arguments("")
    args = parser.parse_args(["--seeds", "1", "--configs", "sLL policy", "--extra-flags", "--clip-norm 5"])
    (run,) = runner.chosen_runs(args, spelling.runs("table2", args.seeds))
    assert (run.config, run.name, run.group) == ("sLL policy, --clip-norm 5", "sll-policy-clip-norm-5-seed1", "diagnostic")
    assert run.flags[-2:] == ["--clip-norm", "5"]
    results = runner.results_file(args, "spelling-0.3")
    assert results == os.path.join(runner.REPO, "examples", "results", "spelling-0.3-diagnostics.jsonl")
    # the CLI names and flags the run exactly as the committed row trained through the runner as a library
    committed = runner.Experiment(task="spelling-0.3", data="d", work_dir="w", common=spelling.common(30),
                                  scoring="edit", results=results)
    assert runner.is_recorded(runner.recorded(committed), committed, run)
    # without extra flags: the table's own runs and results file
    plain = parser.parse_args(["--seeds", "1", "--configs", "sLL policy"])
    assert runner.chosen_runs(plain, spelling.runs("table2", [1]))[0].name == "sll-policy-seed1"
    assert runner.results_file(plain, "spelling-0.3") == ""
    assert parser.parse_args(["--extra-flags=--full-softmax"]).extra_flags == "--full-softmax"
    with pytest.raises(SystemExit, match="--save-dir"):
        runner.chosen_runs(parser.parse_args(["--extra-flags", "--lr 0.002 --save-dir=elsewhere"]), spelling.runs("main", [1]))
    # every flag the runner puts on the command line is refused, read off train_command itself
    assert {"--seed", "--save-dir", "--user-dir", "--best-checkpoint-metric", "--log-format", "--num-workers",
            "--cpu"} <= set(runner.runner_flags())
    with pytest.raises(SystemExit, match="--cpu"):
        runner.chosen_runs(parser.parse_args(["--extra-flags=--cpu"]), spelling.runs("main", [1]))


def test_a_grid_kept_apart_has_its_own_results_file_unless_diagnostic_or_named():
    parser = runner.common_arguments("")
    parser.add_argument("--grid", default="main")
    results = os.path.join(runner.REPO, "examples", "results")
    assert runner.results_file(parser.parse_args(["--grid", "finetune"]), "ocr", grids_apart=["finetune"]) == \
        os.path.join(results, "ocr-finetune.jsonl")
    assert runner.results_file(parser.parse_args([]), "ocr", grids_apart=["finetune"]) == ""
    assert runner.results_file(parser.parse_args(["--grid", "finetune", "--extra-flags", "--clip-norm 5"]), "ocr",
                               grids_apart=["finetune"]) == os.path.join(results, "ocr-diagnostics.jsonl")
    assert runner.results_file(parser.parse_args(["--grid", "finetune", "--results", "x.jsonl"]), "ocr",
                               grids_apart=["finetune"]) == "x.jsonl"


def test_the_extra_flags_cli_snapshots_an_unfinished_diagnostic_under_its_own_name(tmp_path):
    save_dir = tmp_path / "work" / "mle-clip-norm-5-seed2"
    save_dir.mkdir(parents=True)
    (save_dir / "checkpoint_last.pt").write_bytes(b"state")
    (save_dir / "train.log").write_text("log")
    (tmp_path / "work" / "mle-seed2").mkdir()  # the table row itself: not chosen, not snapshotted
    (tmp_path / "work" / "mle-seed2" / "checkpoint_last.pt").write_bytes(b"other")
    (tmp_path / "work" / "mle-seed2" / "train.log").write_text("log")
    subprocess.run([sys.executable, os.path.join(runner.REPO, "examples", "spelling", "run.py"), "--noise", "0.3",
                    "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "d.jsonl"), "--seeds", "2",
                    "--configs", "MLE", "--extra-flags", "--clip-norm 5", "--snapshot",
                    "--snapshot-dir", str(tmp_path / "snapshots")], check=True, capture_output=True)
    snapshot = tmp_path / "snapshots" / "spelling-0.3" / "d"
    assert [p.name for p in snapshot.iterdir()] == ["mle-clip-norm-5-seed2"]
    assert (snapshot / "mle-clip-norm-5-seed2" / "checkpoint_last.pt").read_bytes() == b"state"


def test_recorded_commands_read_from_the_repository_root_without_this_machines_paths(monkeypatch):
    monkeypatch.setattr(runner, "REPO", "/clone")
    command = ["/clone/.venv/bin/fairseq-train", "/clone/runs/x/data", "--save-dir", "/clone/runs/x/run",
               "/elsewhere/data", "--user-dir", "searnn_fairseq", "--extra", "a b", "/clonex/y"]
    assert runner.portable(command) == ("fairseq-train runs/x/data --save-dir runs/x/run /elsewhere/data "
                                        "--user-dir searnn_fairseq --extra 'a b' /clonex/y")
    # a fairseq found on PATH outside the clone (e.g. a pip --target directory) is named alone too
    assert runner.portable(["/tmp/site/bin/fairseq-generate", "/clone/d"]) == "fairseq-generate d"
    # a --work-dir outside the clone reads as the task's default one
    assert runner.portable(["fairseq-train", "/scratch/o/data", "--save-dir", "/scratch/o/mle-seed1", "/scratch/ox"],
                           "/scratch/o", "ocr") == "fairseq-train runs/ocr/data --save-dir runs/ocr/mle-seed1 /scratch/ox"
    assert runner.portable(["x", "/scratch/o"], "/scratch/o/", "ocr") == "x runs/ocr"


def test_the_main_job_says_when_searnn_first_reaches_mles_best_validation_error(capsys):
    from examples.ocr import main_job

    def row(config, wall_costs):
        return {"config": config, "seed": 1, "test_error": 1.0, "updates": 10, "wall_s": wall_costs[-1][0],
                "best_valid_cost": min(c for _, c in wall_costs),
                "curve": [{"updates": i, "wall": w, "cost": c} for i, (w, c) in enumerate(wall_costs)]}

    mle = row("MLE", [(30, 0.5), (60, 0.3), (81, 0.31)])
    main_job.print_time_to_mle([mle, row("SEARNN LLCAS learned/mixed", [(100, 7.0), (300, 0.35), (411, 0.29), (459, 0.2)])])
    assert "MLE trained for 81 s in all; SEARNN reaches it after 411 s of training (459 s in all)" in capsys.readouterr().out
    main_job.print_time_to_mle([mle, row("SEARNN LLCAS learned/mixed", [(100, 7.0)])])
    assert "SEARNN never reaches it (100 s in all)" in capsys.readouterr().out


def test_every_searnn_row_of_every_example_grid_builds_its_criterion():
    """A grid row with options its criterion refuses fails only when its run starts, maybe hours
    into a chain of runs: build every row's criterion here instead."""
    import tiny
    from examples.conll import run as conll_run
    from examples.mt import run as mt_run
    from examples.ocr import run as ocr_run
    from examples.spelling import run as spelling_run

    # keyed by example too: OCR and CoNLL share row names ("LLCAS learned/mixed") with other flags
    rows = {(module.__name__, run.config): run.flags for module in (ocr_run, spelling_run, conll_run)
            for grid in ("all", "finetune") for run in module.runs(grid)}
    rows.update(((mt_run.__name__, config), flags) for config, flags in mt_run.FINETUNE_ROWS + mt_run.DIAGNOSTIC_ROWS
                if "--criterion" in flags)
    assert {"LLCAS learned/mixed", "sLLCAS policy", "KL reference roll-in + MLE"} <= {config for _, config in rows}
    assert ("examples.ocr.run", "LLCAS learned/mixed") in rows and ("examples.conll.run", "LLCAS learned/mixed") in rows
    for flags in rows.values():
        tiny.build("searnn_gru", flags)  # raises on options the criterion refuses
