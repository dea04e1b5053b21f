"""dvc.yaml lists, for each stage, exactly the ctxlm modules its program imports (directly or not):
a missing one would let DVC reuse a stale result after that module changes; an extra one reruns
the stage for nothing."""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO


def ctxlm_imports(path: Path) -> set[str]:
    """The ctxlm modules a file imports, by module name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "ctxlm":  # from ctxlm import <module>
            found |= {f"ctxlm.{alias.name}" for alias in node.names if (REPO / "ctxlm" / f"{alias.name}.py").is_file()}
            found.add("ctxlm")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ctxlm":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ctxlm")
    return found


def closure(path: Path) -> set[str]:
    """Source files of every ctxlm module that importing `path` loads (ctxlm/__init__ always does)."""
    seen, todo = set(), {"ctxlm", *ctxlm_imports(path)}
    while todo:
        module = todo.pop()
        file = REPO / (module.replace(".", "/") + ("/__init__.py" if module == "ctxlm" else ".py"))
        if file.as_posix() in seen:
            continue
        seen.add(file.as_posix())
        todo |= ctxlm_imports(file)
    return {str(Path(f).relative_to(REPO)) for f in seen}


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
