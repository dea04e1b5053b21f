"""dvc.yaml lists, for each stage, exactly the ctxlm modules its program imports (directly or not):
a missing one would let DVC reuse a stale result after that module changes; an extra one reruns
the stage for nothing."""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO


def module_file(module: str) -> Path | None:
    """The source file of a ctxlm module or package (its __init__.py); None when `module` is no such file."""
    path = REPO / module.replace(".", "/")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def ctxlm_imports(path: Path) -> set[str]:
    """The ctxlm modules a file imports, by module name (`from ctxlm.data import sources` imports
    ctxlm.data.sources as well as ctxlm.data)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ctxlm":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")}
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ctxlm")
    return found


def closure(path: Path) -> set[str]:
    """Source files of every ctxlm module that importing `path` loads: each imported module's
    packages run first (ctxlm/__init__ always does)."""
    seen, todo = set(), {"ctxlm", *ctxlm_imports(path)}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}
        todo |= ctxlm_imports(module_file(module))
    return {str(module_file(module).relative_to(REPO)) for module in seen}


PIPELINES = ["dvc.yaml", "baselines/dvc.yaml"]  # ctxlm's, and the baselines' (run from the repository root: wdir ..)


def stages() -> list[tuple[str, dict]]:
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load((REPO / pipeline).read_text())["stages"].items():
            yield f"{pipeline}:{name}", stage.get("do", stage)


@pytest.mark.parametrize("name, stage", list(stages()), ids=[name for name, _ in stages()])
def test_stage_deps_are_the_modules_its_program_imports(name, stage):
    program = next(word for word in stage["cmd"].split() if word.startswith("stages."))  # python -m [ctxlm.launch N] stages.<name> ...
    deps = set(stage["deps"])
    source = program.replace(".", "/") + ".py"
    assert source in deps
    assert {d for d in deps if d.startswith("ctxlm")} == closure(REPO / source)


def test_the_main_pipeline_is_ctxlm_alone_and_the_baselines_run_from_the_repository_root():
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(main["stages"]) == ["prepare", "tokenize", "train_context", "generate_cstar", "train_token", "evaluate"]
    assert not any("baselines" in path for path in main["metrics"])
    for name in ("prepare", "tokenize"):  # documents and tokens do not depend on the model: editing it reruns neither
        assert "ctxlm/model.py" not in main["stages"][name]["deps"], name
    baselines = yaml.safe_load((REPO / "baselines/dvc.yaml").read_text())
    for name, stage in baselines["stages"].items():
        assert stage.get("do", stage)["wdir"] == "..", name
    for path in baselines["metrics"]:  # top-level metrics are read relative to baselines/
        assert (REPO / "baselines" / path).resolve().parent == REPO / "metrics/baselines", path


def uncached(entries: list) -> set[str]:
    """The paths of a stage's outs/metrics/plots list that are kept out of DVC's cache."""
    return {path for entry in entries if isinstance(entry, dict) for path, options in entry.items() if options.get("cache") is False}


@pytest.mark.parametrize("name, stage", list(stages()), ids=[name for name, _ in stages()])
def test_a_stage_keeps_its_uncached_files_as_metrics_or_plots_so_dvc_run_cache_can_restore_it(name, stage):
    """DVC (3.x, Stage.run) saves no run-cache entry for a stage with an uncached output that is neither
    a metric nor a plot, so a run of params done before would run again; the baselines' weights are
    the one such output, on purpose (baselines/dvc.yaml says why)."""
    assert uncached(stage.get("outs", [])) <= {"data/baselines/${item}"}
    assert all(path.startswith("metrics/") for path in uncached(stage.get("metrics", [])) | uncached(stage.get("plots", [])))
