"""`robustgrid`: run, eval, show, sweeps, models, data fetch, bench.

Bad input (sweep file, override, checkpoint, data folder) ends with exit status 2 and
one line that names the problem and its key path; nothing is written.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from rich.markup import escape

from .console import console
from .results.location import shown
from .results.render import FORMATS

EXIT_BAD_INPUT = 2
EXIT_TRIALS_FAILED = 1
EXIT_WRITE_FAILED = 3
# A write the machine refused: the run stops with one line; atomic writes leave finished files intact.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .provenance import version_line
        print(version_line())
        parser.exit()


def _at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustgrid", description="Robustness benchmark runner for small image classifiers.")
    p.add_argument("--version", action=_VersionAction, help="print the package version and git commit, then exit")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a sweep's trials, evaluate its grid, write Parquet")
    run.add_argument("sweep", help="sweep file (YAML), or the name of a bundled one (`robustgrid sweeps`)")
    run.add_argument("--out", help="results folder (default results/<sweep name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a sweep key, e.g. --set evaluate.eps=[0,0.03] (repeatable)")
    run.add_argument("--executor", choices=["ray", "inline"], default="ray",
                     help="ray (default): Tune trials and Ray tasks; inline: one process, for debuggers")
    run.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                     help="Ray cluster to join (auto, HOST:PORT); default: start Ray in this process")
    run.add_argument("--resume", action="store_true", help="continue a crashed or interrupted sweep")

    ev = sub.add_parser("eval", help="re-evaluate a results folder's checkpoints with a new grid, or evaluate "
                                     "models robustgrid did not train (--model)")
    ev.add_argument("results", nargs="?", help="results folder of a previous run (without --model)")
    ev.add_argument("--model", dest="models", action="append", default=[], metavar="SPEC",
                    help="a torch.export archive (.pt2), a TorchScript file, or robustbench:NAME (repeatable)")
    ev.add_argument("--model-dir", help="RobustBench's model folder (default ./models)")
    ev.add_argument("--threat-model", choices=["Linf", "L2", "corruptions"], help="RobustBench's leaderboard (default Linf)")
    ev.add_argument("--out", help="results folder for --model (default results/eval)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. --set evaluate.eps=[0,8/255] --set data.dataset=synthetic (repeatable)")
    ev.add_argument("--executor", choices=["ray", "inline"], default="ray")
    ev.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))

    show = sub.add_parser("show", help="rich tables of a results folder")
    show.add_argument("results")
    show.add_argument("--quant", action="append", help="only this quant mode (repeatable)")
    show.add_argument("--defense", action="append", help="only this defense (repeatable)")
    show.add_argument("--trial", action="append", help="only this trial id (repeatable)")
    show.add_argument("--attack", action="append", help="only this attack (repeatable)")
    show.add_argument("--source", action="append", choices=["self", "fp32"], help="only this attack source")
    show.add_argument("--threat", action="append", choices=["oblivious", "adaptive"], help="only this threat model")
    show.add_argument("--norm", action="append", choices=["linf", "l2"], help="only this norm")
    show.add_argument("--eps", action="append", help="only this eps (8/255 or 0.0314; repeatable)")
    show.add_argument("--n", action="append", type=int, help="only the cells of this many images")
    show.add_argument("--plots", action="store_true", help="also (re)write the PNG plots")
    show.add_argument("--format", default="rich", choices=FORMATS,
                      help="rich (terminal), markdown (papers, READMEs), csv, json (scripts)")

    report = sub.add_parser("report", help="one self-contained HTML page of a results folder")
    report.add_argument("results")
    report.add_argument("-o", "--output", help="HTML file to write (default RESULTS/report.html)")

    sub.add_parser("sweeps", help="list the sweep files that come with robustgrid")

    models = sub.add_parser("models", help="list registered models with parameters and sizes")
    models.add_argument("--model", action="append", help="only this model (repeatable; default: every one)")
    models.add_argument("--results", metavar="DIR", help="instead: the models a results folder evaluated, trained "
                                                         "here or not (source, architecture, parameters, sha256)")

    data = sub.add_parser("data", help="data sets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    fetch = dsub.add_parser("fetch", help="download a data set into the data root")
    fetch.add_argument("name", help="a data set with files to fetch: cifar10, cifar100, svhn, cifar10c (CIFAR-10-C)")
    fetch.add_argument("--root", help="data root (default $ROBUSTGRID_DATA or ~/.cache/robustgrid)")

    bench = sub.add_parser("bench", help="measure the engine against the reference pipeline")
    bench.add_argument("--quick", action="store_true", help="small sizes: about a minute on 2 CPU cores")
    bench.add_argument("--json", help="write the measurements as JSON here")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--grid", default="quickstart", choices=["quickstart", "notebook", "adaptive", "autoattack"],
                       help="(a) on this sweep's grid: quickstart (simple_cnn), the CIFAR-10 notebook's (improved_cnn), "
                            "adaptive (FGSM + PGD-10, oblivious and adaptive, simple_cnn), or autoattack (ours, in one process and "
                            "in a shard per core, against the authors' code and torchattacks' components: a standard "
                            "model at L-inf 1/255 and L2 0.1, an FGSM-RS one at 8/255 and 0.5; default 100 images)")
    bench.add_argument("--images", type=int, help="test images for (a) and (b) (default 200 with --quick, else 1000)")
    bench.add_argument("--repeats", type=_at_least_one, default=1,
                       help="--grid autoattack: rounds of the in-process implementations, in turn; each keeps its "
                            "fastest (default 1)")
    bench.add_argument("--quant-modes", action="store_true",
                       help="instead: every quant mode's inference images/s, accuracy and size (simple_cnn)")
    bench.add_argument("--adversarial-training", action="store_true",
                       help="instead: seconds per epoch of standard, FGSM-RS, PGD-7 and TRADES training "
                            "(--images training images, default 5000; --model, default simple_cnn)")
    bench.add_argument("--model", default="simple_cnn", help="the model of --adversarial-training")
    bench.add_argument("--ray-overhead", action="store_true",
                       help="instead: a 4-trial sweep through Ray, wall time outside trials and evaluation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..models import CheckpointError
    from ..models.external import ExternalModelError
    from .data import DataError, DownloadError
    from .results.store import DamagedTable
    from .spec import SpecError
    try:
        return COMMANDS[args.command](args) or 0
    except (SpecError, CheckpointError, ExternalModelError, DataError, DownloadError, DamagedTable) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        console.print(f"[red]error:[/red] a write failed{where}: {escape(e.strerror or str(e))}. Every finished file is "
                      "intact; free space and rerun the same command with --resume.", highlight=False, soft_wrap=True)
        return EXIT_WRITE_FAILED
    except BrokenPipeError:     # `robustgrid show DIR | head`: the reader has what it wanted, not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # Python's exit flush must not fail again
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted.[/yellow] Finished trials and eval cells are saved; "
                      "continue with the same command and --resume.")
        return 130


def cmd_run(args) -> int:
    from .bundled import resolve_sweep
    from .execute.run import run_sweep
    from .spec import load_spec
    spec, raw = load_spec(resolve_sweep(args.sweep), args.overrides)   # validates everything before anything is written

    def announce(sweep) -> None:
        searched = spec.search.algorithm in ("optuna", "hyperopt")
        count = f"{spec.num_samples} trial(s) drawn by {spec.search.algorithm}" if searched else f"{len(spec.trial_configs())} trial(s)"
        models = f" and {len(spec.models)} model(s) robustgrid did not train" if spec.models else ""
        console.print(f"sweep [bold]{spec.name}[/bold]: {count}{models} -> {shown(sweep.out)}")

    sweep = run_sweep(spec, raw, args.out, args.executor, args.address, args.resume, on_start=announce, on_done=_views)
    return _status(sweep)


def _status(sweep) -> int:
    """0 only when every trial of the sweep finished; each failed one is named with its error."""
    trials = sweep.store.read("trials")
    ids = {t["trial_id"] for t in sweep.trials()}
    failed = trials[trials["trial_id"].isin(ids) & (trials["status"] == "failed")]
    if len(failed):
        console.print(f"[red]{len(failed)} trial(s) failed[/red]:", highlight=False)
        for r in failed.sort_values("trial_id").to_dict("records"):
            console.print(f"  {r['trial_id']}: {escape(str(r.get('error') or 'failed'))}", highlight=False, soft_wrap=True)
        console.print(f"(also under the trials table of robustgrid show {shown(sweep.out)})", highlight=False)
        return EXIT_TRIALS_FAILED
    return 0


def cmd_eval(args) -> int:
    if args.models:
        return _eval_models(args)
    from .execute import FolderLock, Sweep
    from .spec import SpecError, load_spec
    if not args.results:
        raise SpecError("eval: name a results folder, or models to evaluate with --model SPEC")
    from .results.location import FOR_RUN, refresh, results_location
    root = results_location(args.results, "results", skip=FOR_RUN)
    if not (root / "sweep.yaml").exists():
        raise SpecError(f"{root}: not a results folder (no sweep.yaml)")
    spec, raw = load_spec(root / "sweep.yaml", args.overrides)
    sweep = Sweep(spec, raw, root)
    from ..models import read_checkpoint
    selected = sweep.selected_checkpoints()
    if not selected:
        raise SpecError(f"{root}: no trained checkpoints to evaluate")
    for trial in selected:
        if not sweep.is_external(trial):     # a brought model is checked as it loads (ExternalModelError, exit 2)
            read_checkpoint(trial["checkpoint"])
    with FolderLock(root):
        refresh(root)
        sweep.store.set_aside_damaged()
        sweep.write_spec(current=False)     # runs/<run id>.yaml: the grid this eval ran; sweep.yaml stays
        if args.executor == "inline":
            from .execute import evaluate_inline
            evaluate_inline(sweep)
        else:
            from .execute import evaluate_ray
            evaluate_ray(sweep, address=args.address)
        _views(root)
    return 0


def _eval_models(args) -> int:
    """`eval --model SPEC ...`: a sweep of those models alone (no training), through the one run flow."""
    from .execute.run import run_sweep
    from .spec import SpecError, set_override, validate
    if args.results:
        raise SpecError(f"eval: --model evaluates into --out, not into {args.results} (re-evaluate a folder without --model)")
    # absolute paths: the folder's sweep.yaml must name the same files from wherever it is re-evaluated
    options = {k: v for k, v in (("model_dir", args.model_dir and str(Path(args.model_dir).expanduser().resolve())),
                                 ("threat_model", args.threat_model)) if v}
    raw = {"name": "eval", "models": [{"spec": m if m.startswith("robustbench:") else str(Path(m).expanduser().resolve()),
                                       **options} for m in args.models]}
    for assignment in args.overrides:
        set_override(raw, assignment)
    if any(not m.startswith("robustbench:") for m in args.models) and "quant" not in (raw.get("evaluate") or {}):
        raw.setdefault("evaluate", {})["quant"] = ["fp32"]   # a graph takes no quant mode (see _check_models)
        console.print("quant: fp32 (a torch.export / TorchScript graph has no modules an int8 mode could convert)")
    spec = validate(raw, "eval --model")
    sweep = run_sweep(spec, raw, args.out, args.executor, args.address, on_done=_views,
                      on_start=lambda s: console.print(f"evaluating {len(spec.models)} model(s) -> {shown(s.out)}"))
    return 0 if sweep.external_models() else 1


def _views(root: Path) -> None:
    from .results import plot_all, show
    show(root)
    paths = plot_all(root)
    console.print(f"results in {shown(root)} ({len(paths)} plots under plots/)")


def cmd_report(args) -> int:
    import time

    from .results import write_report
    from .results.store import results_folder
    root = results_folder(args.results)
    t0 = time.perf_counter()
    path = write_report(root, Path(args.output) if args.output else None)
    console.print(f"report: {shown(path)} ({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)", highlight=False)
    return 0


def cmd_show(args) -> int:
    from .results import plot_all, show
    from .results.report import NothingMatched
    from .results.store import results_folder
    from .spec import SpecError, parse_eps
    root = results_folder(args.results)
    try:
        eps = [parse_eps(e) for e in args.eps] if args.eps else None
    except ValueError as e:
        raise SpecError(f"--eps: {e}") from None
    try:
        show(root, args.quant, args.defense, args.trial, fmt=args.format, attack=args.attack, source=args.source,
             threat=args.threat, norm=args.norm, eps=eps, n=args.n)
    except NothingMatched as e:
        console.print(f"[yellow]{e}[/yellow]", highlight=False)
        return 1
    if args.plots:
        plot_all(root)
    return 0


def cmd_models(args) -> int:
    """Every registered model in every quant mode: the bytes shipped (torch.save of what the mode
    stores, measured) and the share of the parameters held in 8 bits (what the mode quantizes)."""
    from rich.console import Console

    from ..models import QUANT, create_model, model_names, sizes_per_mode
    from .results import render
    from .results.views import quant_sizes_view
    if args.results:
        from .results.store import ResultStore, results_folder
        from .results.views import folder_models_view
        render([folder_models_view(ResultStore(results_folder(args.results)).read("trials"))], "rich", Console())
        return 0
    wanted = args.model or model_names()
    unknown = [m for m in wanted if m not in model_names()]
    if unknown:
        from .spec import SpecError
        raise SpecError(f"--model: unknown model {unknown[0]!r}; known: {', '.join(model_names())}")
    from .console import progress_bar
    sizes = {}
    with progress_bar() as bar:      # on stderr's console: quantizing every model takes minutes (int8_static compiles)
        task = bar.add_task("models x quant modes", total=len(wanted) * len(QUANT.names()))
        for name in wanted:
            model = create_model(name).eval()

            def next_mode(mode: str, name=name) -> None:
                bar.update(task, description=f"{name} {mode}", advance=0 if mode == QUANT.names()[0] else 1)
            sizes[name] = (sum(p.numel() for p in model.parameters()), sizes_per_mode(model, next_mode))
            bar.advance(task)
    render([quant_sizes_view(sizes)], "rich", Console())   # stdout: pipes
    return 0


def cmd_sweeps(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .bundled import bundled_sweeps
    t = Table(title="sweeps that come with robustgrid (robustgrid run NAME)", title_justify="left")
    t.add_column("name", no_wrap=True)
    t.add_column("description", overflow="fold")
    for name, (_, description) in bundled_sweeps().items():
        t.add_row(name, description)
    Console().print(t)
    return 0


def cmd_data(args) -> int:
    from .data import DATASETS, fetch_data, resolve_root
    from .spec import DataSpec, SpecError
    fetchable = [n for n in DATASETS.names() if DATASETS.get(n).obj.fetch is not None] + ["cifar10c"]
    if args.name not in fetchable:
        raise SpecError(f"data fetch {args.name}: not a data set with files to fetch; known: {', '.join(fetchable)}")
    root = resolve_root(args.root)
    say = lambda msg: console.print(f"[cyan]{msg}[/cyan]")
    if args.name == "cifar10c":       # an evaluation set (evaluate.corruptions), not one to train on
        from .data.cifar10c import fetch_cifar10c
        fetch_cifar10c(root, say)
    else:
        fetch_data(DataSpec(dataset=args.name, root=str(root)), progress=say)
    console.print(f"{args.name} ready in {root}")
    return 0


def cmd_bench(args) -> int:
    from .bench import (
        bench_ray_overhead,
        run_adversarial_training_bench,
        run_autoattack_bench,
        run_bench,
        run_quant_bench,
    )
    if args.ray_overhead:
        return bench_ray_overhead(json_path=args.json)
    if args.quant_modes:
        return run_quant_bench(json_path=args.json, device=args.device, images=args.images)
    if args.adversarial_training:
        return run_adversarial_training_bench(json_path=args.json, device=args.device, images=args.images,
                                              model_name=args.model)
    if args.grid == "autoattack":
        return run_autoattack_bench(json_path=args.json, device=args.device, images=args.images,
                                    repeats=args.repeats)
    return run_bench(quick=args.quick, json_path=args.json, device=args.device, grid=args.grid, images=args.images)


COMMANDS = {"run": cmd_run, "eval": cmd_eval, "show": cmd_show, "report": cmd_report, "sweeps": cmd_sweeps, "models": cmd_models,
            "data": cmd_data, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
