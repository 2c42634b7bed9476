"""Reports: the run's one record (metrics.json), the page rendered from it (report.html), the
terminal summary, and the record beside a saved model read back.

The record is built once, when every figure is known; every report is rendered from it.
Imports nothing heavy: --evaluate reads a saved model's record before TensorFlow loads.
"""

import base64
import datetime
import html
import json
import os
import platform
import re
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np

from digitkit import backend
from digitkit.config import (DATASETS, MIN_CONFIDENCE, MISCLASSIFIED_SHOWN, config_record,
                             defaults_for, format_hidden)
from digitkit.files import write_json, write_text
from digitkit.metrics import per_class_rows, top_confusions

PAGE = string.Template((Path(__file__).with_name("report.html")).read_text(encoding="utf-8"))


def build_record(config, dataset_info, scores=None, *, training=None, model_path=None,
                 timing=None, **sections):
    """The run's one record, what metrics.json holds and every report is rendered from.

    Built once, when every figure is known: the test scores, the training history and
    timings, and each of sections that is not None, under its own name: architecture and
    parameters (of the saved model), member_test_accuracy (a committee's members), repeats
    (the seeds of --repeats), comparison (--compare), calibration and robustness.
    """
    class_names = DATASETS[config.dataset]["classes"]
    history = training["history"] if training else []
    record = dict(config=config_record(config), dataset=dataset_info,
                  defaults=config_record(defaults_for(config.dataset)))
    if scores is not None:
        errors = int(scores["confusion_matrix"].sum() - np.trace(scores["confusion_matrix"]))
        record.update(
            test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
            error_rate=scores["error_rate"],
            confusion_matrix=scores["confusion_matrix"].tolist(),
            per_class=per_class_rows(scores, class_names),
            misclassified_shown=min(errors, MISCLASSIFIED_SHOWN))
    if training is not None:
        record.update(
            history={key: [row.get(key) for row in history]
                     for key in dict.fromkeys(k for row in history for k in row)},
            epochs_completed=training["epochs_completed"], kept_epoch=training["kept_epoch"],
            interrupted=training["interrupted"])
    else:
        record["interrupted"] = False
    if model_path is not None:
        record["model"] = str(Path(model_path).resolve())
    record.update({key: value for key, value in sections.items() if value is not None})
    versions, device = backend.environment()
    record.update(timing=timing or {}, versions=versions, device=device, run=provenance())
    return record


def provenance():
    """When and how the run was made: the date and time its record was built, the command as
    typed, the git commit of the checkout it ran from (and whether it had local changes),
    and the host's CPU."""
    # A database URL's password (--tune-storage) is never written down.
    command = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", shlex.join(["python", *sys.argv]))
    return dict(recorded_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command=command, git=git_commit(), cpu=cpu_name())


def git_commit():
    """{"commit", "local_changes"} of the checkout this package lives in; None outside one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], timeout=10,
                                capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                  "--untracked-files=no"], timeout=10, capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(commit=commit, local_changes=bool(changes))


def git_text(git):
    """A git record as one line for the page."""
    if not git:
        return "not run from a git checkout"
    return git["commit"] + (" with local changes" if git["local_changes"] else "")


def cpu_name():
    """The host's CPU model, as the operating system names it, and its core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def run_record(config, dataset_info, result, **sections):
    """build_record for a training run: result is what the script's recipe returned."""
    return build_record(config, dataset_info, result["scores"], training=result["training"],
                        architecture=result["architecture"], parameters=result["parameters"],
                        member_test_accuracy=result["members"],
                        calibration=result["calibration"], **sections)


def write_run(stage, record, images):
    """report.html and metrics.json beside the run's other files in stage; returns the paths
    of every file the run wrote, in the order the summary lists them."""
    written = [*images, write_html_report(stage / "report.html", record, images),
               write_json(stage / "metrics.json", record), stage / "model.keras"]
    return written + [stage / name for name in ("history.csv", "tuning.csv")
                      if (stage / name).exists()]


