"""`leankd` command line: a thin layer over `leankd.api`. User mistakes exit with code 2 and one clear message."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand
from rich.markup import escape

from .cli_recipes import recipes_app
from .errors import LeanKDError

# add_completion: typer's `--install-completion` / `--show-completion` for bash, zsh, fish and PowerShell
app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="leankd: distill a teacher into a small student and report what the compression bought.")
app.add_typer(recipes_app, name="recipes")
# Not a terminal (a pipe, a file, CI logs): rich would squeeze tables into 80 columns and cut cells with "…", and
# wrap long lines inside markdown rows. There the width is unbounded: every line is printed whole, and a table only
# as wide as its cells make it.
PIPED_WIDTH = 100_000


def _full_width_when_piped(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=PIPED_WIDTH)


console = _full_width_when_piped()
err_console = _full_width_when_piped(stderr=True)


def friendly_errors(fn):
    """Turn LeanKDError into 'error: ...' + exit code 2 (no traceback); Ctrl-C says how to resume."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LeanKDError as e:
            # the message is text: `pip install 'leankd[text]'` must not lose `[text]` to rich markup
            if not _echo_of_rank0(e):  # under torchrun, rank 0's own error is printed once, by rank 0
                err_console.print(f"[bold red]error:[/] {_rank_prefix()}{escape(str(e))}", highlight=False,
                                  soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: the last finished epoch is checkpointed; rerun with --resume to continue")
            raise typer.Exit(130) from None
        except Exception as e:
            if not _lost_peer(e):
                raise
            err_console.print(f"[bold red]error:[/] {_rank_prefix()}lost contact with the other processes of this run "
                              "(one of them stopped: its own output, or torchrun's summary, says which and why); the "
                              "last finished epoch is checkpointed: rerun with --resume and the same number of "
                              f"processes to continue. ({escape(type(e).__name__)}: {escape(str(e).splitlines()[0])})",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            _leave_process_group()

    return wrapper


def _under_torchrun() -> bool:
    """Whether torchrun started this process as one of several (its environment; `core.dist` would import torch)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank_prefix() -> str:
    import os

    return f"rank {os.environ['RANK']}: " if _under_torchrun() else ""


def _echo_of_rank0(e: Exception) -> bool:
    from .core.dist import PeerError

    return isinstance(e, PeerError)


def _lost_peer(e: Exception) -> bool:
    """A collective failed because another rank went away (gloo: connection closed or reset; any backend: timeout)."""
    if not _under_torchrun():
        return False
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(e).lower()  # gloo's collectives raise plain RuntimeErrors naming the closed connection
    return "gloo" in text and any(w in text for w in ("connection closed", "connection reset", "broken pipe",
                                                      "timed out"))


def _leave_process_group() -> None:
    import sys as _sys

    if "torch.distributed" in _sys.modules:  # only when a run joined one: importing torch costs seconds
        from .core.dist import shutdown

        shutdown()


def _print_version(value: bool) -> None:
    if value:
        from .core.version import __version__

        console.print(f"leankd {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _one_process_commands(ctx: typer.Context, version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print leankd's version and exit")) -> None:
    """Under torchrun only `run` (and `search`, which refuses with its own message) may start: the other commands
    train nothing, and N copies of them would write the same files."""
    import os

    if _under_torchrun() and ctx.invoked_subcommand not in ("run", "search"):
        if os.environ.get("RANK", "0") == "0":
            err_console.print(f"[bold red]error:[/] leankd {ctx.invoked_subcommand} runs in one process: start it "
                              "without torchrun (only `leankd run` trains data-parallel)", highlight=False)
        raise typer.Exit(2)


def _parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; anything else is a clear error before any work."""
    from .errors import RecipeError

    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise RecipeError(f"--seeds {text!r}: give comma-separated integers >= 0, e.g. --seeds 0,1,2")
    return [int(p) for p in parts]


@app.command()
@friendly_errors
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML, or the name of a shipped one (`leankd recipes list`)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="default: <output_dir>/<name> from the recipe"),
    force: bool = typer.Option(False, "--force", help="redo every stage even if its artifacts exist"),
    resume: bool = typer.Option(False, "--resume", help="continue a stage that was interrupted"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars (CI, logs)"),
    overrides: List[str] = typer.Option([], "--set", help="override a recipe value: --set train.epochs=5"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="train the students once per seed on one split and "
                                        "report mean ± sd and paired KD-vs-baseline differences: --seeds 0,1,2"),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="train data-parallel on this many processes of "
                                        "this machine (starts torchrun; GPUs: one per process)"),
):
    """Run a recipe: teacher -> baseline student -> distilled student -> measure -> report."""
    from .api import run as run_recipe
    from .recipe import load_recipe

    seed_list = _parse_seeds(seeds) if seeds is not None else None
    loaded = load_recipe(recipe, overrides)
    if nproc is not None:
        from .pipeline import check_global_batches

        check_global_batches(loaded, nproc)  # a recipe that cannot split fails here, before any process starts
        raise typer.Exit(_torchrun(nproc))
    result = run_recipe(loaded, run_dir=run_dir, force=force, resume=resume, quiet=quiet, console=console,
                        seeds=seed_list)
    if result is not None:  # under torchrun only rank 0 has the report
        _print_result(result)


