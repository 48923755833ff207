"""The run report (ttpa_ray/report/build.py) on fabricated run folders in the real file formats:
the tables hold the numbers the stages wrote, the PNGs are real images, the HTML is
self-contained, missing stages become "not run" notes (and counts an older run lacks "not
recorded" ones), the data card shows one constructed instance per kind, variants sit beside
the main run, the pairs section shows TPS branches per decision kind and pair examples (the
divergence token highlighted, the text escaped), and the page renders in headless Chromium
(every image loaded, the data card and the pair examples inside the page, a non-blank screenshot).

No Ray: the evaluate metrics are made by the real pure functions of
:mod:`ttpa_ray.evaluate.metrics` from fabricated scored rows, like the evaluate stage does.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ttpa_ray.evaluate import metrics as em
from ttpa_ray import pipeline
from ttpa_ray.job import validate_job
from ttpa_ray.report.build import read_run, write_report
from ttpa_ray.report.render import grouped_bars_figure  # noqa
from ttpa_ray.score.esm import ERROR_CODES

# --------------------------------------------------------------------------- a fabricated run


def _manifest(run: Path, stage: str, seconds: float, **counts: Any) -> None:
    (run / stage).mkdir(parents=True, exist_ok=True)
    (run / stage / "manifest.json").write_text(json.dumps(
        {"stage": stage, "status": "complete", "fingerprint": "0123456789abcdef", "seconds": seconds, **counts}))


def _turn(category: str, valid: bool, errors: list[str], esm: float, names: list[str] | None,
          gold: list[str]) -> dict[str, Any]:
    return {"category": category, "valid": valid, "errors": errors, "esm_score": esm, "generation_error": None,
            "score_error": None, "predicted_names": names, "gold_names": gold}


def _eval_rows(simple_valid: int, irrelevance_valid: int, passed: int) -> tuple[list[dict[str, Any]], ...]:
    """The rows of one evaluation: 4 simple rows (the first ``simple_valid`` right, then
    value_error, missing_call ...), 2 irrelevance rows, 2 held-out rows, 2 episodes; ids by position."""
    wrong = [("value_error", 0.8, ["f"]), ("missing_call", 0.0, []), ("value_error", 0.8, ["f"])]
    bfcl = [_turn("simple", True, [], 1.0, ["f"], ["f"]) for _ in range(simple_valid)]
    bfcl += [_turn("simple", False, [code], esm, names, ["f"]) for code, esm, names in wrong[:4 - simple_valid]]
    bfcl += [_turn("irrelevance", k < irrelevance_valid, [] if k < irrelevance_valid else ["irrelevance_call"],
                   1.0 if k < irrelevance_valid else 0.0, [] if k < irrelevance_valid else ["g"], [])
             for k in range(2)]
    held = [_turn("held_out", True, [], 1.0, ["h"], ["h"]), _turn("held_out", False, ["type_error"], 0.6, ["h"], ["h"])]
    episodes = [{"instance_id": k, "turn_index": 1, "passed": k < passed,
                 "reason": None if k < passed else "truncated_answer: cut"} for k in range(2)]
    for rows in (bfcl, held):
        for k, r in enumerate(rows):
            r["id"] = str(k)
    return bfcl, held, episodes


def _metrics(model: str, simple_valid: int, irrelevance_valid: int, passed: int,
             out: Path | None = None) -> dict[str, Any]:
    """metrics.json as the evaluate stage writes it of :func:`_eval_rows`; with ``out``, the rows
    too (bfcl.parquet, held_out.parquet, episodes.parquet), as the paired comparisons read them."""
    bfcl, held, episodes = _eval_rows(simple_valid, irrelevance_valid, passed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("bfcl", bfcl), ("held_out", held), ("episodes", episodes)):
            pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
    return {"model": model, "seed": 0, "held_out_fraction": 0.2,
            "bfcl": em.group_metrics(bfcl, ["simple", "irrelevance"]),
            "held_out": {"overall": em.category_metrics(held)}, "pass_rate": em.pass_rate_metrics(episodes)}


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
# (branch kind, chosen text, its ESM codes, rejected text, its codes) of the fabricated pairs, in id
# order: the chosen side is CALL (the gold) but in pair 3, a sampled candidate (the released rule).
PAIRS = [("call-or-not", CALL, [], "I can't check <the weather> & won't call a tool.", ["missing_call"]),
         ("name", CALL, [], CALL.replace("get_weather", "convert_units"), ["wrong_func_name"]),
         ("value", CALL, [], CALL.replace("Rome", "Paris"), ["value_error"]),
         ("value", CALL.replace("Rome", "rome"), ["value_error"], CALL.replace('"Rome"', "42"), ["type_error"]),
         ("key", CALL, [], CALL.replace("city", "town"), ["missing_required", "unexpected_param"])]
BRANCHES_BY_KIND = {"call-or-not": 2, "key": 1, "name": 1, "value": 2}  # as the sample stage counts
PAIRS_BY_KIND = {"call-or-not": 1, "key": 1, "name": 1, "value": 2}


def _pairs(path: Path, chosen: list[float], rejected: list[float], kinds: bool = True) -> None:
    """pairs.parquet as the sample stage writes it, one row per ``PAIRS`` entry (``chosen`` and
    ``rejected``: the ESM scores). Token ids are the characters' code points, so the divergence
    token is the first character that differs. ``kinds`` False: an older file, without ``branch_kind``."""
    n = len(chosen)
    rows = PAIRS[:n]
    ids = [[ord(c) for c in r[1]] for r in rows], [[ord(c) for c in r[3]] for r in rows]
    columns = {
        "id": list(range(n)), "instance_id": [k // 2 for k in range(n)], "turn_index": [1] * n, "prompt": ["[]"] * n,
        "tools": ["[]"] * n, "prompt_token_ids": [[1, 2]] * n, "chosen": [r[1] for r in rows],
        "rejected": [r[3] for r in rows], "chosen_token_ids": ids[0], "rejected_token_ids": ids[1],
        "chosen_score": chosen, "rejected_score": rejected, "chosen_errors": [r[2] for r in rows],
        "rejected_errors": [r[4] for r in rows],
        "divergence_index": [next(i for i, (a, b) in enumerate(zip(c, r)) if a != b) for c, r in zip(*ids)],
        "chosen_is_gold": [c == 1.0 for c in chosen], "branch_kind": [r[0] for r in rows], "mode": ["tps"] * n}
    if not kinds:
        del columns["branch_kind"]
    pq.write_table(pa.table(columns), path)


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    call_id = "call_" + "_".join(str(v) for v in arguments.values())  # unique within a message
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool",
                                             "parameters": {"type": "object", "properties": {}}}}


QUERY = "Weather in Rome & <Paris> tomorrow?"
DECLINE = "Sorry, none of my tools can tell jokes."
LONG_ANSWER = "Rome will be 21 °C and Paris 18 °C. " + "Both cities stay dry through the afternoon. " * 20


def _instances(path: Path, kinds: bool) -> None:
    """instances.parquet as construct writes it: two parallel instances (the first, id 0, has
    two calls in one message) and two irrelevance ones, out of id order. ``kinds`` False: an
    older run's file, without the kind column and the provenance paths."""
    def inst(i: int, kind: str, query: str, calls: list[dict[str, Any]], answer: str) -> dict[str, Any]:
        msgs: list[dict[str, Any]] = [{"role": "user", "content": query}]
        if calls:
            msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
            msgs += [{"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"], "content": "{}"}
                     for c in calls]
        msgs.append({"role": "assistant", "content": answer})
        prov = {"generator": "tiny-random", "seed": 0, "calls": len(calls)}
        if kinds:
            prov |= {"query_paths": ["generated"], "answer_paths": ["generated"]}
        return {"id": i, "status": "kept", "kind": kind, "domain": "weather",
                "tools": json.dumps([_tool("get_weather"), _tool("convert_units")]), "messages": json.dumps(msgs),
                "query": query, "answer": answer, "provenance": json.dumps(prov)}

    rows = [inst(2, "parallel", "Weather in Oslo and Bergen?", [_call("get_weather", city="Oslo"),
                                                               _call("get_weather", city="Bergen")], "Cold."),
            inst(1, "irrelevance", "Tell me a joke about cats.", [], DECLINE),
            inst(0, "parallel", QUERY, [_call("get_weather", city="Rome"), _call("get_weather", city="Paris")],
                 LONG_ANSWER),
            inst(3, "irrelevance", "Sing me a song.", [], "I cannot sing.")]
    if not kinds:
        rows = [{k: v for k, v in r.items() if k != "kind"} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), path)