def headline_rows(record):
    """What a reader asks first, as (label, HTML) rows: data, model, accuracy, training, status."""
    dataset, timing = record["dataset"], record.get("timing", {})
    rows = [("data", f"{html.escape(dataset['title'])}: {dataset['train_size']:,} training, "
                     f"{dataset['validation_size']:,} validation and {dataset['test_size']:,} "
                     f"test images <small>({html.escape(str(dataset['source']))})</small>")]
    if "architecture" in record:
        rows.append(("model", f"{html.escape(record['architecture'])}; "
                              f"{record['parameters']:,} parameters"))
    if "model" in record:
        rows.append(("saved model", html.escape(record["model"])))
    if "test_accuracy" in record:
        rows.append(("test accuracy",
                     f'<b id="test-accuracy">{record["test_accuracy"]:.4%}</b> (error rate '
                     f'{record["error_rate"]:.4%}, loss {record["test_loss"]:.4f})'))
    repeats = record.get("repeats")
    if repeats:
        each = ", ".join(f"{seed}: {accuracy:.2%}"
                         for seed, accuracy in zip(repeats["seeds"], repeats["test_accuracy"]))
        rows.append((f"over {len(repeats['seeds'])} seeds",
                     f'<b id="repeats">{repeats["test_accuracy_mean"]:.4%} ± '
                     f'{repeats["test_accuracy_std"]:.4%}</b> '
                     f'(mean ± standard deviation; {each}); '
                     f'training {repeats["train_seconds_mean"]:.1f} ± '
                     f'{repeats["train_seconds_std"]:.1f} s'))
    if record.get("member_test_accuracy"):
        rows.append(("committee members", '<span id="members">' + ", ".join(
            f"{accuracy:.2%}" for accuracy in record["member_test_accuracy"])
            + "</span> on their own; the committee averages their probabilities"))
    if timing.get("train_seconds") is not None:
        speed = timing.get("samples_per_second")
        rows.append(("training", f'<span id="training">{record["epochs_completed"]} epochs in '
                                 f'{timing["train_seconds"]:.1f} s'
                                 + (f", {speed:,.0f} samples per second" if speed else "")
                                 + "</span>"))
    if record.get("device"):
        rows.append(("device", f'<span id="device">{html.escape(record["device"])}</span>'))
    if record["interrupted"]:
        rows.append(("status", f"interrupted after {record['epochs_completed']} finished "
                               f"epochs; the figures describe the model as it stood"))
    return rows