def _torchrun(nproc: int) -> int:
    """`leankd run ... --nproc N`: this same command under `torchrun --standalone --nproc-per-node N` (one machine;
    for several machines call torchrun yourself, see the README), launched in this process so that a failure comes
    back as which rank stopped and how, not as the launcher's traceback. Returns the exit code: 0, 2 when the ranks
    stopped on a user error (rank 0 printed it), 1 when a rank died."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run as launch

    from .errors import RecipeError

    if _under_torchrun():
        raise RecipeError("--nproc starts torchrun, but this process already runs under torchrun: drop --nproc")
    argv, skip = [], False
    for arg in sys.argv[1:]:  # the command line without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    try:
        launch(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "leankd", *argv]))
    except ChildFailedError as e:
        if all(f.exitcode == 2 for f in e.failures.values()):
            return 2
        rank, failure = e.get_first_failure()
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        err_console.print(f"[bold red]error:[/] rank {rank} of {nproc} {how} (pid {failure.pid}); the other "
                          f"processes were stopped. Each stage's last finished epoch is checkpointed: rerun with "
                          f"--resume --nproc {nproc} to continue.", highlight=False, soft_wrap=True)
        return 1
    return 0


@app.command()
@friendly_errors
def search(
    recipe: Path = typer.Argument(..., help="recipe YAML with a search: section"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="default: <output_dir>/<name>-search"),
    resume: bool = typer.Option(False, "--resume", help="continue a search (finished trials are kept; a trial cut "
                                                        "off mid-training resumes from its checkpoint)"),
    force: bool = typer.Option(False, "--force", help="start the search over (the study is deleted; trained runs "
                                                      "with the same settings are still reused)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="study storage shared by workers on several "
                                                                  "machines, e.g. postgresql://user@host/db "
                                                                  "(default: a journal file in the search dir)"),
    workers: int = typer.Option(1, "--workers", min=1, help="worker processes on this machine sharing the study"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines"),
    overrides: List[str] = typer.Option([], "--set", help="override a recipe value: --set search.trials=8"),
    join: bool = typer.Option(False, "--join", hidden=True, help="a worker joining a running search"),
    kill_after_trials: Optional[int] = typer.Option(None, "--kill-after-trials", hidden=True,
                                                    help="tests: SIGKILL itself in the next trial after N trials"),
):
    """Search KD settings and student sizes with Optuna: the Pareto front of quality vs cost, a leaderboard and an
    experiment report (teacher trained once; candidates confirmed over seeds beside same-budget baselines)."""
    if _under_torchrun():
        from .errors import RecipeError

        raise RecipeError("leankd search runs its trials side by side with --workers N (one process each, sharing "
                          "the study); it does not run under torchrun: start it without torchrun")
    from .api import search as run_search

    summary = run_search(recipe, overrides=overrides, run_dir=run_dir, resume=resume, force=force, storage=storage,
                         workers=workers, quiet=quiet, console=console, join=join,
                         kill_after_trials=kill_after_trials)
    if summary is None:
        return
    for sentence in summary["conclusion"]["sentences"]:
        console.print(f"- {sentence}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"report: {summary['dir']}/search_report.md  (leaderboard.md, leaderboard.csv, search.json)",
                  highlight=False, markup=False)


@app.command()
@friendly_errors
def leaderboard(
    dirs: List[Path] = typer.Argument(..., help="run directories and/or search directories"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the table as markdown here"),
):
    """Compare runs and searches across directories: every model and completed trial, with the accuracy-vs-MACs
    front across all of them marked."""
    from .io import write_text_atomic
    from .search.leaderboard import collect, to_markdown

    table = to_markdown(collect(dirs))
    console.print(table, highlight=False, soft_wrap=True, markup=False)
    if out is not None:
        write_text_atomic(out, table)


def _print_result(result) -> None:
    from .report.markdown import render_console, render_console_deployment, sanity_console_caption

    console.print(render_console(result.report))
    deployment = render_console_deployment(result.report)
    if deployment is not None:
        console.print(deployment)
    gain = result.report.get("ratios", {}).get("kd_gain_points")
    if gain is not None:  # over seeds, the table's caption already gave the paired figure: no one-seed line here
        line = sanity_console_caption(result.report) or (
            None if result.report.get("seeds") else f"KD gain over the baseline: {gain:+.2f} points")
        if line:
            console.print(line, highlight=False, markup=False)
    console.print(f"report: {result.run_dir / 'report.md'}  (json: {result.run_dir / 'report.json'})", highlight=False,
                  markup=False)


def _reported_targets(run_dir: Path) -> list[str]:
    """The compression targets a finished run's report holds (earlier `leankd compress`/`export` calls included);
    none when there is no readable report (the run is then measured in full anyway)."""
    from .report import load_report

    if not (run_dir / "report.json").is_file():
        return []
    try:
        models = load_report(run_dir)["models"]
    except LeanKDError:
        return []
    return [m["artifact"]["target"] for m in models.values() if m.get("artifact")]


def _rerun_with_targets(run_dir: Path, targets: list[str], quiet: bool, overrides: Optional[list[str]] = None,
                        remeasure: bool = False):
    """Re-open a finished run to add compression targets: every training stage is reused (same fingerprint).
    The targets are added to the run's report and compressed/ (earlier ones stay); only the new artifacts and the
    fp32 student they are timed against are measured, unless `remeasure` (or a measure.* override, which would
    make the old numbers incomparable) rebuilds every target and re-measures every model."""
    from .api import run as run_recipe
    from .recipe import load_recipe

    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.exists():
        raise LeanKDError(f"{run_dir} is not a run directory (no recipe.yaml): pass the directory `leankd run` made")
    base = load_recipe(recipe_path)
    # the run's recipe.yaml is never rewritten by compress/export: the targets added earlier are in its report
    everything = list(dict.fromkeys([*base.compress.targets, *_reported_targets(run_dir), *targets]))
    r = load_recipe(recipe_path, [f"compress.targets=[{', '.join(everything)}]", *(overrides or [])])
    remeasure = remeasure or any(o.startswith("measure.") for o in overrides or [])
    added = None
    if not remeasure:  # what the requested targets expand to (qat brings int8-static and qat-control)
        added = type(r.compress)(**{**r.compress.model_dump(), "targets": targets}).targets
    return run_recipe(r, run_dir=run_dir, quiet=quiet, console=console, add_targets=added, require_finished=True)


class _TargetsHelp(TyperCommand):
    """`leankd compress --help` lists the registered compression targets (leankd.compress.targets, the single source
    of their names), read when the help is shown so that every other command starts without importing them."""

    def format_help(self, ctx, formatter):
        from .compress.targets import TARGETS

        for param in self.params:
            if param.name == "to":
                param.help = f"targets: {' '.join(TARGETS.names())}"
        self.epilog = "Targets:\n\n" + "\n\n".join(f"{name}: {t.description}" for name, t in TARGETS.items())
        return super().format_help(ctx, formatter)


@app.command(cls=_TargetsHelp, context_settings={"allow_extra_args": True})
@friendly_errors
def compress(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    to: List[str] = typer.Option(..., "--to", help="targets (listed below)"),
    overrides: List[str] = typer.Option([], "--set", help="compression settings: --set compress.qat.epochs=3"),
    remeasure: bool = typer.Option(False, "--remeasure", help="rebuild every target of the run (earlier ones too) "
                                                              "and re-measure every model together"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Make deployment artifacts of the KD student and measure them beside the fp32 models:
    `leankd compress runs/demo --to fp16 int8-dynamic int8-static qat`. `qat` fine-tunes with the teacher
    (quantization-aware distillation) and is reported beside int8-static and its same-budget control.
    Artifacts are added to the run's earlier ones; each new one is timed interleaved with the fp32 student."""
    for o in overrides:
        if not o.startswith(("compress.", "measure.")):
            raise LeanKDError(f"--set {o}: `leankd compress` changes only compress.* and measure.* settings (anything "
                              "else would retrain the stages); use `leankd run --set ...` for the rest")
    _print_result(_rerun_with_targets(run_dir, list(to) + list(ctx.args), quiet, overrides, remeasure))


