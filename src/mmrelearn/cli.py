"""Command line: ``mmrelearn train | eval | prepare | compare | sweep | demo | tsne | plot``
(thin layer over the library)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, load_config

log = logging.getLogger("mmrelearn")


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if args.resume:
        if args.config or args.set:
            raise ConfigError("--resume takes the config stored in the run directory; "
                              "do not pass -c/--set with it")
        summary = train(run_dir=args.resume, resume=True)
    else:
        if not args.config:
            raise ConfigError("train needs -c CONFIG (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.set)
        summary = train(cfg, run_dir=args.run_dir)
    from .distributed import is_main

    if not is_main():  # torchrun: rank 0 prints
        return 0
    t = summary["test"]
    print(f"{summary['name']} ({summary['method']}, seed {summary['seed']}): best epoch "
          f"{summary['best_epoch']} by {summary['select_metric']}; test acc {t['acc']:.4f}, "
          f"macro F1 {t['macro_f1']:.4f}, weighted F1 {t['weighted_f1']:.4f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import build_trainer, evaluate, load_run_config
    from .train.checkpoint import load_checkpoint

    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir)
    trainer = build_trainer(cfg, run_dir)
    ckpt = run_dir / "checkpoints" / f"{args.checkpoint}.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} does not exist")
    state = load_checkpoint(ckpt, map_location=trainer.device)  # weights_only=True
    trainer.model.load_state_dict(state["model"])
    if "method" in state:  # a method predicting with state of its own (best.pt keeps it)
        trainer.method.load_state_dict(state["method"])
    out = {"checkpoint": str(ckpt), "epoch": state["epoch"]}
    for split in ("val", "test"):
        out[split] = evaluate(trainer.model, trainer.loaders[split], trainer.device,
                              trainer.num_classes, trainer.method.predict, trainer.precision)
    if args.probe:
        from .probe import probe_trainer

        out["probe"] = probe_trainer(trainer, cfg.seed)
    print(json.dumps(out, indent=2))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_dataset

    cfg = load_config(args.config, args.set)
    options = {k: v for k, v in cfg.data.items() if k != "name"}
    r = prepare_dataset(cfg.data["name"], options)
    print(f"{r.dataset}: {r.clips} clips in {r.cache}: {r.decoded} decoded now, {r.cached} "
          f"already cached, {r.skipped} skipped (listed in failed.jsonl); "
          f"{r.removed_temporaries} stale temporary files removed; {r.seconds:.1f} s")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .report import aggregate, load_summaries, markdown_table, paired_markdown, paper_table

    summaries = load_summaries(args.run_dirs)
    if args.vs is not None:
        if args.layout is not None:
            raise ValueError("--vs prints the paired table; do not pass --layout with it")
        table = paired_markdown(summaries, args.vs, args.metric or "acc")
    elif args.metric is not None:
        raise ValueError("--metric chooses the metric of the paired table; it needs --vs")
    elif args.layout == "paper":
        table = paper_table(aggregate(summaries))
    else:
        table = markdown_table(aggregate(summaries), time_reference="joint")
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import yaml

    from .config import apply_overrides
    from .sweep import parse_grid, run_sweep

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    base = apply_overrides(yaml.safe_load(path.read_text()) or {}, args.set)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, e.g. 0,1,2; got "
                          f"{args.seeds!r}") from None
    out = Path(args.out or Path("runs") / "sweeps" / base.get("name", path.stem))
    print(run_sweep(base, parse_grid(args.grid), seeds, out, jobs=args.jobs,
                    baseline=None if args.baseline == "none" else args.baseline,
                    progress=not args.no_progress))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(out_dir=Path(args.out), seeds=args.seeds, epochs=args.epochs,
                   progress=not args.no_progress))
    return 0


def _cmd_tsne(args: argparse.Namespace) -> int:
    from .analysis import tsne_figure

    print(tsne_figure(args.run_dirs, args.out, split=args.split, checkpoint=args.checkpoint,
                      max_samples=args.max_samples or None, seed=args.seed))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .analysis import purity_figure

    print(purity_figure(args.run_dirs, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmrelearn", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("-c", "--config", help="YAML config file")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set method.lam=7 (repeatable)")
    t.add_argument("--run-dir", help="run directory (default: output_dir/name/seed{seed})")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint on validation and test")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--probe", action="store_true",
                   help="also fit a linear probe per modality on the frozen encoders (C chosen "
                        "on validation, scored on test)")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("prepare", help="decode a dataset's raw media once into its cache "
                                        "(data.raw -> data.cache; resumable)")
    pr.add_argument("-c", "--config", required=True, help="YAML config (its data section)")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. --set data.raw=/data/CREMA-D (repeatable)")
    pr.set_defaults(func=_cmd_prepare)

    c = sub.add_parser("compare", help="markdown table (mean ± std over seeds) of finished runs")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", help="also write the table to this file")
    c.add_argument("--layout", choices=["runs", "paper"], default=None,
                   help="runs: a row per run name (default); paper: a row per method and a "
                        "column group per data setting, as the paper's Tables 1 and 4")
    c.add_argument("--vs", metavar="METHOD",
                   help="instead, each method's paired difference to METHOD on the same data "
                        "setting and seeds: mean, 95%% CI, paired t-test p-value, verdict")
    c.add_argument("--metric", choices=["acc", "macro_f1", "weighted_f1"], default=None,
                   help="test metric of the --vs table (default acc)")
    c.set_defaults(func=_cmd_compare)

    sw = sub.add_parser("sweep", help="train a grid of configs over seeds (e.g. D&R's lambda "
                                      "and H, the paper's Figure 5) with a joint baseline")
    sw.add_argument("-c", "--config", required=True, help="YAML config the grid varies")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a swept key and its values (repeatable; the grid is their product)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override applied to every run (repeatable)")
    sw.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, each in its own process (default 1)")
    sw.add_argument("--baseline", default="joint",
                    help="method trained on the same data and seeds as the reference band "
                         "(default joint; 'none' for no baseline)")
    sw.add_argument("--out", help="output directory (default runs/sweeps/<config name>)")
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sw.set_defaults(func=_cmd_sweep)

    d = sub.add_parser("demo", help="joint training vs D&R on real mfeat data (clean and noisy)")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    d.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_demo)

    ts = sub.add_parser("tsne", help="t-SNE of each modality's encoder features, coloured by "
                                     "class, runs side by side (the paper's Fig. 3)")
    ts.add_argument("run_dirs", nargs="+")
    ts.add_argument("--split", choices=["train", "val", "test"], default="val",
                    help="features of this split (default val; test only to look at)")
    ts.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ts.add_argument("--max-samples", type=int, default=1000,
                    help="seeded random subset of at most this many samples (0: all)")
    ts.add_argument("--seed", type=int, default=0, help="seed of the subset and of t-SNE")
    ts.add_argument("--out", help="PNG file (default RUN_DIR/tsne_<split>.png for one run)")
    ts.set_defaults(func=_cmd_tsne)

    pl = sub.add_parser("plot", help="purity gap, test accuracy and test purity over epochs, "
                                     "runs grouped by method (the paper's Fig. 4)")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--out", help="PNG file (default RUN_DIR/purity.png for one run)")
    pl.set_defaults(func=_cmd_plot)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"mmrelearn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. NonFiniteLossError
        print(f"mmrelearn {args.command}: stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