def make_run(root: Path, name: str = "fake", train: bool = True, evaluate: bool = True,
             trained_simple_valid: int = 3, losses: tuple[float, ...] = (0.6931, 0.52, 0.31),
             variants: tuple[str, ...] = (), variant_of: Path | None = None, kinds: bool = True) -> Path:
    """A run folder like `ttpa run` leaves (job.json, manifests, instances.parquet, metrics.jsonl,
    pairs.parquet, evaluate/{base,trained}/metrics.json); ``train``/``evaluate`` False: as with the
    stage disabled. ``variants``: a parent run (probe, construct, base evaluation; sample -> train
    in ``variants/<name>/``); ``variant_of``: such a variant (construct linked, no probe, no base).
    ``kinds`` False: construct as older runs wrote it (no per-kind counts, paths or kind column)."""
    run = root / name
    run.mkdir(parents=True)
    job = {"name": name, "output_dir": str(root), "seed": 0, "target": {"model": "tiny-random"},
           "variants": {v: {"sample.top_k": 3} for v in variants}, "probe": {"enabled": variant_of is None},
           "train": {"enabled": train, "loss_type": "sigmoid", "beta": 0.1}, "evaluate": {"enabled": evaluate}}
    (run / "job.json").write_text(json.dumps(job))
    if variant_of is None:
        _manifest(run, "probe", 35.3, rows=4, errors=0, with_tool_call_tag=1)
        filtered = {"invalid_call": 0, "tool_error": 0, "duplicate": 1}
        new: dict[str, Any] = {}
        if kinds:
            filtered["answer_ungrounded"] = 0
            new = {"kinds": {k: {"attempted": 0, "kept": 0} for k in ("single", "multiple", "parallel_multiple")}
                   | {"parallel": {"attempted": 3, "kept": 2}, "irrelevance": {"attempted": 2, "kept": 2}},
                   "query_paths": {"generated": 2, "rewrite": 1, "template": 1},
                   "answer_paths": {"generated": 3, "template": 1}}
        _manifest(run, "construct", 84.0, attempted=5, rows_out=5, kept=4, errors=0, filtered=filtered,
                  kept_share=0.8, **new)
        _instances(run / "construct" / "instances.parquet", kinds)
    else:
        (run / "construct").symlink_to(Path("..", "..", "construct"), target_is_directory=True)
    if variants:
        for v in variants:
            make_run(run / "variants", v, trained_simple_valid=2 + len(v) % 2, variant_of=run)
        train = False  # the pipeline runs sample -> train in each variant
    else:
        _manifest(run, "sample", 29.2, turns=3, candidates=6, pairs=5, held_out_instances=1, turn_errors=0,
                  no_candidate=0, no_rejected=1, gold_not_valid=0, tokens_per_candidate=74.5,
                  branches_by_kind=BRANCHES_BY_KIND, pairs_by_kind=PAIRS_BY_KIND)
        _pairs(run / "sample" / "pairs.parquet", [1.0, 1.0, 1.0, 0.9, 1.0], [0.0, 0.55, 0.8, 0.27, 0.0])
    if train:
        _manifest(run, "reference", 18.4, pairs=5, ref_errors=0)
        _manifest(run, "train", 90.5, pairs=5, pairs_with_ref_error=0, steps=len(losses), restores=[],
                  final_loss=losses[-1], model=str(run / "train" / "model"))
        steps = [{"step": k + 1, "epoch": 0, "loss": loss, "rewards/chosen": 0.1 * k, "rewards/rejected": -0.4 * k,
                  "rewards/margins": 0.5 * k, "rewards/accuracies": 1.0, "pairs": 1, "tokens": 800,
                  "grad_norm": 10.0, "lr": 1e-4, "tokens_per_s": 5000.0} for k, loss in enumerate(losses)]
        (run / "train" / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    if evaluate:
        ev = run / "evaluate"
        models = {"base": _metrics("tiny-random", 1, 2, 0, ev / "base")} if variant_of is None else {}
        if train:
            models["trained"] = _metrics(str(run / "train" / "model"), trained_simple_valid, 1, 1, ev / "trained")
        for label, m in models.items():
            (run / "evaluate" / label / "metrics.json").write_text(json.dumps(m))
        _manifest(run, "evaluate", 41.5, **{label: {"bfcl_rows": 6, "held_out_rows": 2, "episodes": 2,
                                                    "generation_errors": 0, "score_errors": 0,
                                                    "bfcl_accuracy": m["bfcl"]["overall"]["accuracy"]}
                                            for label, m in models.items()})
    return run


# --------------------------------------------------------------------------- pure checks


def test_tables_hold_the_runs_numbers(tmp_path: Path):
    from ttpa_ray.report.build import build_report

    run = make_run(tmp_path)
    tables = build_report(read_run(run)).tables()
    acc = tables["Accuracy (ESM valid: BFCL's AST accept)"]
    assert acc.header == ["category", "n", "base", "trained", "Δ trained"]
    assert [r[0] for r in acc.rows] == ["BFCL simple", "BFCL irrelevance", "BFCL overall", "held-out"]
    assert acc.rows[0][1:] == ["4", "0.250", "0.750", "+0.500"]
    assert acc.rows[1][1:] == ["2", "1.000", "0.500", "-0.500"]
    assert tables["Headline"].cell("pass rate", "Δ trained") == "+0.500"
    paired = next(t for title, t in tables.items() if title.startswith("Paired comparisons"))
    simple = next(r for r in paired.rows if r[:2] == ["trained vs base", "BFCL simple"])
    # base gets simple row 0 right, trained rows 0-2: +0.5 on 4 entries, 2 discordant, p = 0.5
    assert simple[2:] [:4] == ["4", "0.250", "0.750", "+0.500"] and simple[7:10] == ["2", "0", "0.5000"]
    assert [r[1] for r in paired.rows] == ["BFCL simple", "BFCL irrelevance", "BFCL overall", "held-out",
                                           "pass rate"]
    assert tables["Pass rate (held-out episodes in the sandbox)"].cell("base", "fail reasons") == "truncated_answer 2"
    codes = tables["Error codes (rows with each ESM code, BFCL + held-out)"]
    assert codes.cell("value_error", "base") == "2" and codes.cell("value_error", "Δ trained") == "-1"
    assert codes.cell("irrelevance_call", "trained") == "1" and codes.cell("(rows scored)", "base") == "8"
    assert tables["Training summary"].rows == [["trained", "3", "0.693", "0.310", "1.000", "1.000", "5000", "90.5"]]
    pairs = tables["Pair statistics"]
    assert pairs.cell("trained", "chosen mean ESM") == "0.980" and pairs.cell("trained", "chosen = gold") == "0.800"
    stages = tables["Stages and row accounting: fake"]
    assert stages.cell("construct", "rows in") == "5 attempted"
    assert stages.cell("construct", "rows out") == "4 instances"
    assert stages.cell("construct", "dropped") == "1 (duplicate 1)"
    assert stages.cell("sample", "rows out") == "6 candidates, 5 pairs"
    assert stages.cell("sample", "dropped") == "1 (no_rejected 1)"
    assert stages.cell("total", "seconds") == "298.9"


def test_files_are_self_contained_and_linked(tmp_path: Path):
    counts = write_report(make_run(tmp_path))
    out = tmp_path / "fake" / "report"
    assert counts == {"html": str(out / "report.html"), "markdown": str(out / "report.md"), "plots": 5, "notes": 0}
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == ["accuracy", "error_codes", "esm_histogram", "stage_timings", "train_curves"]
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 200, (p, im.size)
            assert len(im.convert("RGB").getcolors(1 << 20)) > 20, p  # drawn, not a blank canvas
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == [p.name for p in pngs] and all((out / x).is_file() for x in links)
    assert "| BFCL simple | 4 | 0.250 | 0.750 | +0.500 |" in md
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    assert "url(" not in page and "@import" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert re.findall(r'href="([^"]*)"', page) == [f"#s{k}" for k in range(5)]  # in-page links only
    assert "<td class=\"num pos\">+0.500</td>" in page and "<td class=\"num neg\">-0.500</td>" in page
    write_report(make_run(tmp_path, "again", train=False))  # fewer plots: no stale PNG stays behind
    assert not (tmp_path / "again" / "report" / "train_curves.png").exists()


def test_data_section_shows_kinds_paths_and_one_example_per_kind(tmp_path: Path):
    from ttpa_ray.report.build import build_report
    from ttpa_ray.report.render import Call

    report = build_report(read_run(make_run(tmp_path)))
    tables = report.tables()
    assert tables["Instances per kind"].header == ["kind", "attempted", "kept", "kept share"]
    assert tables["Instances per kind"].rows == [
        ["single", "0", "0", "–"], ["multiple", "0", "0", "–"], ["parallel", "3", "2", "0.667"],
        ["parallel_multiple", "0", "0", "–"], ["irrelevance", "2", "2", "1.000"], ["total", "5", "4", "0.800"]]
    paths = tables["Kept turns by the path that wrote them"]
    assert paths.rows == [["generated", "2", "0.500", "3", "0.750"],
                          ["rewrite (of a template seed)", "1", "0.250", "–", "–"],
                          ["template (the seed itself)", "1", "0.250", "1", "0.250"],
                          ["turns", "4", "", "4", ""]]
    parallel, irrelevance = report.examples()  # the lowest id of each kind, in KINDS order
    assert (parallel.kind, parallel.instance_id, irrelevance.kind, irrelevance.instance_id) == (
        "parallel", 0, "irrelevance", 1)
    assert parallel.tools == [("get_weather", True), ("convert_units", False)]
    assert irrelevance.tools == [("get_weather", False), ("convert_units", False)]
    (turn,) = parallel.turns
    assert turn.query == QUERY
    assert turn.steps == [[Call("get_weather", '{"city": "Rome"}'), Call("get_weather", '{"city": "Paris"}')]]
    assert turn.answer.startswith(LONG_ANSWER[:300]) and len(turn.answer) < 450  # cut, saying how much
    assert turn.answer.endswith(f"… [{len(LONG_ANSWER) - len(turn.answer.split(' … [')[0])} more characters]")
    assert [(t.query, t.steps, t.answer) for t in irrelevance.turns] == [("Tell me a joke about cats.", [], DECLINE)]
    # The per-kind and path dicts stay out of the stage table; the new filter adds to "dropped".
    assert tables["Stages and row accounting: fake"].cell("construct", "other") == "rows_out 5, kept_share 0.800"

    write_report(tmp_path / "fake")
    page = (tmp_path / "fake" / "report" / "report.html").read_text()
    assert "Weather in Rome &amp; &lt;Paris&gt; tomorrow?" in page and QUERY not in page  # escaped
    calls = re.search(r"<dt>calls</dt><dd>(.*?)</dd>", page).group(1)  # the parallel calls share one line
    assert calls == ('<div class="call"><code><b>get_weather</b> {"city": "Rome"}</code></div>'
                     '<div class="call"><code><b>get_weather</b> {"city": "Paris"}</code></div>')
    assert f"<dt>calls</dt><dd>none (answered in text)</dd><dt>answer</dt><dd>{DECLINE}</dd>" in page
    assert '<code class="used">✓ get_weather</code> <code>convert_units</code>' in page
    assert "Oslo" not in page and "Sing me a song." not in page  # not the first of their kind
    md = (tmp_path / "fake" / "report" / "report.md").read_text()
    assert "- **calls**: `get_weather {\"city\": \"Rome\"}`; `get_weather {\"city\": \"Paris\"}`" in md
    assert "- **user**: Weather in Rome & &lt;Paris> tomorrow?" in md and f"- **answer**: {DECLINE}" in md


def test_a_run_without_kinds_builds_with_not_recorded_notes(tmp_path: Path):
    run = make_run(tmp_path, kinds=False, train=False, evaluate=False)  # fewer plots to draw
    counts = write_report(run)
    md = (run / "report" / "report.md").read_text()
    new = ("construct: instances per kind not recorded (an older run: construct recorded no kinds)",
           "construct: query and answer paths not recorded", "construct: data card not recorded")
    assert all(text in md for text in new) and "Instances per kind" not in md
    assert counts["notes"] == 3 + 2  # and train, evaluate disabled
    (run / "construct" / "instances.parquet").unlink()
    write_report(run)
    assert "construct: no data card (no instances.parquet in" in (run / "report" / "report.md").read_text()


def test_missing_stages_are_not_run_notes(tmp_path: Path):
    run = make_run(tmp_path, train=False, evaluate=False)
    (run / "construct" / "manifest.json").write_text(json.dumps({"stage": "construct", "status": "running"}))
    counts = write_report(run)
    page = (run / "report" / "report.html").read_text()
    md = (run / "report" / "report.md").read_text()
    for text in ("train: not run (disabled in the job: train.enabled is false)",
                 "evaluate: not run (disabled in the job: evaluate.enabled is false)",
                 "construct: not complete (status 'running': interrupted, or still running)"):
        assert text in md and text in page
    assert "reference: not run (no reference/manifest.json in" in md  # not disabled, just absent
    assert counts["plots"] == 2  # pairs histogram and stage timings; no training, no evaluation
    # Evaluated without a trained model (train disabled): base only, and a note saying why.
    run = make_run(tmp_path, "base-only", train=False)
    write_report(run)
    md = (run / "report" / "report.md").read_text()
    assert "trained (" in md and "no trained model evaluated: train: not run (disabled in the job" in md
    assert "| BFCL simple | 4 | 0.250 |" in md


def test_variants_side_by_side(tmp_path: Path):
    from ttpa_ray.report.build import build_report

    main = make_run(tmp_path, "tps")
    other = make_run(tmp_path, "nsample", trained_simple_valid=2, losses=(0.6931, 0.6))
    tables = build_report(read_run(main), [read_run(other, "n-sample")]).tables()
    acc = tables["Accuracy (ESM valid: BFCL's AST accept)"]
    assert acc.header == ["category", "n", "base", "trained", "n-sample", "Δ trained", "Δ n-sample"]
    assert acc.rows[0][1:] == ["4", "0.250", "0.750", "0.500", "+0.500", "+0.250"]
    assert [r[0] for r in tables["Training summary"].rows] == ["trained", "n-sample"]
    assert [r[0] for r in tables["Pair statistics"].rows] == ["trained", "n-sample"]
    assert "Stages and row accounting: nsample (n-sample)" in tables
    counts = write_report(main, variants={"n-sample": other})
    assert counts["plots"] == 5 and (main / "report" / "report.html").is_file()
    with pytest.raises(ValueError, match=r"\['base'\]: 'base', 'sft', 'trained' and the job's own variants \(none\)"):
        write_report(main, variants={"base": other})
    with pytest.raises(ValueError, match="is not a run folder"):
        write_report(main, variants={"x": tmp_path / "nope"})


def test_job_variants_are_shown_beside_the_base(tmp_path: Path):
    """A job with variants (as the pipeline lays it out): the parent holds probe, construct and
    the base evaluation; each variant its own sample -> evaluate, construct linked to the parent's."""
    from ttpa_ray.report.build import build_report

    parent = make_run(tmp_path, "cmp", variants=("tps", "nsample"))
    shutil.rmtree(parent / "variants" / "nsample" / "evaluate")  # e.g. interrupted before evaluating
    counts = write_report(parent)
    runs = [read_run(parent)] + [read_run(parent / "variants" / v, v) for v in ("tps", "nsample")]
    tables = build_report(runs[0], runs[1:]).tables()
    acc = tables["Accuracy (ESM valid: BFCL's AST accept)"]
    assert acc.header == ["category", "n", "base", "tps", "Δ tps"]
    assert acc.rows[0][1:] == ["4", "0.250", "0.750", "+0.500"]
    assert [r[0] for r in tables["Training summary"].rows] == ["tps", "nsample"]  # not the parent
    assert [r[0] for r in tables["Pair statistics"].rows] == ["tps", "nsample"]
    own = tables["Stages and row accounting: cmp"]
    assert own.cell("train", "other") == "train: runs in each variant (tps, nsample)"
    assert own.cell("total", "seconds") == "160.8"  # probe + construct + evaluate
    tps = tables["Stages and row accounting: tps"]
    assert tps.cell("construct", "status") == "shared" and tps.cell("total", "seconds") == "179.6"
    assert tps.cell("probe", "other") == "probe: not run (disabled in the job: probe.enabled is false)"
    md = (parent / "report" / "report.md").read_text()
    assert "nsample (" in md and "no trained model evaluated: evaluate: not run (no evaluate/manifest.json" in md
    assert "trained (" not in md  # the parent trains nothing itself: no note about it
    assert counts["plots"] == 5
    with pytest.raises(ValueError, match="the job's own variants"):
        write_report(parent, variants={"tps": parent / "variants" / "tps"})


def test_pairs_section_branches_per_kind_and_examples(tmp_path: Path):
    from ttpa_ray.report.build import build_report

    report = build_report(read_run(make_run(tmp_path, evaluate=False)))
    assert report.tables()["TPS branches by decision kind"].rows == [  # the paper's order, then a total
        ["trained", "name", "1", "1", "1.000"], ["trained", "key", "1", "1", "1.000"],
        ["trained", "value", "2", "2", "1.000"], ["trained", "call-or-not", "2", "1", "0.500"],
        ["trained", "total", "6", "5", "0.833"]]
    examples = report.pair_examples()  # the first of each kind, then the second of each
    assert [(e.kind, e.pair_id) for e in examples] == [("name", 1), ("key", 4), ("value", 2), ("call-or-not", 0),
                                                       ("value", 3)]
    shown = {e.pair_id: e for e in examples}
    for i, (_, chosen, chosen_codes, rejected, rejected_codes) in enumerate(PAIRS):
        e = shown[i]
        assert e.shared == os.path.commonprefix([chosen, rejected])
        assert e.divergence_index == len(e.shared)  # the fixture's tokens are characters
        assert e.shared + e.chosen.divergence + e.chosen.rest == chosen
        assert e.shared + e.rejected.divergence + e.rejected.rest == rejected
        assert (e.chosen.errors, e.rejected.errors) == (chosen_codes, rejected_codes)
    assert [(shown[i].chosen.divergence, shown[i].rejected.divergence) for i in range(5)] == [
        ("<", "I"), ("get", "convert"), ("Rome", "Paris"), ('"', "42"), ("city", "town")]
    assert (shown[3].chosen.score, shown[3].rejected.score, shown[3].chosen_is_gold) == (0.9, 0.27, False)
    assert (shown[0].instance_id, shown[0].turn_index, shown[0].chosen_is_gold) == (0, 1, True)


def test_pair_examples_in_html_and_markdown(tmp_path: Path):
    run = make_run(tmp_path, train=False, evaluate=False)
    write_report(run)
    page = (run / "report" / "report.html").read_text()
    sides = re.findall(r'<div class="side (chosen|rejected)">.*?<pre class="completion">(.*?)<mark>(.*?)</mark>'
                       r"(.*?)</pre>", page, flags=re.S)
    assert len(sides) == 2 * len(PAIRS)
    texts = {(i, name): t for i, (_, c, _, r, _) in enumerate(PAIRS) for name, t in (("chosen", c), ("rejected", r))}
    order = [1, 4, 2, 0, 3]  # the examples' pair ids
    for k, (name, before, mark, after) in enumerate(sides):
        full = texts[(order[k // 2], name)]
        other = texts[(order[k // 2], "rejected" if name == "chosen" else "chosen")]
        assert html.unescape(before) == os.path.commonprefix([full, other])  # the shared part, plain
        assert html.unescape(before + mark + after) == full
    assert sides[4][2:] == ("Rome", '"}}\n&lt;/tool_call&gt;')  # value: chosen Rome vs rejected Paris
    assert sides[5][2] == "Paris"
    assert "<tool_call>" not in page and "&lt;tool_call&gt;" in page  # the pairs' text is escaped
    assert "<mark>I</mark> can't check &lt;the weather&gt; &amp; won't call a tool.</pre>" in page
    assert "<b>rejected</b> · ESM 0.000 · errors: <code>missing_required</code> <code>unexpected_param</code>" in page
    assert "<b>chosen</b> · ESM 1.000 · errors: none" in page
    assert "pair 3 · instance 1, turn 1 · divergence token #58 · chosen is a sampled candidate" in page
    md = (run / "report" / "report.md").read_text()
    assert "| trained | call-or-not | 2 | 1 | 0.500 |" in md and "| trained | total | 6 | 5 | 0.833 |" in md
    assert "**value** (pair 2 · instance 1, turn 1 · divergence token #59 · chosen is the gold)" in md
    assert "```text\n[[I]] can't check <the weather> & won't call a tool.\n```" in md  # raw in a code block
    assert '{"name": "get_weather", "arguments": {"city": "[[Paris]]"}}' in md
    assert "- **rejected**: ESM 0.270, errors: type_error" in md


def test_older_or_empty_pairs_give_notes(tmp_path: Path):
    run = make_run(tmp_path, train=False, evaluate=False)
    manifest = run / "sample" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in m.items() if not k.endswith("_by_kind")}))
    _pairs(run / "sample" / "pairs.parquet", [1.0, 1.0, 1.0], [0.0, 0.5, 0.8], kinds=False)  # no branch_kind
    counts = write_report(run)
    md = (run / "report" / "report.md").read_text()
    assert ("sample (trained): branches and pairs per decision kind not recorded (an older run: the sample "
            "manifest has no branches_by_kind / pairs_by_kind)") in md
    assert "TPS branches by decision kind" not in md and counts["notes"] == 3  # and train, evaluate disabled
    assert md.count("**not recorded** (pair ") == 3 and "[[Paris]]" in md  # examples still shown, in id order
    # Scores only (no text columns): statistics, no examples.
    pq.write_table(pa.table({"id": [0], "chosen_score": [1.0], "rejected_score": [0.0]}),
                   run / "sample" / "pairs.parquet")
    write_report(run)
    md = (run / "report" / "report.md").read_text()
    assert "sample (trained): no pair examples (pairs.parquet has no chosen/rejected text)" in md
    assert "| trained | 1 |" in md
    # No pairs at all (an empty file has only an id column) and no branches.
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), run / "sample" / "pairs.parquet")
    manifest.write_text(json.dumps(m | {"pairs": 0, "branches_by_kind": {}, "pairs_by_kind": {}}))
    write_report(run)
    md = (run / "report" / "report.md").read_text()
    assert "sample (trained): no preference pairs" in md and "sample (trained): no branches (no candidate" in md
    assert "Pair examples" not in md and "Pair statistics" not in md


def test_report_stage_and_cli(tmp_path: Path, capsys):
    from ttpa_ray.cli import main

    names = list(pipeline.STAGES)
    assert names[-2:] == ["evaluate", "report"]
    runner, sections, upstream = pipeline.STAGES["report"]
    assert set(upstream) == set(names[:-1])  # redone whenever a stage it shows was redone
    run = make_run(tmp_path, "t")
    job = validate_job({"name": "t", "output_dir": str(tmp_path)})
    counts = runner(job, run / "report", False)
    assert counts["html"] == str(run / "report" / "report.html") and counts["plots"] == 5
    (run / "report" / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.html").is_file()
    assert str(run / "report" / "report.html") in capsys.readouterr().out
    other = make_run(tmp_path, "other")
    assert main(["report", str(run), "--compare", f"n-sample={other}"]) == 0
    assert "n-sample" in (run / "report" / "report.md").read_text()
    assert main(["report", str(run), "--compare", "nolabel"]) == 1
    assert "--compare nolabel: expected LABEL=RUN_DIR" in capsys.readouterr().err


# --------------------------------------------------------------------------- headless Chromium


def _chromium_driver(profile: Path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("this test renders the report in headless Chromium: install the Debian packages chromium and "
                    "chromium-driver (`make chromium`, or apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--window-size=1280,900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def screenshot_report(html_path: Path, png_path: Path, profile: Path) -> dict[str, Any]:
    """Open the page in headless Chromium, read its images' load state, and save a full-page
    screenshot; returns what the page showed (title, h2 texts, images, data card texts, pair
    boxes (text, highlighted tokens, side boxes), and how many card boxes overflow)."""
    browser = _chromium_driver(profile)
    try:
        browser.get(html_path.resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        headings = [h.text for h in browser.find_elements("tag name", "h2")]
        examples = [e.text for e in browser.find_elements("css selector", "div.example")]
        pairs = browser.execute_script(  # per pair box: its text, the highlighted tokens, the sides' boxes
            "return Array.from(document.querySelectorAll('div.pair')).map(p => [p.innerText,"
            " Array.from(p.querySelectorAll('mark')).map(m => m.textContent),"
            " Array.from(p.querySelectorAll('div.side')).map(s => {const r = s.getBoundingClientRect();"
            " return [r.left, r.top, r.width];})]);")
        overflowing = browser.execute_script(  # card lines wider than their box, or cards past the page
            "const main = document.querySelector('main').getBoundingClientRect();"
            "return Array.from(document.querySelectorAll("
            "'div.example, div.example dd, div.pair, div.side, pre.completion')).filter("
            "e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > main.right).length;")
        size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        png_path.write_bytes(base64.b64decode(shot["data"]))
        return {"title": browser.title, "headings": headings, "images": images, "examples": examples,
                "pairs": pairs, "overflowing": overflowing}
    finally:
        browser.quit()


def test_report_renders_in_headless_chromium(tmp_path: Path):
    run = make_run(tmp_path)
    counts = write_report(run, variants={"n-sample": make_run(tmp_path, "other", trained_simple_valid=2)})
    shot = tmp_path / "screenshot.png"
    page = screenshot_report(Path(counts["html"]), shot, tmp_path / "profile")
    assert page["title"] == "TTPA report: fake"
    assert page["headings"] == ["Evaluation: base vs trained", "Data: constructed instances", "Training",
                                "Preference pairs", "Stages: timings and row accounting"]
    parallel, irrelevance = page["examples"]
    assert parallel.startswith("parallel instance 0 · domain weather") and QUERY in parallel
    assert 'get_weather {"city": "Rome"}\nget_weather {"city": "Paris"}' in parallel
    assert irrelevance.startswith("irrelevance instance 1") and DECLINE in irrelevance
    pairs = page["pairs"]  # five examples of each run (trained, n-sample), chosen beside rejected
    assert len(pairs) == 10 and [marks for _, marks, _ in pairs[:5]] == [
        ["get", "convert"], ["city", "town"], ["Rome", "Paris"], ["<", "I"], ['"', "42"]]
    text, _, ((x0, y0, w0), (x1, y1, w1)) = pairs[3]
    assert text.startswith("call-or-not pair 0 · instance 0, turn 1 · divergence token #0 · chosen is the gold")
    assert CALL in text and "I can't check <the weather> & won't call a tool." in text  # escaped, shown as typed
    assert "errors: missing_call" in text
    assert y0 == y1 and x1 >= x0 + w0 and w0 == w1 > 300  # side by side, equal widths
    assert page["overflowing"] == 0
    assert len(page["images"]) == counts["plots"] == 5
    assert all(done and w > 0 and h > 0 for done, w, h in page["images"]), page["images"]
    with Image.open(io.BytesIO(shot.read_bytes())) as im:
        assert im.width >= 1000 and im.height > 2000, im.size  # the whole page, not one viewport
        colours = im.convert("RGB").getcolors(1 << 24)
    assert len(colours) > 500  # text, tables and plots; a blank or broken page has a handful
    assert max(n for n, _ in colours) < 0.9 * im.width * im.height


@pytest.mark.parametrize("n_codes", [3, len(ERROR_CODES)])
def test_error_code_labels_do_not_overlap(n_codes: int):
    """Every ESM error code on the bar chart's axis: no two tick labels share a pixel."""
    codes = list(ERROR_CODES[:n_codes])
    fig = grouped_bars_figure(codes, {"base": [3.0] * n_codes, "trained": [1.0] * n_codes}, "rows", "codes",
                              share=False)
    fig.canvas.draw()
    ax = fig.axes[0]
    ticks = next(t for t in (ax.get_xticklabels(), ax.get_yticklabels()) if [x.get_text() for x in t] == codes)
    boxes = [t.get_window_extent() for t in ticks]
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), codes[i]
        assert a.x0 >= 0 and a.x1 <= fig.bbox.width and a.y0 >= 0 and a.y1 <= fig.bbox.height  # not cut off