@app.command()
@friendly_errors
def export(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    format: str = typer.Option("onnx", "--format", help="onnx (fp32), int8 (ONNX Runtime static int8)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="rebuild every target of the run and re-measure "
                                                              "every model together"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Export the KD student for the edge (ONNX, checked against PyTorch and timed with ONNX Runtime); earlier
    artifacts of the run stay."""
    targets = {"onnx": ["onnx"], "int8": ["onnx", "int8-static"]}
    if format not in targets:
        raise LeanKDError(f"--format {format!r} is not supported; choose one of: {', '.join(targets)}")
    result = _rerun_with_targets(run_dir, targets[format], quiet, remeasure=remeasure)
    _print_result(result)
    console.print(f"artifacts: {run_dir / 'compressed'}", highlight=False, markup=False)


@app.command()
@friendly_errors
def layers(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where trained teacher/baseline weights are "
                                                                    "(default: <output_dir>/<name>)"),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="propose only the k best pairs"),
    student_layers: List[str] = typer.Option([], "--student", help="module-name patterns, e.g. 'layer*'"),
    teacher_layers: List[str] = typer.Option([], "--teacher", help="module-name patterns, e.g. 'layer*.?'"),
    overrides: List[str] = typer.Option([], "--set", help="override a recipe value"),
):
    """Rank the teacher's layers and propose a student->teacher layer matching (linear CKA on a few batches),
    the analysis behind `distill.features: [{kind: hint, pairs: auto, top_k: N}]`."""
    from .api import layers as analyze
    from .recipe import load_recipe
    from .report.layers import render_layers

    analysis, notes = analyze(load_recipe(recipe, overrides), run_dir=run_dir, top_k=top_k,
                              student_layers=student_layers or None, teacher_layers=teacher_layers or None)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    for table in render_layers(analysis):
        console.print(table)


@app.command()
@friendly_errors
def validate(recipe: Path = typer.Argument(..., help="recipe YAML"),
             overrides: List[str] = typer.Option([], "--set", help="override a recipe value: --set train.epochs=5")):
    """Check a recipe without running it and print its resolved form (every default filled in): models are built,
    checkpoint files, the device and the data folder's layout are checked; what needs data or packages that are not
    here is listed as not checked."""
    from .recipe import dump_recipe, load_recipe
    from .validate import check_recipe

    r = load_recipe(recipe, overrides)
    unchecked = check_recipe(r)
    console.print(dump_recipe(r), highlight=False, markup=False)
    for line in unchecked:
        console.print(f"not checked: {line}", highlight=False, soft_wrap=True, markup=False, style="yellow")
    console.print(f"{recipe}: valid" + (f" ({len(unchecked)} thing(s) not checked, above)" if unchecked else ""),
                  style="green", highlight=False, markup=False)


@app.command()
@friendly_errors
def report(run_dir: Path = typer.Argument(..., help="a run directory holding report.json"),
           remeasure: bool = typer.Option(False, "--remeasure", help="re-time the models' CPU latency from the weights "
                                          "on disk (e.g. after timings were flagged noisy) and rewrite the report"),
           threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for --remeasure "
                                                 "(default: the recipe's measure.threads, else torch's setting)")):
    """Re-render report.md and the plots of a finished run from its report.json; with --remeasure, time its models
    again first (the old report is kept until the new one is complete)."""
    from .report import load_report, write_markdown, write_plots
    from .report.markdown import render_console

    if threads is not None and not remeasure:
        raise LeanKDError("--threads sets the threads of a re-measure: add --remeasure "
                          f"(`leankd report {run_dir} --remeasure --threads {threads}`)")
    if remeasure:
        from .api import remeasure as remeasure_run

        rep = remeasure_run(run_dir, threads=threads, console=console)
    else:
        rep = load_report(run_dir)
        write_markdown(run_dir, rep, plots=write_plots(rep, run_dir))
    console.print(render_console(rep))
    console.print(f"report: {run_dir / 'report.md'}", highlight=False, markup=False)


@app.command()
@friendly_errors
def compare(run_dirs: List[Path] = typer.Argument(..., help="run directories"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the table here")):
    """Put several runs side by side in one markdown table."""
    from .io import write_text_atomic
    from .report import compare_runs

    table = compare_runs(list(run_dirs))
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    if output:
        write_text_atomic(output, table)


@app.command()
def models():
    """List the registered model names (torchvision:NAME, timm:NAME and python:module:callable work too)."""
    from .models import list_models

    console.print(" ".join(list_models()), highlight=False, markup=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
