"""Run, resume and record MLE-vs-SEARNN experiments through the real command lines.

Each run is one ``fairseq-train`` (resumable: fairseq picks up
``checkpoint_last.pt`` in the run's directory under ``runs/``), then one
``fairseq-generate`` on the test set with the checkpoint of lowest validation
cost. A finished run appends one JSON line to the results file
(``examples/results/TASK.jsonl`` by default: config, seed, test error, updates,
wall time, the exact commands, the validation curve); a run already recorded
there is skipped, so a script can be stopped and restarted at any time. Runs go ``--jobs`` at a time,
one torch thread each, so two runs use both cores.

An invocation may be given a time budget (``--budget-hours``): its runs stop when it is spent and
are snapshotted (checkpoints and log) to a directory outside the repository (``--snapshot-dir``,
default ``$SEARNN_SNAPSHOTS`` or ``~/.cache/searnn-fairseq/snapshots``), from which a later
invocation resumes them. Checkpoints never go into the repository; to move a run to another
machine, copy its snapshot folder there, or a weights-only fp16 one (``--snapshot --weights-only``,
at most 10 MB a checkpoint).
"""

import argparse
import concurrent.futures
import itertools
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@dataclass
class Run:
    config: str  # a row of the results table, e.g. "llcas learned/mixed"
    seed: int
    flags: List[str]  # criterion and search flags
    group: str = "table1"
    # fine-tune from this run's best checkpoint (fairseq's --finetune-from-model: weights only, a fresh
    # optimizer, data order and meters); run_all trains and records it first when it is not yet
    init_from: Optional["Run"] = None

    @property
    def name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.config.lower()).strip("-") + f"-seed{self.seed}"

    def signature(self, experiment: "Experiment") -> str:
        """The training flags that decide the result, without machine paths: a recorded row whose
        command lacks them (e.g. trained with a lower --max-epoch) is stale and is trained further."""
        return shlex.join([*experiment.common, *self.flags, "--seed", str(self.seed)])


@dataclass
class Experiment:
    task: str  # results key, e.g. "ocr"
    data: str  # binarised data directory
    work_dir: str
    common: List[str]  # task, model and optimisation flags shared by every run
    scoring: str  # fairseq-generate --scoring
    generate_flags: List[str] = field(default_factory=list)
    # committed with the code (examples/results/TASK.jsonl), so a later invocation resumes the grid
    results: str = ""
    device: str = "cpu"  # "cuda": fairseq's own default device, the GPU
    # this invocation trains for at most this many hours from its start (0: no limit); not part of
    # a run's identity: a run stopped by it is resumed by the next invocation, not recorded
    budget_hours: float = 0.0
    # where unfinished runs are snapshotted, outside the repository (default: default_snapshot_root())
    snapshots: str = ""
    budget_end: float = field(init=False, default=0.0)  # time.time() at which the budget runs out
    # more test figures from fairseq-generate's output (e.g. CoNLL's chunk F1), added to each row
    test_metrics: Optional[Callable[[str], dict]] = None

    def __post_init__(self):
        self.results = self.results or default_results(self.task)
        self.snapshots = outside_the_repository(self.snapshots or default_snapshot_root())
        self.budget_end = time.time() + self.budget_hours * 3600 if self.budget_hours > 0 else 0.0


def default_results(task: str) -> str:
    return os.path.join(REPO, "examples", "results", f"{task}.jsonl")


def apart_from_the_task(experiment: Experiment) -> bool:
    """Whether the experiment records into a results file other than its task's own (capped runs,
    diagnostics, fine-tuning)."""
    return os.path.abspath(experiment.results) != os.path.abspath(default_results(experiment.task))


