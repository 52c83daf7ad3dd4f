"""The layout stays what docs/architecture.md draws: plain core/ modules without Dagster, domain
folders under defs/ that never import a sibling, no private name imported across modules, and
every module listed once in the drawing."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mig_assets"
DOMAINS = sorted(p.name for p in (PACKAGE / "defs").iterdir() if p.is_dir() and not p.name.startswith("_"))
# modules allowed above MODULE_LINES, each with its reason in docs/architecture.md ("Package layout")
MODULE_LINES = 420
LONGER_MODULES: set[str] = set()


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from X import names` and `import X` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_core_modules_do_not_import_dagster():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (PACKAGE / "core").rglob("*.py")
        if any(module == "dagster" or module.startswith(("dagster.", "dagster_")) for module, _ in imported_modules(p))
    ]
    assert offenders == []


def test_domain_folders_never_import_a_sibling():
    offenders = []
    for domain in DOMAINS:
        for path in (PACKAGE / "defs" / domain).rglob("*.py"):
            for module, _ in imported_modules(path):
                match = re.match(r"mig_assets\.defs\.(\w+)", module)
                if match and match.group(1) != domain:
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_no_private_name_is_imported_across_modules():
    offenders = [
        f"{p.relative_to(ROOT)}: {module}.{name}"
        for p in modules()
        for module, names in imported_modules(p)
        if module.startswith("mig_assets")
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


def test_modules_stay_short():
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in modules()}
    assert {name: n for name, n in long.items() if n > MODULE_LINES and name not in LONGER_MODULES} == {}


def drawn_modules(drawing: str) -> list[str]:
    """The module paths (relative to mig_assets/) of the indented tree in ``drawing``'s code block."""
    block = drawing[drawing.index("```") + 3 :]
    block = block[: block.index("```")]
    folders: list[tuple[int, str]] = []
    found = []
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if name.endswith("/"):
            folders.append((indent, name))
        elif name.endswith(".py"):
            found.append("".join(folder for _, folder in folders[1:]) + name)  # folders[0]: mig_assets/
    return found


def test_the_drawing_lists_every_module_once():
    text = (ROOT / "docs" / "architecture.md").read_text()
    drawing = text[text.index("## Package layout") :]
    drawing = drawing[: drawing.index("\n## ", 1)]
    listed = drawn_modules(drawing)
    expected = sorted(str(p.relative_to(PACKAGE)) for p in modules())
    assert sorted(listed) == expected
