"""Comparison: --compare trains several architectures, --repeats one over several seeds, and
both report the mean and spread.

Each run is the script's own pipeline (train_and_evaluate), passed in as `pipeline`: this
package never imports the script. Every architecture is trained on the same data split with
the same settings. Imports Keras and Matplotlib at its top: import this module only after
backend.start.
"""

import dataclasses
import sys
import time

import keras
import matplotlib.pyplot as plt

from digitkit.config import DATASETS, format_hidden
from digitkit.files import write_csv, write_json, write_text
from digitkit.folders import publish, staging_dir
from digitkit.metrics import spread
from digitkit.plots import save_figure
from digitkit.report import (build_record, percent_spread, print_tensorboard_command, say,
                             write_html_report)
from digitkit.training import StopSignals


def run_figures(result, seed):
    """One run's headline figures, as repeats and comparisons tabulate them."""
    training, scores = result["training"], result["scores"]
    kept = training["history"][training["kept_epoch"] - 1] if training["history"] else {}
    return dict(seed=seed, parameters=result["parameters"], val_accuracy=kept.get("val_accuracy"),
                test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
                train_seconds=training["seconds"])


def train_seeds(pipeline, config, data, seeds, signals):
    """The seed loop: a fresh model per seed, all on the same split; stops at an interrupt."""
    runs = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        result = pipeline(dataclasses.replace(config, seed=seed, quiet=True), data, signals)
        if result["training"]["interrupted"]:
            break
        runs.append(run_figures(result, seed))
        say(config, f"hidden {format_hidden(config.hidden)}, seed {seed}: test accuracy "
                    f"{runs[-1]['test_accuracy']:.4%} in {runs[-1]['train_seconds']:.1f} s")
    return runs


def run_repeats(pipeline, config, data, first_run):
    """Train the same configuration with seeds seed+1 ... and summarise all runs; a Ctrl-C
    stops after the seeds finished so far, and the summary says it was interrupted."""
    with StopSignals() as signals:
        runs = [first_run] + train_seeds(pipeline, config, data,
                                         range(config.seed + 1, config.seed + config.repeats),
                                         signals)
    validated = all(run["val_accuracy"] is not None for run in runs)
    summary = spread(runs, ("val_accuracy",) * validated
                     + ("test_accuracy", "test_loss", "train_seconds"))
    summary["interrupted"] = signals.received is not None
    say(config, f"test accuracy over {len(runs)} seeds: {summary['test_accuracy_mean']:.4%} "
                f"± {summary['test_accuracy_std']:.4%} (mean ± standard deviation)")
    return summary


def summarise_runs(hidden, runs):
    """Mean and spread of one architecture's runs."""
    return dict(hidden=list(hidden), parameters=runs[0]["parameters"], runs=len(runs),
                **spread(runs, ("val_accuracy", "test_accuracy", "train_seconds")))


def plot_comparison(rows, dataset_title, path):
    """Test accuracy against parameter count, one labelled point per architecture."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        ax.errorbar(row["parameters"], 100 * row["test_accuracy_mean"],
                    yerr=100 * row["test_accuracy_std"], fmt="o", capsize=4, color="tab:blue")
        ax.annotate(format_hidden(row["hidden"]),
                    (row["parameters"], 100 * row["test_accuracy_mean"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    runs = rows[0]["runs"]
    ax.set_title(f"{dataset_title} test set: accuracy by architecture "
                 f"(mean ± std over {runs} seed{'s' if runs > 1 else ''})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_comparison(output_dir, rows, dataset_title):
    """comparison.csv, comparison.md and comparison.png, one row per architecture."""
    columns = ["hidden", "parameters", "runs", "val_accuracy_mean", "val_accuracy_std",
               "test_accuracy_mean", "test_accuracy_std", "train_seconds_mean",
               "train_seconds_std"]

    write_csv(output_dir / "comparison.csv", columns,
              [dict(row, hidden=format_hidden(row["hidden"])) for row in rows])

    table = ["| hidden layers | parameters | runs | validation accuracy (%) | "
             "test accuracy (%) | training seconds |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {format_hidden(r['hidden'])} | {r['parameters']:,} | {r['runs']} | "
              f"{percent_spread(r['val_accuracy_mean'], r['val_accuracy_std'])} | "
              f"{percent_spread(r['test_accuracy_mean'], r['test_accuracy_std'])} | "
              f"{r['train_seconds_mean']:.1f} ± {r['train_seconds_std']:.1f} |" for r in rows]
    write_text(output_dir / "comparison.md", "\n".join(table) + "\n")
    plot_comparison(rows, dataset_title, output_dir / "comparison.png")
    return table


def run_comparison(pipeline, config, specs, output_dir, data, dataset_info, timing, started):
    """Train every architecture with the same data split and settings, repeats times each.

    data, dataset_info and timing are what the script's load_data returned; started is when
    the run began (time.perf_counter()).
    """
    rows = []
    with StopSignals() as signals:
        for hidden in specs:
            runs = train_seeds(pipeline, dataclasses.replace(config, hidden=tuple(hidden)), data,
                               range(config.seed, config.seed + config.repeats), signals)
            if runs:
                rows.append(summarise_runs(hidden, runs))
            if signals.received:
                break
    if not rows:
        print("interrupted before any architecture finished; nothing written", file=sys.stderr)
        return 130
    with StopSignals(during="reports"):
        stage = staging_dir(output_dir)  # published whole; an earlier comparison moves aside
        table = write_comparison(stage, rows, DATASETS[config.dataset]["title"])
        timing["total_seconds"] = round(time.perf_counter() - started, 3)
        record = build_record(config, dataset_info, timing=timing, comparison=rows)
        record["interrupted"] = signals.received is not None
        write_json(stage / "comparison.json", record)
        write_html_report(stage / "report.html", record, [stage / "comparison.png"])
        moved = publish(stage, output_dir)
    if not config.quiet:
        if moved:
            print(f"the previous comparison's files are now in {moved}")
        print("\n" + "\n".join(table))
        print(f"\nwrote {output_dir / 'comparison.csv'}, comparison.md, comparison.png, "
              f"comparison.json, report.html")
        if config.tensorboard:
            print_tensorboard_command(config.output_dir)
    if signals.received:
        print("interrupted: the comparison holds the architectures finished so far",
              file=sys.stderr)
        return 130
    return 0