def baseline_rows(experiment: Experiment) -> List[dict]:
    """A results file apart from the task's own (e.g. capped runs) is plotted against the task's MLE runs."""
    if not apart_from_the_task(experiment):
        return []
    own = replace(experiment, results=default_results(experiment.task))
    return [row for row in recorded(own).values() if row["config"] == "MLE"]


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` narrows them), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def environment(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def read_rows(path: str) -> Dict[str, dict]:
    """Run name -> its last row in a results file."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["run"]] = row
    return rows


def capped_results(task: str) -> str:
    """Where runs capped with ``--stop-time-hours`` are recorded (``--results``), apart from the task's own."""
    return default_results(f"{task}-capped")


# A cap stops a run at its hour mark. The log's clock (validation_curve) and fairseq's differ by
# seconds per resume, so a run whose log ends this far below its cap was never stopped by it.
CAP_SLACK_S = 300
CAP_FLAG = re.compile(r" --stop-time-hours (\S+)")


def as_uncapped(row: dict) -> Optional[dict]:
    """The row under its train command without ``--stop-time-hours`` when that cap never stopped
    the run (the epoch limit or the patience rule ended it first), else None: such a run is the
    uncapped run, trained with the same flags to the same end."""
    command = row["train_command"]
    match = CAP_FLAG.search(command)
    if not match:
        return None
    cap = float(match.group(1))
    if row["wall_s"] > cap * 3600 - CAP_SLACK_S:
        return None
    return {**row, "train_command": command[:match.start()] + command[match.end():], "unbound_cap_hours": cap}


def recorded(experiment: Experiment) -> Dict[str, dict]:
    """The runs recorded in the experiment's results file. An uncapped experiment with the task's
    own results also counts a run recorded in the capped results whose cap never bound, under its
    uncapped command: a grid would otherwise train it again, and its table would miss it."""
    rows = read_rows(experiment.results)
    if os.path.abspath(experiment.results) != os.path.abspath(default_results(experiment.task)) \
            or own_cap(experiment.common):
        return rows
    for name, row in read_rows(capped_results(experiment.task)).items():
        uncapped = as_uncapped(row)
        if name not in rows and uncapped:
            rows[name] = uncapped
    return rows


def fairseq_command(name: str) -> str:
    """fairseq's console script beside this Python, else the one on PATH (e.g. a ``pip install
    --target`` directory's bin)."""
    beside = os.path.join(BIN, name)
    return beside if os.path.exists(beside) else shutil.which(name) or beside


def device_flags(experiment: Experiment) -> List[str]:
    return ["--cpu"] if experiment.device == "cpu" else []


def train_command(experiment: Experiment, run: Run, save_dir: str) -> List[str]:
    return [
        fairseq_command("fairseq-train"), experiment.data, "--user-dir", "searnn_fairseq", *experiment.common, *run.flags,
        "--seed", str(run.seed), "--save-dir", save_dir, *device_flags(experiment), "--num-workers", "0",
        "--best-checkpoint-metric", "cost", "--no-epoch-checkpoints", "--log-format", "json",
        *init_flags(experiment, run),
    ]


def init_flags(experiment: Experiment, run: Run) -> List[str]:
    """fairseq's fine-tuning flag for a run started from another run's best checkpoint. fairseq uses it
    only while the run has no checkpoint_last.pt of its own, so a resumed run goes on from its own."""
    if run.init_from is None:
        return []
    return ["--finetune-from-model", os.path.join(experiment.work_dir, run.init_from.name, BEST_CHECKPOINT)]


def generate_command(experiment: Experiment, save_dir: str) -> List[str]:
    return [
        fairseq_command("fairseq-generate"), experiment.data, "--user-dir", "searnn_fairseq",
        "--path", os.path.join(save_dir, "checkpoint_best.pt"), "--gen-subset", "test", "--beam", "1",
        "--batch-size", "256", "--scoring", experiment.scoring, *device_flags(experiment), *experiment.generate_flags,
    ]


# What an unfinished run needs to go on elsewhere: its last checkpoint (model, optimizer,
# early-stopping and training-time state) and its log (the validation curve so far).
SNAPSHOT_FILES = ("checkpoint_last.pt", "train.log")
# fairseq writes checkpoint_best.pt only on a new best, so a run snapshotted after a worse epoch
# needs its best one too, or it may end with none to test. Optional: older snapshots lack it.
BEST_CHECKPOINT = "checkpoint_best.pt"
# Beside the checkpoints of a weights-only snapshot, and of a run resumed from one: its recorded
# row says so, as such a run is not the run trained without the move (its optimizer restarted).
WEIGHTS_ONLY_MARKER = "weights_only.json"
OPTIONAL_SNAPSHOT_FILES = (BEST_CHECKPOINT, WEIGHTS_ONLY_MARKER)
# The most a weights-only checkpoint may take: small enough to send anywhere a run must move.
WEIGHTS_ONLY_MAX_BYTES = 10_000_000


def default_snapshot_root() -> str:
    """``$SEARNN_SNAPSHOTS``, else the user's cache: never the repository, which carries no checkpoints."""
    configured = os.environ.get("SEARNN_SNAPSHOTS")
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "searnn-fairseq", "snapshots")


def outside_the_repository(path: str) -> str:
    """``path`` made absolute; a path inside the repository is refused, so no checkpoint lands in its tree."""
    absolute = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    repo = os.path.realpath(REPO)
    if absolute == repo or absolute.startswith(repo + os.sep):
        raise ValueError(f"snapshot directory {path} is inside the repository ({repo}); checkpoints do not belong "
                         "in it: choose a directory outside it (--snapshot-dir or $SEARNN_SNAPSHOTS)")
    return absolute


def copy_snapshot_files(source: str, target: str) -> None:
    for name in SNAPSHOT_FILES:
        shutil.copy2(os.path.join(source, name), os.path.join(target, name))
    for name in OPTIONAL_SNAPSHOT_FILES:
        if os.path.exists(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))


def snapshot_dir(experiment: Experiment, run: Run) -> str:
    """SNAPSHOTS/TASK/RESULTS/RUN: one folder per results file, as a run's name is unique only within one."""
    results = os.path.splitext(os.path.basename(experiment.results))[0]
    return os.path.join(experiment.snapshots, experiment.task, results, run.name)


def compact_checkpoint(state: dict) -> dict:
    """A checkpoint reduced to what a run needs to go on: the model's floating-point weights in fp16,
    the config, the training position (epoch, updates, time, early-stopping state) and the optimizer's
    parameter groups, without its moments, the bulk of a checkpoint. fairseq resumes from it with the
    update count and learning-rate schedule restored and the optimizer's moments started afresh."""
    compact = {key: value for key, value in state.items() if key != "last_optimizer_state"}
    compact["model"] = {name: tensor.half() if tensor.is_floating_point() else tensor
                        for name, tensor in state["model"].items()}
    optimizer = state.get("last_optimizer_state")
    if optimizer is not None:
        compact["last_optimizer_state"] = {"state": {}, "param_groups": optimizer["param_groups"]}
    return compact


def weights_only_bytes(path: str) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(compact_checkpoint(torch.load(path, map_location="cpu", weights_only=False)), buffer)
    return buffer.getvalue()


def write_weights_only_snapshot(experiment: Experiment, run: Run, save_dir: str, target: str) -> None:
    """The run's checkpoints as weights-only fp16 copies, its log and a marker, in ``target``; refused
    (SystemExit, nothing written) when a copy exceeds WEIGHTS_ONLY_MAX_BYTES."""
    copies = {}
    for name in (SNAPSHOT_FILES[0], BEST_CHECKPOINT):
        if os.path.exists(os.path.join(save_dir, name)):
            copies[name] = weights_only_bytes(os.path.join(save_dir, name))
            if len(copies[name]) > WEIGHTS_ONLY_MAX_BYTES:
                raise SystemExit(
                    f"[{experiment.task}] {run.name}: the weights-only fp16 copy of {name} takes "
                    f"{len(copies[name]) / 1e6:.1f} MB, over the {WEIGHTS_ONLY_MAX_BYTES / 1e6:g} MB limit; "
                    f"move the full snapshot instead (--snapshot without --weights-only)")
    shutil.rmtree(target, ignore_errors=True)  # a full and a weights-only snapshot of one run do not mix
    os.makedirs(target)
    for name, data in copies.items():
        with open(os.path.join(target, name), "wb") as out:
            out.write(data)
    shutil.copy2(os.path.join(save_dir, SNAPSHOT_FILES[1]), os.path.join(target, SNAPSHOT_FILES[1]))
    with open(os.path.join(target, WEIGHTS_ONLY_MARKER), "w") as out:
        json.dump({"weights": "float16", "optimizer_moments": "dropped"}, out)
        out.write("\n")


def save_snapshot(experiment: Experiment, run: Run, save_dir: str, log=print, weights_only: bool = False) -> None:
    target = snapshot_dir(experiment, run)
    if weights_only:
        write_weights_only_snapshot(experiment, run, save_dir, target)
    else:
        shutil.rmtree(target, ignore_errors=True)  # nor a weights-only snapshot's marker with full checkpoints
        os.makedirs(target)
        copy_snapshot_files(save_dir, target)
    log(f"[{experiment.task}] {run.name}: {'weights-only ' if weights_only else ''}snapshot in {target}")


def save_snapshots(experiment: Experiment, runs: List[Run], log=print, weights_only: bool = False) -> None:
    """Copy every unrecorded run's checkpoints and train.log to the snapshot directory (with
    ``weights_only``: the checkpoints' weights-only fp16 copies)."""
    done = recorded(experiment)
    for run in runs:
        save_dir = os.path.join(experiment.work_dir, run.name)
        if is_recorded(done, experiment, run) or not os.path.exists(os.path.join(save_dir, SNAPSHOT_FILES[0])):
            continue
        save_snapshot(experiment, run, save_dir, log, weights_only)


def restore_snapshot(experiment: Experiment, run: Run, save_dir: str, log=print) -> None:
    """Start from the run's snapshot when this machine has no checkpoint of it."""
    source = snapshot_dir(experiment, run)
    if os.path.exists(os.path.join(save_dir, SNAPSHOT_FILES[0])) or not os.path.exists(os.path.join(source, SNAPSHOT_FILES[0])):
        return
    copy_snapshot_files(source, save_dir)
    kind = "weights-only snapshot (the optimizer's moments restart)" if resumed_from_weights_only(save_dir) else "snapshot"
    log(f"[{experiment.task}] {run.name}: resuming from the {kind} in {source}")


def resumed_from_weights_only(save_dir: str) -> bool:
    return os.path.exists(os.path.join(save_dir, WEIGHTS_ONLY_MARKER))


def trained_hours(save_dir: str) -> float:
    """The training time a run's last checkpoint has accumulated over all its invocations (fairseq's
    own count, the one ``--stop-time-hours`` is compared with)."""
    path = os.path.join(save_dir, SNAPSHOT_FILES[0])
    if not os.path.exists(path):
        return 0.0
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["extra_state"].get("previous_training_time", 0.0) / 3600


def own_cap(common: List[str]) -> float:
    """The run's own ``--stop-time-hours`` (0: none)."""
    return float(common[common.index("--stop-time-hours") + 1]) if "--stop-time-hours" in common else 0.0


def budget_left(experiment: Experiment) -> float:
    """Hours left of this invocation's time budget (infinite without one)."""
    return (experiment.budget_end - time.time()) / 3600 if experiment.budget_end else math.inf


# a run is not started with less budget left than this: its start-up alone would take most of it
MIN_BUDGET_HOURS = 2 / 60


def budget_cap(experiment: Experiment, save_dir: str) -> float:
    """The --stop-time-hours that ends this invocation's share of a run (0: none needed): its
    accumulated time plus what is left of the budget, unless the run's own cap comes first.
    fairseq then stops gracefully, mid-epoch if need be, with a checkpoint the next invocation
    resumes. Runs that start late in the budget (after others, ``--jobs`` at a time) get less."""
    left = budget_left(experiment)
    if math.isinf(left):
        return 0.0
    cap = trained_hours(save_dir) + left
    own = own_cap(experiment.common)
    return 0.0 if own and own <= cap else cap


def run_one(experiment: Experiment, run: Run, threads: int, log=print) -> Optional[dict]:
    save_dir = os.path.join(experiment.work_dir, run.name)
    os.makedirs(save_dir, exist_ok=True)
    restore_snapshot(experiment, run, save_dir, log)
    train_log = os.path.join(save_dir, "train.log")
    command = train_command(experiment, run, save_dir)
    signature = run.signature(experiment)
    if finished_training(save_dir, signature):
        log(f"[{experiment.task}] {run.name}: training already finished")
    elif budget_left(experiment) < MIN_BUDGET_HOURS:
        log(f"[{experiment.task}] {run.name}: not started, the time budget is spent; the next invocation trains it")
        return None
    else:
        log(f"[{experiment.task}] {run.name}: training (log: {train_log})")
        cap = budget_cap(experiment, save_dir)
        budget = ["--stop-time-hours", f"{cap:.6g}"] if cap else []  # the last one given is fairseq's
        with open(train_log, "a") as out:
            subprocess.run(command + budget, cwd=REPO, env=environment(threads), stdout=out, stderr=subprocess.STDOUT,
                           check=True)
        trained = trained_hours(save_dir) if cap else 0.0
        if cap and trained >= cap:
            log(f"[{experiment.task}] {run.name}: stopped at the end of the time budget after {trained:.2f} h of "
                "training in all; the next invocation resumes it")
            # a budget often ends with the machine's lease, and runs/ with it: keep the run outside the tree
            save_snapshot(experiment, run, save_dir, log)
            return None
        with open(os.path.join(save_dir, FINISHED), "w") as f:
            f.write(signature + "\n")
    return record_test(experiment, run, save_dir, threads, log)


def record_test(experiment: Experiment, run: Run, save_dir: str, threads: int, log=print, **extra) -> dict:
    """Test the run's best checkpoint with fairseq-generate and append its row (``extra`` added) to the results."""
    command = train_command(experiment, run, save_dir)
    curve = validation_curve(os.path.join(save_dir, "train.log"))
    generate = generate_command(experiment, save_dir)
    out = subprocess.run(generate, cwd=REPO, env=environment(threads), capture_output=True, text=True)
    with open(os.path.join(save_dir, "generate_test.log"), "w") as f:
        f.write(out.stdout + out.stderr)
    out.check_returncode()
    test_error = parse_score(out.stdout + out.stderr, experiment.scoring)
    if experiment.test_metrics is not None:
        extra = {**experiment.test_metrics(out.stdout), **extra}
    if run.init_from is not None:
        extra = {**source_fields(recorded(experiment).get(run.init_from.name), curve), **extra}
    row = {
        "task": experiment.task,
        "run": run.name,
        "config": run.config,
        "group": run.group,
        "seed": run.seed,
        "device": experiment.device,
        "test_error": test_error,
        "best_valid_cost": min((p["cost"] for p in curve), default=None),
        "updates": curve[-1]["updates"] if curve else 0,
        "wall_s": curve[-1]["wall"] if curve else 0,
        "train_command": portable(command, experiment.work_dir, experiment.task),
        "generate_command": portable(generate, experiment.work_dir, experiment.task),
        "curve": curve,
        **({"resumed_from_weights_only": True} if resumed_from_weights_only(save_dir) else {}),
        **extra,
    }
    os.makedirs(os.path.dirname(experiment.results), exist_ok=True)
    with open(experiment.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    shutil.rmtree(snapshot_dir(experiment, run), ignore_errors=True)  # recorded: nothing left to resume
    log(f"[{experiment.task}] {run.name}: test {experiment.scoring} error {test_error:.2f}% "
        f"after {row['updates']} updates, {row['wall_s'] / 60:.1f} min")
    return row


def first_reaching(curve: List[dict], target: float, at: str = "wall") -> Optional[float]:
    """The wall time (s), or with ``at="updates"`` the update count, of the first validation at or
    below ``target``; None if none reaches it."""
    return next((point[at] for point in curve if point["cost"] <= target), None)


def source_fields(source: Optional[dict], curve: List[dict]) -> dict:
    """What a fine-tuned run's row keeps of its source run: its name, its wall time, the total (the
    source's plus the fine-tuning's), and the total wall time at which the fine-tuning's validation
    first reached the source's best (None if never)."""
    if source is None:
        return {}
    wall = curve[-1]["wall"] if curve else 0.0
    reached = first_reaching(curve, source["best_valid_cost"])
    return {
        "init_from": source["run"],
        "source_wall_s": source["wall_s"],
        "source_test_error": source["test_error"],
        "source_best_valid_cost": source["best_valid_cost"],
        "total_wall_s": source["wall_s"] + wall,
        "reaches_source_best_s": None if reached is None else source["wall_s"] + reached,
    }


def reevaluate(experiment: Experiment, runs: List[Run], log=print) -> None:
    """Test recorded runs again, after a change to how a model is evaluated: each run whose best
    checkpoint is on this machine gets a new row, which supersedes its old one (the old test
    error kept in it); the others' rows stand, and are named."""
    done = read_rows(experiment.results)
    threads = usable_cores()  # one test at a time
    for run in runs:
        save_dir = os.path.join(experiment.work_dir, run.name)
        if not is_recorded(done, experiment, run):
            continue
        if not os.path.exists(os.path.join(save_dir, BEST_CHECKPOINT)):
            log(f"[{experiment.task}] {run.name}: no {BEST_CHECKPOINT} on this machine; its row stands")
            continue
        record_test(experiment, run, save_dir, threads, log, reevaluated=time.strftime("%Y-%m-%d"),
                    previous_test_error=done[run.name]["test_error"])


def with_sources(runs: List[Run]) -> List[Run]:
    """The runs, preceded by the runs they fine-tune from that are not among them."""
    named = {run.name for run in runs}
    sources = []
    for run in runs:
        source = run.init_from
        if source is not None and source.name not in named:
            named.add(source.name)
            sources.append(source)
    return with_sources(sources) + runs if sources else runs


def stages(runs: List[Run]) -> List[List[Run]]:
    """The runs in stages, each after the stages of the runs it fine-tunes from."""
    names = {run.name for run in runs}
    left, done, result = list(runs), set(), []
    while left:
        stage = [run for run in left if run.init_from is None or run.init_from.name in done
                 or run.init_from.name not in names]
        if not stage:
            raise ValueError(f"runs that fine-tune from each other in a cycle: {[run.name for run in left]}")
        result.append(stage)
        done |= {run.name for run in stage}
        left = [run for run in left if run not in stage]
    return result


def run_all(experiment: Experiment, runs: List[Run], jobs: int = 2, log=print, progress_every: float = 30) -> List[dict]:
    """Train and test the runs not yet recorded, ``jobs`` at a time; a run that fine-tunes from another
    starts once that one is recorded (trained first if it is not among ``runs``)."""
    os.makedirs(experiment.work_dir, exist_ok=True)
    done = recorded(experiment)
    runs = with_sources(runs)
    todo = [run for run in runs if not is_recorded(done, experiment, run)]
    log(f"[{experiment.task}] {len(runs) - len(todo)} runs already recorded, {len(todo)} to go, {jobs} at a time")
    for stage in stages(todo):
        ready = [run for run in stage if run.init_from is None or is_recorded(recorded(experiment), experiment,
                                                                               run.init_from)]
        for run in stage:
            if run not in ready:
                log(f"[{experiment.task}] {run.name}: not started, its source {run.init_from.name} is not recorded")
        run_stage(experiment, ready, jobs, log, progress_every)
    return list(recorded(experiment).values())


def run_stage(experiment: Experiment, todo: List[Run], jobs: int, log=print, progress_every: float = 30) -> None:
    threads = max(1, usable_cores() // max(jobs, 1))
    reported: Dict[str, Optional[int]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, experiment, run, threads, log): run for run in todo}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=progress_every)
            for future in finished:
                try:
                    future.result()
                except subprocess.CalledProcessError as error:
                    run = futures[future]
                    log(f"[{experiment.task}] {run.name} FAILED ({error}); see {experiment.work_dir}/{run.name}/train.log")
            for future in pending:
                if future.running():
                    report_progress(experiment, futures[future], log, reported)


def report_progress(experiment: Experiment, run: Run, log=print, reported: Optional[Dict[str, Optional[int]]] = None) -> None:
    """Log the run's latest validation. With ``reported`` (run name -> the updates of the last
    validation logged, None before the first), only what changed is logged: a run polled every
    30 s for hours would otherwise repeat one line hundreds of times between two validations."""
    train_log = os.path.join(experiment.work_dir, run.name, "train.log")
    if not os.path.exists(train_log):
        return
    curve = validation_curve(train_log)
    state = curve[-1]["updates"] if curve else None
    if reported is not None:
        if run.name in reported and reported[run.name] == state:
            return
        reported[run.name] = state
    if curve:
        last = curve[-1]
        best = min(p["cost"] for p in curve)
        log(f"[{experiment.task}] {run.name}: {last['updates']} updates, {last['wall'] / 60:.1f} min, "
            f"valid cost {last['cost']:.4f} (best {best:.4f})")
    else:
        log(f"[{experiment.task}] {run.name}: started, no validation yet")


def is_recorded(done: Dict[str, dict], experiment: Experiment, run: Run) -> bool:
    # padded with spaces so that only whole flags match at the edges ("--seed 1" is not in "--seed 10")
    return run.name in done and f" {run.signature(experiment)} " in f" {done[run.name]['train_command']} "


FINISHED = "train.finished"


def finished_training(save_dir: str, signature: str) -> bool:
    """True once fairseq-train ended on its own (max epoch, patience or time) with these flags:
    running it again would train at least one more epoch before it stopped again. Changed flags
    (a higher --max-epoch) resume from checkpoint_last.pt instead."""
    path = os.path.join(save_dir, FINISHED)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return f.read().strip() == signature


def select(runs: List[Run], configs: Optional[List[str]]) -> List[Run]:
    """The runs of the named table rows (``--configs``), all runs when none is named."""
    if not configs:
        return runs
    known = {run.config.lower() for run in runs}
    unknown = [c for c in configs if c.lower() not in known]
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; this grid has: {sorted({run.config for run in runs})}")
    wanted = {c.lower() for c in configs}
    return [run for run in runs if run.config.lower() in wanted]


def runner_flags() -> List[str]:
    """The flags train_command sets itself for every run, read off a run that adds none: a second
    value in --extra-flags would silently override the runner's (--seed, --save-dir, ...)."""
    bare = Experiment(task="bare", data="DATA", work_dir="", common=[], scoring="", results="bare.jsonl")
    return sorted({arg for arg in train_command(bare, Run("bare", 0, []), "DIR") if arg.startswith("--")})


def with_extra_flags(runs: List[Run], extra: List[str]) -> List[Run]:
    """The runs with flags appended (``--extra-flags``): each is a different run, a diagnostic row
    named after its table row and the flags (e.g. "sLL policy, --clip-norm 5"), so that it is
    recorded and snapshotted apart from the row it varies."""
    if not extra:
        return runs
    owned = sorted({flag.split("=")[0] for flag in extra} & set(runner_flags()))
    if owned:
        raise SystemExit(f"--extra-flags cannot set {owned}: the runner sets them per run "
                         "(use --seeds for seeds, --device for the device)")
    suffix = shlex.join(extra)
    return [replace(run, config=f"{run.config}, {suffix}", flags=[*run.flags, *extra], group="diagnostic")
            for run in runs]


def diagnostic_results(task: str) -> str:
    return default_results(f"{task}-diagnostics")


def chosen_runs(args: argparse.Namespace, runs: List[Run]) -> List[Run]:
    """The runs that ``--configs`` and ``--extra-flags`` pick from a grid."""
    return with_extra_flags(select(runs, args.configs), shlex.split(args.extra_flags))


def grid_results(task: str, grid: str) -> str:
    """The results file of a grid kept apart from the task's tables (e.g. ocr-finetune.jsonl)."""
    return default_results(f"{task}-{grid}")


def results_file(args: argparse.Namespace, task: str, grids_apart: Sequence[str] = ()) -> str:
    """``--results``, else the task's diagnostics file for runs with extra flags, else the grid's own
    file for a grid in ``grids_apart``, else "" (the task's own)."""
    if args.results:
        return args.results
    if args.extra_flags:
        return diagnostic_results(task)
    return grid_results(task, args.grid) if getattr(args, "grid", None) in grids_apart else ""


def portable(command: List[str], work_dir: str = "", task: str = "") -> str:
    """A command as it reads from the repository root (where the runner runs it), without this
    machine's paths, so that a recorded row can be rerun from any clone with fairseq on PATH. Paths
    under a ``work_dir`` elsewhere read as under the task's default one, runs/TASK."""
    root = work_dir.rstrip(os.sep)

    def local(arg: str) -> str:
        if root and task and (arg == root or arg.startswith(root + os.sep)):
            return os.path.normpath(os.path.join("runs", task, os.path.relpath(arg, root)))
        return os.path.relpath(arg, REPO) if arg.startswith(REPO + os.sep) else arg

    program, *args = command
    return shlex.join([os.path.basename(program), *map(local, args)])


SCORE_LINE = re.compile(r"(HAMMING|EDIT|BLEU)\s*=\s*([0-9.]+)")


def generated_hypotheses(output: str) -> Dict[int, str]:
    """Sentence id -> the (post-processed) hypothesis of fairseq-generate's ``H-`` lines."""
    found = {}
    for line in output.splitlines():
        if line.startswith("H-"):
            head, _score, *text = line.split("\t")
            found[int(head[2:])] = text[0] if text else ""
    return found


def parse_score(output: str, scoring: str) -> float:
    for line in reversed(output.splitlines()):
        match = SCORE_LINE.search(line)
        if match and match.group(1).lower() == scoring.lower():
            return float(match.group(2))
    raise RuntimeError(f"no {scoring} score in fairseq-generate's output:\n{output[-2000:]}")


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| ([\w.]+) \| (.*?)\s*$")
# the first thing every fairseq-train process logs about its checkpoint: a process starts
PROCESS_START = "Preparing to load checkpoint"


def validation_curve(train_log: str, metrics: Optional[Dict[str, str]] = None) -> List[dict]:
    """(updates, wall seconds, the validation metrics) at every validation, across resumes; ``metrics``
    maps a point's key to the log's (default: ``cost`` from ``valid_cost``).

    Wall time is read off the log's timestamps from the start of each
    fairseq-train process, earlier processes' time (to their last progress
    line) carried over: fairseq's own
    ``wall`` does not survive a resume (0.12 restores its stopwatch stopped,
    and a resumed run logs ``"wall": "0"`` to the end).
    """
    metrics = metrics or {"cost": "valid_cost"}
    points, carried, start, last = [], 0.0, None, None
    with open(train_log) as f:
        for line in f:
            match = LOG_LINE.match(line)
            if not match:
                continue
            stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
            if match.group(3).startswith(PROCESS_START):
                if last is not None:
                    carried += last - start
                start, last = stamp, None
                continue
            if match.group(2) not in ("train_inner", "train", "valid"):
                continue  # a new process logs a few lines before its marker
            start = stamp if start is None else start
            last = stamp
            if match.group(2) == "valid" and all(f'"{name}"' in match.group(3) for name in metrics.values()):
                stats = json.loads(match.group(3))
                points.append({
                    "updates": int(float(stats["valid_num_updates"])),
                    "wall": carried + stamp - start,
                    **{key: float(stats[name]) for key, name in metrics.items()},
                })
    return points


def summary(rows: List[dict], group: Optional[str] = None) -> Dict[str, dict]:
    """Per config: mean and std of the test error over seeds."""
    by_config: Dict[str, List[dict]] = {}
    for row in rows:
        if group is None or row["group"] == group:
            by_config.setdefault(row["config"], []).append(row)
    table = {}
    for config, items in by_config.items():
        errors = [r["test_error"] for r in items]
        table[config] = {
            "mean": statistics.mean(errors),
            "std": statistics.stdev(errors) if len(errors) > 1 else float("nan"),
            "seeds": sorted(r["seed"] for r in items),
            "updates": statistics.mean(r["updates"] for r in items),
            "wall_min": statistics.mean(r["wall_s"] for r in items) / 60,
        }
    return table


def sign_flip_p(differences: List[float]) -> float:
    """Exact two-sided p-value of a paired permutation test: the share of the 2^n sign assignments
    of the per-seed differences whose mean is at least as far from 0 as the observed one (no
    normality assumed, which a handful of seeds cannot check)."""
    observed = abs(sum(differences)) - 1e-12
    flips = itertools.product((1, -1), repeat=len(differences))
    extreme = sum(abs(sum(sign * d for sign, d in zip(signs, differences))) >= observed for signs in flips)
    return extreme / 2 ** len(differences)


def paired_against(rows: List[dict], baseline: str, configs: List[str], group: Optional[str] = None,
                   min_seeds: int = 2) -> List[dict]:
    """Each config's test errors paired by seed with the baseline's: mean difference (config minus
    baseline), relative change of the mean, seeds where the config is lower, the sign-flip p (1 with
    one seed: ``min_seeds`` 1 shows a single seed's difference, which no test can separate from noise)."""
    chosen = [row for row in rows if group is None or row["group"] == group]
    base = {row["seed"]: row["test_error"] for row in chosen if row["config"] == baseline}
    paired = []
    for config in configs:
        errors = {row["seed"]: row["test_error"] for row in chosen if row["config"] == config}
        seeds = sorted(set(errors) & set(base))
        if len(seeds) < min_seeds:
            continue
        differences = [errors[seed] - base[seed] for seed in seeds]
        base_mean = statistics.mean(base[seed] for seed in seeds)
        paired.append({"config": config, "seeds": seeds, "mean_difference": statistics.mean(differences),
                       "relative": statistics.mean(differences) / base_mean, "lower": sum(d < 0 for d in differences),
                       "p": sign_flip_p(differences)})
    return paired


def format_paired(paired: List[dict], baseline: str) -> str:
    lines = [f"| config | seeds | mean difference to {baseline} (points) | relative | seeds lower | p (paired, exact) |",
             "|---|---|---|---|---|---|"]
    for row in paired:
        lines.append(f"| {row['config']} | {len(row['seeds'])} | {row['mean_difference']:+.2f} | "
                     f"{100 * row['relative']:+.0f}% | {row['lower']}/{len(row['seeds'])} | {row['p']:.3f} |")
    return "\n".join(lines)


def modified_row(config: str, configs: Iterable[str]) -> Optional[str]:
    """The grid row that a diagnostic config ("ROW, FLAGS", see with_extra_flags) adds flags to."""
    candidates = [c for c in configs if config.startswith(f"{c}, ")]
    return max(candidates, key=len) if candidates else None


def paired_diagnostics(diagnostics: List[dict], rows: List[dict], baseline: str) -> List[dict]:
    """Each diagnostic config paired by seed with the grid row it adds flags to and with the baseline
    (both from ``rows``, the grid's results): what the flags change, and where that leaves the row."""
    grid = {row["config"] for row in rows}
    paired = []
    for config in sorted({row["config"] for row in diagnostics}):
        mine = [row for row in diagnostics if row["config"] == config]
        for against in dict.fromkeys(c for c in (modified_row(config, grid), baseline) if c):
            pool = mine + [row for row in rows if row["config"] == against]
            paired += [dict(found, against=against) for found in paired_against(pool, against, [config], min_seeds=1)]
    return paired


def report_paired(rows: List[dict], configs: List[str], baseline: str = "MLE") -> None:
    """Print Table 1's minimum rows paired by seed with the baseline (the OCR and CoNLL reports)."""
    paired = paired_against(rows, baseline, configs, group="table1")
    if paired:
        print(f"\nTable 1 minimum, paired by seed with {baseline} (p: exact two-sided sign-flip permutation test)")
        print(format_paired(paired, baseline))


def format_paired_diagnostics(paired: List[dict]) -> str:
    lines = ["| diagnostic | against | seeds | mean difference (points) | relative | seeds lower | p (paired, exact) |",
             "|---|---|---|---|---|---|---|"]
    for row in paired:
        lines.append(f"| {row['config']} | {row['against']} | {','.join(map(str, row['seeds']))} | "
                     f"{row['mean_difference']:+.2f} | {100 * row['relative']:+.1f}% | {row['lower']}/{len(row['seeds'])} | "
                     f"{row['p']:.3f} |")
    return "\n".join(lines)


def report_diagnostics(task: str, baseline: str = "MLE") -> None:
    """Print the task's diagnostic rows (TASK-diagnostics.jsonl) paired with its grid's rows (TASK.jsonl)."""
    paired = paired_diagnostics(list(read_rows(diagnostic_results(task)).values()),
                                list(read_rows(default_results(task)).values()), baseline)
    if paired:
        print(f"\nDiagnostics ({os.path.relpath(diagnostic_results(task), REPO)}) paired by seed with the grid row "
              f"they add flags to and with {baseline} ({os.path.relpath(default_results(task), REPO)}; "
              "p: exact two-sided sign-flip permutation test, 1 with one seed)")
        print(format_paired_diagnostics(paired))


def format_table(table: Dict[str, dict], metric: str, order: Optional[List[str]] = None) -> str:
    lines = [f"| config | test {metric} error (%) | seeds | updates | wall (min) |", "|---|---|---|---|---|"]
    for config in order or sorted(table):
        if config not in table:
            continue
        row = table[config]
        spread = "" if math.isnan(row["std"]) else f" ± {row['std']:.2f}"
        lines.append(
            f"| {config} | {row['mean']:.2f}{spread} | {','.join(map(str, row['seeds']))} | "
            f"{row['updates']:.0f} | {row['wall_min']:.1f} |"
        )
    return "\n".join(lines)


def format_tables(rows: List[dict], metric: str, tables: List[tuple]) -> str:
    """The tables, one per (group, title, order), of the groups that have rows, a blank line apart."""
    return "\n\n".join(f"{title}\n" + format_table(summary(rows, group), metric, order)
                       for group, title, order in tables if any(row["group"] == group for row in rows))


def plot_results(experiment: Experiment, rows: List[dict], title: str, configs: Optional[List[str]] = None) -> str:
    """Draw a results file's validation curves beside it and return the plot's path. The task's own
    file draws ``configs`` alone (a whole grid is too many lines to read); a file apart draws every
    row it holds, which ``configs`` (the task's grid rows) would mostly leave out, with the task's
    MLE runs to read them against."""
    path = os.path.splitext(experiment.results)[0] + "_validation.png"
    if apart_from_the_task(experiment):
        plot_curves(rows + baseline_rows(experiment), path, title)
    else:
        plot_curves(rows, path, title, configs)
    return path


def line_style(config: str, index: int) -> dict:
    """MLE, the baseline every curve is read against, in thick black; the others cycle through
    matplotlib's ten colours and then change dash, so a full grid's twenty configs stay distinct."""
    if config == "MLE":
        return {"color": "black", "linewidth": 2.2}
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":")[index // 10 % 3], "linewidth": 1.3}


def plot_curves(rows: List[dict], path: str, title: str, configs: Optional[List[str]] = None) -> None:
    """Validation cost against updates and against wall time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles: Dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["config"], r["seed"])):
        if configs and row["config"] not in configs or not row["curve"]:
            continue
        style = styles.setdefault(row["config"], line_style(row["config"], len(styles)))
        label = row["config"] if row["seed"] == min(r["seed"] for r in rows if r["config"] == row["config"]) else None
        updates = [p["updates"] for p in row["curve"]]
        walls = [p["wall"] / 60 for p in row["curve"]]
        costs = [p["cost"] for p in row["curve"]]
        axes[0].plot(updates, costs, label=label, alpha=0.8, **style)
        axes[1].plot(walls, costs, label=label, alpha=0.8, **style)
    for ax, xlabel in zip(axes, ("updates", "wall time (min)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation cost (greedy)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2 if len(styles) > 12 else 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def common_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    default_data = os.environ.get("SEARNN_DATA", os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--data-root", default=default_data, help="raw datasets (default: $SEARNN_DATA or ../shared/data)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each when 2)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="every chosen row on these seeds (default: the Table 1 minimum on 1 2 3, other rows on 1)")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG",
                        help='only these table rows of the chosen grid, e.g. --configs MLE "sLL policy"')
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where fairseq-train and fairseq-generate run (cuda: the GPU, --jobs runs sharing it)")
    parser.add_argument("--stop-time-hours", type=float, default=0,
                        help="cap each run's training time (fairseq's flag; a capped run is a different run: "
                             "record it apart with --results examples/results/TASK-capped.jsonl, where a run "
                             "that ended before its cap also counts as the uncapped run)")
    parser.add_argument("--extra-flags", default="", metavar="FLAGS",
                        help='append these fairseq-train flags to every chosen run, e.g. --extra-flags "--clip-norm 5" '
                             '(one flag alone: --extra-flags=--full-softmax); the runs become diagnostic rows named '
                             'after them, e.g. "sLL policy, --clip-norm 5", recorded in '
                             'examples/results/TASK-diagnostics.jsonl unless --results says otherwise')
    parser.add_argument("--results", help="results file (default: examples/results/TASK.jsonl)")
    parser.add_argument("--budget-hours", type=float, default=0, metavar="H",
                        help="the time budget of this invocation: end its training H hours after its start. Each "
                             "run stops then (mid-epoch if need be) with a checkpoint that the next invocation "
                             "resumes, snapshotted as --snapshot does, and no run starts later; unlike "
                             "--stop-time-hours it does not change the runs")
    parser.add_argument("--reevaluate", action="store_true",
                        help="train nothing: test the chosen recorded runs' best checkpoints again (those on "
                             "this machine) and append their rows, which supersede the old ones")
    parser.add_argument("--snapshot", action="store_true",
                        help="train nothing: copy the unfinished runs' checkpoint_last.pt, checkpoint_best.pt and "
                             "train.log to SNAPSHOT_DIR/TASK/RESULTS/RUN/ (RESULTS: the results file's name without "
                             ".jsonl); a later invocation given the same "
                             "--snapshot-dir (on this machine, or on another after copying the directory there) "
                             "resumes from it")
    parser.add_argument("--weights-only", action="store_true",
                        help="with --snapshot: write weights-only fp16 copies of the checkpoints (model, config, "
                             f"training position; no optimizer moments), at most {WEIGHTS_ONLY_MAX_BYTES // 10**6} MB "
                             "each, refused if larger, for moving a run to another machine; a run resumed from "
                             "one restarts its optimizer's moments and its recorded row says so")
    parser.add_argument("--snapshot-dir", type=snapshot_root_argument, default=None, metavar="DIR",
                        help="where snapshots are written and read, outside the repository (default: "
                             "$SEARNN_SNAPSHOTS, else $XDG_CACHE_HOME or ~/.cache, then searnn-fairseq/snapshots)")
    return parser


def snapshot_root_argument(path: str) -> str:
    try:
        return outside_the_repository(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, with the options that only make sense together checked."""
    args = parser.parse_args(argv)
    if args.weights_only and not args.snapshot:
        parser.error("--weights-only applies to --snapshot only")
    return args


def take_snapshots(args: argparse.Namespace, experiment: Experiment, runs: List[Run]) -> None:
    """``--snapshot``: the unfinished runs' checkpoints to the snapshot directory."""
    save_snapshots(experiment, runs, weights_only=args.weights_only)


def capped(common: List[str], stop_time_hours: float) -> List[str]:
    return [*common, "--stop-time-hours", str(stop_time_hours)] if stop_time_hours > 0 else common
