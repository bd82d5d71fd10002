"""Three ways to spend a training budget, per seed: (a) MLE alone, (b) SEARNN from scratch, (c) MLE
then SEARNN fine-tuned from MLE's best checkpoint. Each is read from the runner's recorded rows and
compared on test error, total wall time (for (c), MLE's whole run plus the fine-tuning) and the
wall time at which validation first reaches MLE's best validation error. Used by the OCR and
spelling ``--grid finetune`` reports."""

import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from examples import runner

Triple = Tuple[dict, Optional[dict], Optional[dict]]


@dataclass
class Ways:
    """What the three ways are called in one task's report."""
    searnn: str  # the SEARNN row, e.g. "LLCAS" or "sLL policy"
    task: str  # the plot's title, e.g. "OCR"
    cost: str  # the validation cost's name on the plot's axis, e.g. "Hamming error per word"


def mle_then(rows: List[Tuple[str, List[str]]], seeds: List[int], mle_flags: List[str]) -> List[runner.Run]:
    """A fine-tuning grid's runs: MLE on each seed (the grid's own, recorded in its results file),
    then each (config, flags) row fine-tuned from that seed's best MLE checkpoint."""
    mle = {seed: runner.Run("MLE", seed, mle_flags, group="finetune") for seed in seeds}
    return [*mle.values()] + [runner.Run(config, seed, flags, group="finetune", init_from=source)
                              for config, flags in rows for seed, source in mle.items()]


def triples(rows: Dict[str, dict], scratch_rows: Dict[str, dict], scratch_config: str,
            finetune_config: str) -> List[Triple]:
    """(MLE, from scratch, fine-tuned) rows per seed of the grid's MLE runs, None where missing."""
    found = []
    for mle in sorted((r for r in rows.values() if r["config"] == "MLE"), key=lambda r: r["seed"]):
        seed = mle["seed"]
        found.append((mle, scratch_rows.get(runner.Run(scratch_config, seed, []).name),
                      rows.get(runner.Run(finetune_config, seed, []).name)))
    return found


def comparison(mle: dict, scratch: Optional[dict], finetuned: Optional[dict]) -> dict:
    """One seed's (a), (b), (c): test error, total wall time, and the wall time at which validation
    first reaches MLE's best validation error."""
    target = mle["best_valid_cost"]
    row = {"seed": mle["seed"], "mle_test": mle["test_error"], "mle_wall_s": mle["wall_s"],
           "mle_reaches_s": runner.first_reaching(mle["curve"], target)}
    if scratch:
        row.update(scratch_test=scratch["test_error"], scratch_wall_s=scratch["wall_s"],
                   scratch_reaches_s=runner.first_reaching(scratch["curve"], target),
                   scratch_updates=scratch["updates"],
                   scratch_reaches_updates=runner.first_reaching(scratch["curve"], target, at="updates"))
    if finetuned:
        wall = finetuned["curve"][-1]["wall"] if finetuned["curve"] else 0.0
        reached = runner.first_reaching(finetuned["curve"], target)
        row.update(finetune_test=finetuned["test_error"], finetune_wall_s=mle["wall_s"] + wall,
                   finetune_reaches_s=None if reached is None else mle["wall_s"] + reached,
                   finetune_s_per_update=wall / finetuned["updates"] if finetuned["updates"] else None)
    return row


def format_table(comparisons: List[dict]) -> str:
    def seconds(value):
        return "never" if value is None else f"{value:.0f}"

    lines = ["| seed | MLE test % | MLE wall s | scratch test % | scratch wall s | scratch reaches s | "
             "MLE+FT test % | MLE+FT wall s | MLE+FT reaches s |", "|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['seed']} | {c['mle_test']:.2f} | {c['mle_wall_s']:.0f} | "
                     f"{c.get('scratch_test', float('nan')):.2f} | {c.get('scratch_wall_s', float('nan')):.0f} | "
                     f"{seconds(c.get('scratch_reaches_s'))} | {c.get('finetune_test', float('nan')):.2f} | "
                     f"{c.get('finetune_wall_s', float('nan')):.0f} | {seconds(c.get('finetune_reaches_s'))} |")
    means = []
    for key, name in (("mle_test", "MLE"), ("scratch_test", "scratch"), ("finetune_test", "MLE+FT")):
        values = [c[key] for c in comparisons if key in c]
        if len(values) > 1:
            means.append(f"{name}: test {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} "
                         f"over seeds {[c['seed'] for c in comparisons if key in c]}")
    return "\n".join(lines + [""] + means)


def format_rescaled_scratch(comparisons: List[dict]) -> str:
    """From-scratch wall times at the fine-tuning's own seconds per update: for scratch rows timed on
    another machine or under another load, a same-machine estimate (both are the same SEARNN
    update on the same model and batch)."""
    lines = []
    for c in comparisons:
        rate = c.get("finetune_s_per_update")
        if c.get("scratch_updates") and rate:
            reaches = c.get("scratch_reaches_updates")
            reached = "never" if reaches is None else f"{reaches} updates x {rate:.3f} s = {reaches * rate:.0f} s"
            lines.append(f"seed {c['seed']}: scratch {c['scratch_updates']} updates x {rate:.3f} s = "
                         f"{c['scratch_updates'] * rate:.0f} s (recorded: {c['scratch_wall_s']:.0f} s); "
                         f"reaches MLE's best at {reached}")
    return "\n".join(lines)


def plot(found: List[Triple], path: str, ways: Ways) -> None:
    """Validation error against wall time for the three ways (the fine-tuning's curve placed after
    MLE's whole run, as it starts from MLE's best checkpoint then)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (mle, scratch, finetuned) in enumerate(found):
        style = {"linestyle": ("-", "--", ":")[index % 3], "linewidth": 1.3}
        label = f" (seed {mle['seed']})"
        curves = [(mle, 0.0, "black", "MLE"), (scratch, 0.0, "C0", f"{ways.searnn} from scratch"),
                  (finetuned, mle["wall_s"], "C3", f"MLE, then {ways.searnn} fine-tuning")]
        for row, start, color, name in curves:
            if row:
                ax.plot([(start + p["wall"]) / 60 for p in row["curve"]], [p["cost"] for p in row["curve"]],
                        color=color, label=name + label, **style)
    ax.set_xlabel("total wall time (min, one core)")
    ax.set_ylabel(f"validation {ways.cost}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title(f"{ways.task}: SEARNN from scratch vs fine-tuned from MLE")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(found: List[Triple], path: str, ways: Ways, rescale_scratch: bool = False) -> None:
    """Print the per-seed table (and, with ``rescale_scratch``, the same-machine estimate of the
    from-scratch times) and draw the plot at ``path``."""
    if not found:
        return
    comparisons = [comparison(*triple) for triple in found]
    print(f"\nPer seed: (a) MLE, (b) {ways.searnn} from scratch, (c) MLE then {ways.searnn} fine-tuning; wall = "
          "total training time, reaches = wall time of the first validation at or below MLE's best")
    print(format_table(comparisons))
    if rescale_scratch:
        print("\nFrom scratch at the fine-tuning's seconds per update:\n" + format_rescaled_scratch(comparisons))
    plot(found, path, ways)
    print(f"\nplot: {path}")
