"""One CLI convention (issue 13): shared flags without an import cycle, one --metric-path, one model record."""

from __future__ import annotations

import ast
import copy
import functools
from pathlib import Path

import pytest

import ditaccel
from ditaccel.cli import main
from ditaccel.errors import DitaccelError
from ditaccel.testing.faults import using_pipe

SRC = Path(ditaccel.__file__).resolve().parent


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only: never imported at run time)."""
    return {id(k) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
            for m in n.body for k in ast.walk(m)}


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    """ditaccel module -> the ditaccel modules it imports anywhere in its text (function-level imports too)."""
    files = {".".join(f.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        edges = set()
        tree = ast.parse(f.read_text())
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {m for m in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if m in files}
        graph[name] = edges - {name}  # a package importing its own submodule
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_no_import_cycle_anywhere_in_ditaccel():
    graph = _import_graph()
    assert "ditaccel.cli_common" in graph["ditaccel.search.cli"]  # the graph sees function-level imports too
    assert "ditaccel.caching.ecad_format" in graph["ditaccel.caching.schedule"]
    assert [m for m in graph if _reaches(graph, m, m)] == []
    assert not any("ditaccel.cli" in edges for m, edges in graph.items() if m.endswith(".cli") or m == "ditaccel.cli_common")


def test_eval_metric_paths_reach_the_metrics(tmp_path, monkeypatch):
    import ditaccel.evaluate.runner as runner

    seen = {}

    def stop(cfg):
        seen.update(cfg.metric_paths)
        raise DitaccelError("stop here")

    monkeypatch.setattr(runner, "precheck", stop)
    argv = ["eval", "--methods", "baseline", "--metrics", "clip,imagereward", "--metric-path", "clip_path=/m/clip",
            "--metric-path", " bert_path = /m/bert ", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert seen == {"clip_path": "/m/clip", "bert_path": "/m/bert"}


def test_metric_path_keys_are_checked_per_metric():
    from ditaccel.cli_common import parse_metric_paths

    assert parse_metric_paths(["med_config=a.json"], ["psnr", "imagereward"]) == {"med_config": "a.json"}
    with pytest.raises(DitaccelError, match=r"not one metric psnr uses; it takes none \(clip_path is for clip\)"):
        parse_metric_paths(["clip_path=/x"], "psnr")
    with pytest.raises(DitaccelError, match="unknown metric 'clpi'"):
        parse_metric_paths(["clip_path=/x"], "clpi")
    with pytest.raises(DitaccelError, match="is not KEY=PATH"):
        parse_metric_paths(["=/x"])


def test_a_registered_metric_is_everywhere(monkeypatch):
    """Adding a metric: its class plus one ``register_metric`` line; the CLI, get_metric and reports follow."""
    import ditaccel.metrics as metrics
    from ditaccel.cli_common import metric_names_help, parse_metric_paths
    from ditaccel.metrics.base import Metric

    class Toy(Metric):
        name = "toy"

        def __init__(self, toy_path: str | None = None, device: str = "auto") -> None:
            self.path, self.device = toy_path, device

    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))
    metrics.register_metric("toy", Toy, "a toy metric (toy_path=)", "Toy score")
    made = metrics.get_metric("toy", toy_path="/w", clip_path="/other", device="cpu")  # eval passes every key
    assert (made.path, made.device) == ("/w", "cpu")
    assert metrics.metric_path_keys("toy") == ("toy_path",)
    assert metrics.metric_label("toy") == "Toy score" and metrics.metric_label("psnr") == "PSNR (dB)"
    assert "toy" in metric_names_help()
    assert parse_metric_paths(["toy_path=/w"], "toy") == {"toy_path": "/w"}


def test_pipeline_info_is_attached_once_and_read_with_one_fallback(bundled_pipe, tmp_path):
    from ditaccel.pipeline import BUNDLED_DIR, PipelineInfo, is_bundled, pipeline_call_kwargs, pipeline_info
    from ditaccel.testing.replicas import build_pipeline

    info = pipeline_info(bundled_pipe)
    assert info.bundled and info.source == str(BUNDLED_DIR) and info.name == str(BUNDLED_DIR)
    assert info.call_defaults["num_inference_steps"] == 20
    assert pipeline_info(copy.deepcopy(bundled_pipe)) == info  # what the CLI tests' model copies keep
    replica = build_pipeline("pixart-alpha")
    assert pipeline_info(replica) == PipelineInfo() and pipeline_info(replica).name == "(in-memory pipeline)"
    assert "num_inference_steps" not in pipeline_call_kwargs(replica)
    assert is_bundled(None) and is_bundled(BUNDLED_DIR) and is_bundled(str(BUNDLED_DIR) + "/")
    assert not is_bundled(tmp_path) and not is_bundled("PixArt-alpha/PixArt-XL-2-256x256")


def test_quantize_refuses_a_non_empty_out_through_the_one_check(bundled_pipe, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with using_pipe(bundled_pipe):
        assert main(["quantize", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ditaccel: error: --out {out} is not empty; pass --overwrite to write into it or choose a new folder"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_ray_workers_build_the_model_the_way_the_cli_does(bundled_pipe, monkeypatch):
    import ditaccel.caching as caching
    from ditaccel.pipeline import pipeline_info
    from ditaccel.search.backend import load_for_worker

    compiled = []
    monkeypatch.setattr(caching, "compile_components", lambda pipe: compiled.append(pipe))
    with using_pipe(bundled_pipe):
        pipe = load_for_worker(None, "cpu", None, True, "float32")
    assert compiled == [pipe] and pipeline_info(pipe).bundled
