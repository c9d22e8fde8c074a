"""
Where the source text of a class of C{__main__} is found, so that it can travel to an engine
(L{srpy.functions.pack_main_class}) and so that L{srpy.records} knows, before it tags a record,
whether its class can travel at all.

C{inspect.getsource} finds a class of a script (through the script's file). In a notebook or an
interactive session C{__main__} has no file, and C{inspect} gives up; the cells' text is still
in C{linecache} (IPython and Jupyter register every cell there), so the class is looked for
there: in the files of its methods' code first, then in every text cached in memory only, the
latest first (the cell run last is the definition the user holds). A candidate must declare the same fields (its
annotations) and members as the class itself, or it is not taken.

>>> import linecache
>>> cell = "import enum\\n\\nclass SourcesDemo(enum.Enum):\\n    RED = 1\\n"
>>> linecache.cache["<cell 1>"] = (len(cell), None, cell.splitlines(True), "<cell 1>")  # as IPython does
>>> namespace = {"__name__": "demo"}
>>> exec(compile(cell, "<cell 1>", "exec"), namespace)
>>> print(class_source(namespace["SourcesDemo"]), end="")
class SourcesDemo(enum.Enum):
    RED = 1
>>> exec("class SourcesLost: pass", namespace)  # no text anywhere
>>> class_source(namespace["SourcesLost"]) is None
True
"""

import ast
import inspect
import linecache
import sys
import textwrap
import types
from typing import Any, Iterator, List, Optional, Set


def class_source(cls: type) -> Optional[str]:
    """The dedented source of C{cls}'s statement (decorators included), or None if it cannot be found."""
    try:
        text = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        text = ""
    if text and _matches(_first_class(text, cls.__name__), cls):
        return text
    seen: Set[str] = set()
    for filename in _candidate_files(cls):
        if filename in seen:
            continue
        seen.add(filename)
        found = _find_in(filename, cls)
        if found is not None:
            return found
    return None


def _candidate_files(cls: type) -> Iterator[str]:
    """Files the class may be in: its module's, its methods', then every text held in memory, the latest first."""
    module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if isinstance(module_file, str):  # a script that defines the class twice: inspect finds the first
        yield module_file
    for member in vars(cls).values():
        function: Any = getattr(member, "__func__", member)
        if isinstance(member, property):
            function = member.fget
        code = getattr(function, "__code__", None)
        if isinstance(code, types.CodeType) and code.co_filename != "<string>":  # dataclasses' own are <string>
            yield code.co_filename
    for filename, entry in reversed(list(linecache.cache.items())):
        if len(entry) == 4 and entry[1] is None:  # text held in memory only (a cell), not a file on disk
            yield filename


def _find_in(filename: str, cls: type) -> Optional[str]:
    lines = linecache.getlines(filename)
    if not lines:
        return None
    text = "".join(lines)
    if "class " + cls.__name__ not in text:  # most texts: no parse
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    for node in reversed(tree.body):  # the last definition in the file is the one that ran last
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__ and _matches(node, cls):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            end = node.end_lineno or node.lineno
            return textwrap.dedent("".join(lines[first - 1:end]))
    return None


def _first_class(text: str, name: str) -> Optional[ast.ClassDef]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, ast.ClassDef) and node.name == name else None


def _matches(node: Optional[ast.ClassDef], cls: type) -> bool:
    """Whether the statement C{node} declares what C{cls} holds: the same annotated names, and its enum members."""
    if node is None:
        return False
    annotated: List[str] = []
    assigned: Set[str] = set()
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            annotated.append(statement.target.id)
        elif isinstance(statement, ast.Assign):
            assigned.update(target.id for target in statement.targets if isinstance(target, ast.Name))
    annotations = vars(cls).get("__annotations__", {})
    if isinstance(annotations, dict) and list(annotations) != annotated:
        return False
    members = vars(cls).get("_member_names_")
    return not isinstance(members, list) or set(members) <= assigned | set(annotated)
