"""The package's import graph (read with ast, every import including lazy and TYPE_CHECKING ones) has no
cycles, and lower layers never import upper ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "rvc_lora"

# Bottom to top; a module may import its own layer and the layers below. Components are the names right
# under rvc_lora/ (a module or a subpackage).
LAYERS: list[tuple[str, ...]] = [
    ("utils", "failures", "assets", "distributed"),  # errors, downloads, torchrun helpers: no model code
    ("models",),
    ("safe_load", "checkpoint"),
    ("lora",),
    ("generator_lora",),
    ("merge",),
    ("audio", "features"),
    ("data",),
    ("config", "config_schema"),  # the configuration's types name pitch methods and content kinds
    ("prepare", "train", "infer"),
    ("serve",),
    ("cli", "demo"),
]

# Imports that break the order today, each with its reason; nothing else may.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from P import m`` counts as importing ``P.m``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _component(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _layer_of(component: str) -> int:
    for index, layer in enumerate(LAYERS):
        if component in layer:
            return index
    raise AssertionError(f"rvc_lora/{component} has no place in LAYERS (tests/test_layering.py): add it")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_import_graph_is_read_from_every_module_including_lazy_imports() -> None:
    graph = import_graph()
    assert len(graph) > 50
    # Function-level (lazy) imports count: get_pitch_extractor imports the methods only when called.
    assert "rvc_lora.features.pitch_methods" in graph["rvc_lora.features.pitch"]
    assert "rvc_lora.train.loop" in graph["rvc_lora.train"]  # relative imports resolve


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def test_cycle_finder_reports_a_two_module_cycle() -> None:
    graph = {"rvc_lora.a": {"rvc_lora.b"}, "rvc_lora.b": {"rvc_lora.a", "rvc_lora.c"}, "rvc_lora.c": set()}
    assert _cycles(graph) == [["rvc_lora.a", "rvc_lora.b"]]


def test_lower_layers_never_import_upper_ones() -> None:
    upward = []
    for module, targets in import_graph().items():
        if module == "rvc_lora":
            continue
        layer = _layer_of(_component(module))
        for target in sorted(targets):
            if _layer_of(_component(target)) > layer and (module, target) not in KNOWN_EXCEPTIONS:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_known_exceptions_still_exist() -> None:
    graph = import_graph()
    assert [pair for pair in KNOWN_EXCEPTIONS if pair[1] not in graph.get(pair[0], set())] == []


# What runs: the command line, the offline demo, and the package itself (the Python API).
ENTRY_POINTS = ("rvc_lora", "rvc_lora.cli", "rvc_lora.demo.__main__")


def test_every_module_serves_the_package_not_only_tests() -> None:
    """Each module is reachable by imports from an entry point (fixture factories belong under tests/)."""
    graph = import_graph()
    reached, todo = set(), list(ENTRY_POINTS)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
            todo += graph[module] | parents  # importing a.b.c runs a/__init__ and a/b/__init__ first
    assert sorted(set(graph) - reached) == []


def test_command_line_help_and_config_start_without_loading_torch() -> None:
    """``rvc-lora --help``, every subcommand's options and ``rvc-lora config`` stay under a second of
    imports: torch (several seconds to import) is loaded only by commands that run models."""
    import subprocess
    import sys

    probe = (
        "import contextlib, io, sys\n"
        "from rvc_lora.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['config', 'lora.rank=4'])\n"
        "print(sorted(m for m in ('torch', 'torchaudio') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE_DIR.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
