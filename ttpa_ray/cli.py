"""The ``ttpa`` command.

    ttpa run jobs/demo-cpu.yaml [key=value ...] [--from STAGE]
    ttpa construct jobs/demo-cpu.yaml [key=value ...]
    ttpa sft jobs/demo-cpu.yaml [key=value ...]
    ttpa sample jobs/demo-cpu.yaml [key=value ...]
    ttpa train jobs/demo-cpu.yaml [key=value ...]
    ttpa evaluate jobs/demo-cpu.yaml [--model PATH]
    ttpa report jobs/demo-cpu.yaml | runs/demo-cpu [--compare LABEL=RUN_DIR ...]
    ttpa models prepare smollm2-135m-instruct | tiny-random | PATH
    ttpa models list
    ttpa score-calls --input IN.jsonl --output OUT.jsonl
    ttpa serve MODEL [--backend transformers|vllm] [--port 8000]
    ttpa doctor
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ttpa_ray.console import configure as configure_console
from ttpa_ray.job import ConfigError, load_job

log = logging.getLogger("ttpa_ray")


def _run(args: argparse.Namespace) -> int:
    from ttpa_ray.pipeline import run_pipeline

    job = load_job(args.job, args.overrides)
    results = run_pipeline(job, from_stage=args.from_stage)
    print(f"run {job.name}: {job.run_dir}")
    evaluated: dict[str, dict] = {}
    for name, manifest in results.items():
        if name.startswith("variants/"):  # a variant's own stages
            for stage, sub in manifest["stages"].items():
                print(f"  {name}/{stage}: {_counts(sub)}")
            trained = manifest["stages"].get("evaluate", {}).get("trained")
            if isinstance(trained, dict):
                evaluated[name.removeprefix("variants/")] = trained
            continue
        print(f"  {name:10s} {_counts(manifest)}")
        if name == "evaluate":
            evaluated = {m: manifest[m] for m in ("base", "sft", "trained")
                         if isinstance(manifest.get(m), dict)} | evaluated
    if evaluated:
        _print_comparison(evaluated)
        _print_paired(job.run_dir / "evaluate" / "comparisons.json")
    if "report" in results:
        print(f"\n  report: {results['report']['html']}")
    return 0


def _counts(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("stage", "status", "fingerprint", "token")}


def _print_comparison(manifest: dict[str, dict]) -> None:
    """Base vs SFT vs trained (or vs each variant), the figures a user looks for first."""
    models = list(manifest)
    keys = ("bfcl_simple_accuracy", "bfcl_accuracy", "bfcl_accuracy_ci", "bfcl_irrelevance_accuracy_bfcl_rule",
            "held_out_accuracy", "pass_rate")
    names = {"bfcl_accuracy_ci": "  95% bootstrap CI", "bfcl_irrelevance_accuracy_bfcl_rule": "irrelevance, BFCL rule"}
    print("\n  " + f"{'':24s}" + "".join(f"{m:>13s}" for m in models))
    for k in keys:
        cells = []
        for m in models:
            v = manifest[m].get(k)
            cells.append(f"{v:13.3f}" if isinstance(v, (int, float)) else
                         f"{f'[{v[0]:.2f},{v[1]:.2f}]':>13s}" if isinstance(v, (list, tuple)) and len(v) == 2 else f"{'-':>13s}")
        print(f"  {names.get(k, k):24s}" + "".join(cells))


def _print_paired(path: Path) -> None:
    """The paired tests of the overall figures (evaluate/comparisons.json has every category)."""
    from ttpa_ray.evaluate.compare import format_comparisons

    if not path.is_file():
        return
    records = [r for r in json.loads(path.read_text()) if r["category"] in ("overall", "episodes")]
    if records:
        print("\n" + "\n".join("  " + line for line in format_comparisons(records).splitlines()))
        print(f"  (* the 95% CI of the difference excludes 0 and McNemar p < 0.05; every category: {path})")


def _stage(args: argparse.Namespace) -> int:
    from ttpa_ray.pipeline import run_pipeline

    job = load_job(args.job, args.overrides)
    manifest = run_pipeline(job, only=args.command)[args.command]
    print(f"{args.command}: {job.run_dir / args.command}")
    print(json.dumps({k: v for k, v in manifest.items() if k not in ("stage", "status", "fingerprint")}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if not args.model:
        return _stage(args)
    from ttpa_ray.evaluate.stage import run_evaluate
    from ttpa_ray.runtime import init_ray

    job = load_job(args.job, args.overrides)
    init_ray(job.ray.address, job.ray.num_cpus, job.ray.include_dashboard)
    out = job.run_dir / "evaluate" / Path(args.model).name
    instances = job.run_dir / "construct" / "instances.parquet"
    counts = run_evaluate(job.evaluate, job.target, job.score, args.model, instances if instances.is_file() else None,
                          out, seed=job.seed, catalog=job.construct.catalog)
    print(f"evaluate {args.model}: {out}")
    print(json.dumps(counts, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    """(Re)build the report from a finished (or partial) run folder; no Ray."""
    from ttpa_ray.report.build import write_report

    source = Path(args.job)
    if source.is_dir() and args.overrides:
        raise ValueError(f"{source} is a run folder: key=value overrides apply to a job YAML only")
    run_dir = source if source.is_dir() else load_job(args.job, args.overrides).run_dir
    variants: dict[str, Path] = {}
    for item in args.compare:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder or label in variants:
            raise ValueError(f"--compare {item}: expected LABEL=RUN_DIR with a new label, "
                             "e.g. --compare n-sample=runs/nsample")
        variants[label] = Path(folder)
    counts = write_report(run_dir, variants)
    print(f"report: {counts['html']}\n        {counts['markdown']} ({counts['plots']} plots, {counts['notes']} notes)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from ttpa_ray.models.registry import BUNDLED, prepared_path, resolve

    if args.action == "list":
        for name in BUNDLED:
            path = prepared_path(name)
            state = "prepared" if (path / "ttpa_prepared.json").is_file() else "not prepared"
            print(f"{name:24s} {state:13s} {path}")
        return 0
    if not args.name:
        raise SystemExit("ttpa models prepare: give a bundled name (see `ttpa models list`) or a local folder")
    print(resolve(args.name))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ttpa_ray.config import EngineConfig
    from ttpa_ray.engines.build import build_engine
    from ttpa_ray.engines.server import serve

    engine = build_engine(EngineConfig(backend=args.backend, model=args.model, dtype=args.dtype))
    server = serve(engine, args.served_name or args.model, args.host, args.port)
    print(f"serving {args.model} ({args.backend}) on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _score_calls(args: argparse.Namespace) -> int:
    from ttpa_ray.score.stage import score_jsonl

    counts = score_jsonl(args.input, args.output)
    print(f"scored {counts['scored']} of {counts['lines']} lines ({counts['valid']} valid); "
          f"{counts['bad_lines']} bad line(s) written as error rows -> {args.output}", file=sys.stderr)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from ttpa_ray.doctor import doctor

    return doctor(check_vllm=not args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttpa", description="Token-level Tool-use Preference Alignment on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and every third-party log line, warning and progress bar")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job's stages in order (skips complete ones)")
    run.add_argument("job", help="job YAML, e.g. jobs/demo-cpu.yaml")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. target.backend=transformers")
    run.add_argument("--from", dest="from_stage", help="redo this stage and the ones after it")
    run.set_defaults(fn=_run)

    for stage, text in (("construct", "reversed construction of tool-use instances"),
                        ("sft", "supervised fine-tuning on the constructed conversations (assistant tokens)"),
                        ("sample", "token-level preference sampling + ESM scoring -> pairs"),
                        ("probe", "the target engine answers tool-use prompts"),
                        ("reference", "reference log-probs of every pair (once, before training)"),
                        ("train", "DPO-family training on Ray Train + DeepSpeed ZeRO")):
        p = sub.add_parser(stage, help=f"run one stage: {text} (redone even if complete)")
        p.add_argument("job")
        p.add_argument("overrides", nargs="*")
        p.set_defaults(fn=_stage)

    ev = sub.add_parser("evaluate", help="BFCL + held-out + pass rate: the base and trained models (the stage), "
                                         "or one --model")
    ev.add_argument("job")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--model", help="a bundled model name or an HF folder (e.g. runs/NAME/train/model)")
    ev.set_defaults(fn=_evaluate)

    rep = sub.add_parser("report", help="(re)build the HTML + Markdown report of a run (no Ray)")
    rep.add_argument("job", help="job YAML (its run folder) or a run folder, e.g. runs/demo-cpu")
    rep.add_argument("overrides", nargs="*")
    rep.add_argument("--compare", action="append", default=[], metavar="LABEL=RUN_DIR",
                     help="another run's trained model beside this one (repeatable), e.g. n-sample=runs/nsample")
    rep.set_defaults(fn=_report)

    models = sub.add_parser("models", help="prepare or list models (never downloads from a hub)")
    models.add_argument("action", choices=["prepare", "list"])
    models.add_argument("name", nargs="?", help="bundled name or local HF folder")
    models.set_defaults(fn=_models)

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server over a local engine")
    srv.add_argument("model")
    srv.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    srv.add_argument("--dtype", default="bfloat16")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--served-name", help="model name clients send (default: MODEL)")
    srv.set_defaults(fn=_serve)

    sc = sub.add_parser("score-calls", help="ESM-score predicted tool calls in a JSONL file (no Ray)")
    sc.add_argument("--input", required=True, help="JSONL: tools, prediction, gold or possible_answer per line")
    sc.add_argument("--output", required=True, help="JSONL: each input line plus esm_score, errors, valid")
    sc.set_defaults(fn=_score_calls)

    doc = sub.add_parser("doctor", help="versions, resources, caches, and whether Ray/vLLM/DeepSpeed work here")
    doc.add_argument("--quick", action="store_true", help="skip starting a vLLM engine")
    doc.set_defaults(fn=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
