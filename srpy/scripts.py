"""
A script that travels to engines (L{PythonEngine.run<srpy.client.PythonEngine.run>},
L{EngBox.run<srpy.box.EngBox.run>}, C{srpyapp run}): its text, and the modules of its own folder
that it imports, found by reading import statements (the script's, then those modules',
transitively). A module there is a C{name.py} file or a C{name/} package folder (shipped whole,
so its relative imports come along); an import that names neither (the standard library, an
installed package, a module found by C{importlib} at run time) ships nothing. Engines write the
files into their sandbox, which is on their C{sys.path}; the engine side is L{srpy.asmain}.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> with open(os.path.join(folder, "helper.py"), "w") as handle:
...     _ = handle.write("import json\\nVALUE = 42\\n")
>>> with open(os.path.join(folder, "main.py"), "w") as handle:
...     _ = handle.write("import os, helper\\nprint(helper.VALUE)\\n")
>>> sorted(pack(os.path.join(folder, "main.py")).files)
['helper.py']
"""

import os
import tokenize
from typing import Any, Dict, List, NamedTuple, Sequence

from .shipping import imported_names, package_sources


class Script(NamedTuple):
    """What travels: the path (as given, for C{sys.argv[0]}), the source text, the local module files."""

    path: str
    source: str
    files: Dict[str, str]


def pack(path: str) -> Script:
    """
    The script at C{path}, with its folder's modules that it imports.

    @raise FileNotFoundError: no file at C{path}.
    @raise SyntaxError: it is not valid Python (said here, before anything is sent).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("no script at %s" % path)
    source = read_source(path)
    compile(source, path, "exec", dont_inherit=True)
    return Script(path, source, local_modules(source, os.path.dirname(os.path.abspath(path)), path))


def read_source(path: str) -> str:
    """A Python file's text, decoded as Python would (its coding comment, else UTF-8)."""
    with tokenize.open(path) as handle:
        return handle.read()


def local_modules(source: str, folder: str, path: str = "<script>") -> Dict[str, str]:
    """
    The files of the modules and packages of C{folder} that C{source} imports, and those they
    import, keyed by their path relative to the folder (as the sandbox will hold them).
    """
    files: Dict[str, str] = {}
    seen = set()
    todo = [(source, path)]
    while todo:
        text, where = todo.pop()
        for name in imported_names(text, where):
            if name in seen:
                continue
            seen.add(name)
            found = _module_in(folder, name)
            files.update(found)
            todo.extend((found[relative], relative) for relative in sorted(found) if relative.endswith(".py"))
    return files


def _module_in(folder: str, name: str) -> Dict[str, str]:
    """The files of module or package C{name} in C{folder} ({} if it has none)."""
    package = os.path.join(folder, name)
    if os.path.isdir(package):
        return package_sources(package, name)
    module = package + ".py"
    if os.path.isfile(module):
        return {name + ".py": read_source(module)}
    return {}


def arguments(argv: Sequence[Any]) -> List[str]:
    """
    The script's arguments as C{sys.argv} holds them: text (numbers and paths are written as text).

    >>> arguments(["a", 2, 0.5])
    ['a', '2', '0.5']
    """
    return [os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg) for arg in argv]
