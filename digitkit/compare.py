"""Comparison: the figures of --repeats (one architecture over several seeds) and --compare
(several architectures), their mean and spread, and the comparison's reports.

The script loops over the seeds and architectures, running its own recipe for each; this
module seeds each run, takes its figures and summarises them. Imports Keras and Matplotlib
at its top: import this module only after backend.start.
"""

import dataclasses
import logging
import sys
import time

import keras
import matplotlib.pyplot as plt

from digitkit.config import DATASETS, format_hidden
from digitkit.files import write_csv, write_json, write_text
from digitkit.folders import staged
from digitkit.metrics import spread
from digitkit.plots import save_figure
from digitkit.interrupts import StopSignals
from digitkit.messages import LOGGER
from digitkit.report import (build_record, percent_spread, print_tensorboard_command,
                             write_html_report)

log = logging.getLogger(LOGGER)


def seeded(config, seed):
    """config for one run of a loop over seeds, quiet, with Keras' random seeds set to seed."""
    keras.utils.set_random_seed(seed)
    return dataclasses.replace(config, seed=seed, quiet=True)


def run_figures(result, seed, config=None):
    """One run's headline figures, as repeats and comparisons tabulate them; said in a line
    when config (the loop's settings) is given."""
    training, scores = result["training"], result["scores"]
    kept = training["history"][training["kept_epoch"] - 1] if training["history"] else {}
    figures = dict(seed=seed, parameters=result["parameters"],
                   val_accuracy=kept.get("val_accuracy"), test_accuracy=scores["test_accuracy"],
                   test_loss=scores["test_loss"], train_seconds=training["seconds"])
    if config is not None:
        log.info(f"hidden {format_hidden(config.hidden)}, seed {seed}: test accuracy "
                 f"{figures['test_accuracy']:.4%} in {figures['train_seconds']:.1f} s")
    return figures


def summarise_repeats(runs, interrupted):
    """--repeats: the mean and spread of the runs' figures, and whether a Ctrl-C cut the
    seeds short."""
    validated = all(run["val_accuracy"] is not None for run in runs)
    summary = spread(runs, ("val_accuracy",) * validated
                     + ("test_accuracy", "test_loss", "train_seconds"))
    summary["interrupted"] = interrupted
    log.info(f"test accuracy over {len(runs)} seeds: {summary['test_accuracy_mean']:.4%} "
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


def write_tables(output_dir, rows, dataset_title):
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


def write_comparison(output_dir, config, rows, dataset_info, timing, started, interrupted):
    """Publish the comparison's files (an earlier comparison's move aside) and print its table;
    returns the exit status. started: when the run began (time.perf_counter())."""
    if not rows:
        print("interrupted before any architecture finished; nothing written", file=sys.stderr)
        return 130
    with StopSignals(during="reports"), staged(output_dir, "comparison") as stage:
        table = write_tables(stage, rows, DATASETS[config.dataset]["title"])
        timing["total_seconds"] = round(time.perf_counter() - started, 3)
        record = build_record(config, dataset_info, timing=timing, comparison=rows)
        record["interrupted"] = interrupted
        write_json(stage / "comparison.json", record)
        write_html_report(stage / "report.html", record, [stage / "comparison.png"])
    if not config.quiet:
        print("\n" + "\n".join(table))
        print(f"\nwrote {output_dir / 'comparison.csv'}, comparison.md, comparison.png, "
              f"comparison.json, report.html")
        if config.tensorboard:
            print_tensorboard_command(config.output_dir)
    if interrupted:
        print("interrupted: the comparison holds the architectures finished so far",
              file=sys.stderr)
        return 130
    return 0