def html_table(header, rows):
    """A plain HTML table from a header row and rows of already-escaped cells."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(path, record, images):
    """One self-contained page rendered from the run's record: headline, tables, every image."""
    def embed(image_path):
        """An <img> tag carrying the PNG inline."""
        data = base64.b64encode(Path(image_path).read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(Path(image_path).stem)}" src="data:image/png;base64,{data}">'

    def key_values(values, header=("setting", "value")):
        """A two-column table of a flat dict, under its own column headings."""
        return html_table(header, [(html.escape(str(k)), html.escape(str(v)))
                                   for k, v in values.items()])

    dataset = record["dataset"]
    sections = ["<table class=\"headline\">" + "".join(
        f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in headline_rows(record))
        + "</table>"]
    if "per_class" in record:
        sections.append("<h2>Per-class scores (test set)</h2>" + html_table(
            ("class", "precision", "recall", "F1", "support"),
            [(html.escape(row["label"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}",
              f"{row['f1']:.4f}", row["support"]) for row in record["per_class"]]))
    if "calibration" in record:
        sections.append("<h2>Calibration (test set)</h2>" + calibration_html(record["calibration"]))
    if "robustness" in record:
        robust = record["robustness"]
        widest = max(max(result["interval95"]) for result in robust["corruptions"].values())
        sections.append(
            f"<h2>Robustness: test accuracy under corruptions</h2><p>On "
            f"{robust['images']:,} test images (a fixed "
            f"subset, seed {robust['seed']}): clean {robust['clean_accuracy']:.2%}; mean over "
            f'the 27 corrupted sets <b id="robustness-mean">{robust["mean_accuracy"]:.2%}</b>; '
            f"each figure within ±{widest:.1%} at 95% confidence (definitions: docs/trust.md)."
            f"</p>" + html_table(
                ("corruption", "parameter", "severity 1", "severity 2", "severity 3"),
                [(html.escape(name), html.escape(result["parameter"]), *(
                    f"{accuracy:.2%} <small>({html.escape(str(level))})</small>"
                    for level, accuracy in zip(result["levels"], result["accuracy"])))
                 for name, result in robust["corruptions"].items()]))
    if "comparison" in record:
        sections.append("<h2>Architectures compared (mean ± std over seeds)</h2>" + html_table(
            ("hidden layers", "parameters", "runs", "validation accuracy", "test accuracy",
             "training seconds"),
            [(format_hidden(row["hidden"]), f"{row['parameters']:,}", row["runs"],
              percent_spread(row["val_accuracy_mean"], row["val_accuracy_std"]),
              percent_spread(row["test_accuracy_mean"], row["test_accuracy_std"]),
              f"{row['train_seconds_mean']:.1f} ± {row['train_seconds_std']:.1f}")
             for row in record["comparison"]]))
    if "tuning" in record:
        sections.append(tuning_html(record["tuning"]))
    sections.append("<h2>Figures</h2>" + ("".join(
        f"<figure>{embed(p)}<figcaption>{html.escape(Path(p).name)}</figcaption></figure>"
        for p in images) or "<p>None drawn (--no-plots).</p>"))
    sections.append("<h2>Settings</h2>" + key_values(record["config"]))
    if record.get("run"):
        run = dict(record["run"], git=git_text(record["run"].get("git")))
        sections.append("<h2>The run</h2>" + key_values(run, ("what", "")))
    if record.get("timing"):
        sections.append("<h2>Timings</h2>" + key_values(record["timing"], ("stage", "seconds")))
    sections.append("<h2>Versions</h2>" + key_values(record["versions"], ("package", "version")))
    status = " (interrupted)" if record["interrupted"] else ""
    return write_text(path, PAGE.substitute(title=html.escape(dataset["title"]), status=status,
                                            sections="".join(sections)))


def tuning_html(record):
    """--tune's part of report.html: what the search ran, and its best trials."""
    rows = "".join(f"<tr><td>{t['number']}</td><td>{t['val_accuracy']:.2%}</td>"
                   f"<td>{html.escape(json.dumps(t['params']))}</td></tr>"
                   for t in record["best"])
    return (f"<h2>Search (--tune)</h2><p>Study {html.escape(record['study'])} in "
            f"{html.escape(record['storage'])}: {record['complete']} complete, "
            f"{record['pruned']} pruned, {record['failed']} failed or stopped trials "
            f"({record['seconds']:.0f} s here). The best trial below was trained again as "
            f"this run; trials are scored on the validation split, never the test set.</p>"
            f"<table><tr><th>trial</th><th>validation accuracy</th><th>settings</th></tr>"
            f"{rows}</table>")


def calibration_html(calibration):
    """The calibration section of report.html: ECE and NLL before and after, the unsure table."""
    if calibration.get("saved_model"):
        rows = [("the saved model's probabilities", calibration["before"])]
        intro = "The saved model's probabilities as they are, against its test-set accuracy."
    elif calibration["fitted"]:
        rows = [("as trained", calibration["before"]),
                (f"calibrated (temperature {calibration['temperature']:.3f})",
                 calibration["after"])]
        intro = (f"Temperature scaling fitted on the {calibration['validation_size']:,} "
                 f"validation images (no test image used); model.keras holds it.")
    else:
        rows = [("as trained", calibration["before"])]
        intro = "No calibration fitted: the run had no validation split (--validation-split 0)."
    page = f"<p>{intro}</p>" + html_table(
        ("probabilities", f"ECE ({calibration['bins']} bins)", "NLL"),
        [(html.escape(label), f"{figures['ece']:.3%}", f"{figures['nll']:.4f}")
         for label, figures in rows])
    if calibration.get("validation_unsure"):
        page += ("<p>Answers below --min-confidence are marked unsure by --predict "
                 f"(default {MIN_CONFIDENCE:g}). On the validation split:</p>" + html_table(
                     ("--min-confidence", "unsure answers", "sure answers right",
                      "unsure answers right"),
                     [(f"{row['min_confidence']:g}", f"{row['unsure_share']:.2%}",
                       "n/a" if row["sure_accuracy"] is None else f"{row['sure_accuracy']:.2%}",
                       "n/a" if row["unsure_accuracy"] is None
                       else f"{row['unsure_accuracy']:.2%}")
                      for row in calibration["validation_unsure"]]))
    return page


def percent_spread(mean, std):
    """Mean ± std as percentages, or n/a."""
    return "n/a" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def print_summary(record, paths, quiet):
    """Test accuracy, per-class table, weakest classes, top confusions and files written."""
    if quiet:
        return
    class_names = DATASETS[record["dataset"]["name"]]["classes"]
    if record.get("member_test_accuracy"):
        print("committee members' test accuracy: " + ", ".join(
            f"{accuracy:.2%}" for accuracy in record["member_test_accuracy"]))
    status = "INTERRUPTED run, " if record["interrupted"] else ""
    print(f"\n{status}test accuracy {record['test_accuracy']:.4%}  "
          f"error rate {record['error_rate']:.4%}  test loss {record['test_loss']:.4f}  "
          f"(device: {record['device']})")
    width = max(len(name) for name in class_names)
    print(f"\n{'class':>{width}}  precision  recall     f1  support")
    for row in record["per_class"]:
        print(f"{row['label']:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
              f"{row['f1']:5.4f}  {row['support']:7d}")
    # A class with no test images has no recall to rank: it is named apart.
    tested = [row for row in record["per_class"] if row["support"] > 0]
    weakest = sorted(tested, key=lambda row: row["recall"])[:5]
    untested = [row["label"] for row in record["per_class"] if row["support"] == 0]
    print("\nlowest recall: " + ", ".join(f"{r['label']} ({r['recall']:.2%})" for r in weakest)
          + (f"; no test images of {', '.join(untested)}" if untested else ""))
    confusion = np.array(record["confusion_matrix"])
    pairs = top_confusions(confusion, class_names)
    if pairs:
        print("most frequent confusions: " + "; ".join(
            f"{truth} taken for {predicted}: {times} times" for truth, predicted, times in pairs))
    calibration, robust = record.get("calibration"), record.get("robustness")
    if calibration and calibration["fitted"]:
        print(f"calibration: temperature {calibration['temperature']:.3f} fitted on the "
              f"validation split; test ECE {calibration['before']['ece']:.3%} -> "
              f"{calibration['after']['ece']:.3%}, NLL {calibration['before']['nll']:.4f} -> "
              f"{calibration['after']['nll']:.4f}")
    elif calibration:
        what = "" if calibration.get("saved_model") else "none fitted (no validation split); "
        print(f"calibration: {what}test ECE {calibration['before']['ece']:.3%}, NLL {calibration['before']['nll']:.4f}")
    if robust:
        worst = min(((name, level, accuracy) for name, result in robust["corruptions"].items()
                     for level, accuracy in zip(result["levels"], result["accuracy"])),
                    key=lambda item: item[2])
        print(f"robustness: mean accuracy {robust['mean_accuracy']:.2%} over 27 corrupted sets "
              f"of {robust['images']:,} test images (clean {robust['clean_accuracy']:.2%}); "
              f"hardest: {worst[0]} ({worst[1]}) {worst[2]:.2%}")
    print("\nwrote:")
    for path in paths:
        print(f"  {Path(path).resolve()}")
    if record["config"].get("tensorboard"):
        print_tensorboard_command(record["config"]["output_dir"])


def tensorboard_logs(output_dir):
    """The folder --tensorboard writes under OUTPUT_DIR: one sub-folder per training run."""
    return Path(output_dir) / "tensorboard"


def print_tensorboard_command(output_dir):
    """The command that shows --tensorboard's logs."""
    print(f"\nTensorBoard logs (per-epoch scalars and the model graph): "
          f"tensorboard --logdir {shlex.quote(str(tensorboard_logs(output_dir)))}")


def saved_record(model_path):
    """The record (metrics.json beside it) of the run that saved model_path, or None."""
    try:
        return json.loads((Path(model_path).parent / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def recorded_data(model_path):
    """The dataset and data directory of the run that saved model_path, or None when there
    is no readable record."""
    record = saved_record(model_path)
    try:
        dataset, data_dir = record["config"]["dataset"], record["config"]["data_dir"]
        if not isinstance(dataset, str) or dataset not in DATASETS:
            return None
        if data_dir is not None:
            data_dir = record["dataset"]["source"]  # resolved when the run read it
        if data_dir is not None and not isinstance(data_dir, str):  # not a record of ours
            return None
        return dict(dataset=dataset, data_dir=data_dir)
    except (KeyError, TypeError):
        return None
