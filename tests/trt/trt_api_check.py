"""Check every TensorRT name and call in vit_deploy's source against the real TensorRT bindings.

``collect(paths)`` reads the source with ``ast`` (no hand-written list of uses) and returns:
- every attribute path rooted at the TensorRT module (``trt.BuilderFlag.TF32``, ``trt.Logger.ERROR``);
- every attribute read, attribute assignment and method call on an object whose TensorRT type
  is known from the source: an annotation (``config: trt.IBuilderConfig``), a constructor
  (``builder = trt.Builder(...)``), a function of ours annotated to return TensorRT types
  (``-> tuple[trt.Runtime, trt.ICudaEngine]``), or a method whose return type the bindings'
  own signature states (``builder.create_network() -> INetworkDefinition``), followed through
  local variables and ``self.`` attributes;
- for each call, how many positional arguments and which keyword names it passes.

``check(uses, trt)`` holds each against the imported bindings: the path resolves, the class has
the attribute (a property assigned to has a setter), and some overload of the pybind11
signature (from its docstring) accepts that many positional arguments and those keywords.

Run as a script in a process that can import the bindings (stub libraries on LD_LIBRARY_PATH):
``python tests/trt/trt_api_check.py [FILE...]`` prints a JSON report (default: all of vit_deploy).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # run as a script too: no helpers import

PACKAGE = ROOT / "vit_deploy"
MODULE_LOADERS = {"import_tensorrt"}


@dataclass(frozen=True)
class Use:
    """One use of the TensorRT API in our source."""

    kind: str  # "path" (trt.A.B), "attr" (T.a read), "set" (T.a = ...), "call" (T.m(...) or trt.X(...))
    owner: str  # "trt" for paths/module functions/constructors, else the TensorRT class name
    name: str  # dotted path for "path"; attribute/method name otherwise; "__init__" for constructors
    where: str
    positional: int = 0
    keywords: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        kw = f"({', '.join(self.keywords)})" if self.keywords else ""
        return f"{self.kind} {self.owner}.{self.name}{kw}"


@dataclass
class _Scope:
    module_names: set[str] = field(default_factory=set)
    types: dict[str, str | tuple] = field(default_factory=dict)  # variable -> class name (or tuple of them)


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


class _Collector(ast.NodeVisitor):
    """Walks one file; ``resolver`` answers return/property types from the bindings (None: offline)."""

    def __init__(self, path: Path, in_trt_package: bool, resolver, our_returns: dict) -> None:
        self.path, self.in_trt, self.resolver, self.our_returns = path, in_trt_package, resolver, our_returns
        self.uses: list[Use] = []
        self.scopes = [_Scope()]
        self.class_types: dict[str, str | tuple] = {}

    # --- scopes -------------------------------------------------------------------------
    @property
    def scope(self) -> _Scope:
        return self.scopes[-1]

    def _where(self, node: ast.AST) -> str:
        path = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path
        return f"{path}:{getattr(node, 'lineno', 0)}"

    def _is_module(self, name: str) -> bool:
        return any(name in s.module_names for s in self.scopes)

    def _var_type(self, key: str):
        if key.startswith("self."):
            return self.class_types.get(key)
        for s in reversed(self.scopes):
            if key in s.types:
                return s.types[key]
        return None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        saved, self.class_types = self.class_types, {}
        self.generic_visit(node)
        self.class_types = saved

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        scope = _Scope()
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for a in args:
            if a.arg == "trt" and self.in_trt:
                scope.module_names.add("trt")
            elif a.annotation is not None and (t := self._annotation_type(a.annotation)):
                scope.types[a.arg] = t
        for ann in [*(a.annotation for a in args), node.returns]:
            self._annotation_paths(ann)
        for d in node.decorator_list:
            self.visit(d)
        self.scopes.append(scope)
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in ("tensorrt", "tensorrt_bindings"):
                self.scope.module_names.add(alias.asname or alias.name)

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            # annotations only: "trt" there names the module for annotations, not a run-time use
            for stmt in node.body:
                if isinstance(stmt, ast.Import):
                    self.visit(stmt)
            return
        self.generic_visit(node)

    # --- types --------------------------------------------------------------------------
    def _annotation_paths(self, ann: ast.AST | None) -> None:
        """``trt.X`` in an annotation must name a real class too."""
        for node in ast.walk(ann) if ann is not None else ():
            dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
            if dotted and dotted[0] == "trt" and len(dotted) == 2:
                self.uses.append(Use("path", "trt", dotted[1], self._where(node)))

    def _annotation_type(self, ann: ast.AST):
        dotted = _dotted(ann)
        if dotted and len(dotted) == 2 and dotted[0] == "trt":
            return dotted[1]
        if isinstance(ann, ast.Subscript) and _dotted(ann.value) == ["tuple"]:
            elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            return tuple(self._annotation_type(e) for e in elts)
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):  # "trt.X | None"
            return self._annotation_type(ann.left) or self._annotation_type(ann.right)
        return None

    def _type_of(self, node: ast.AST):
        """The TensorRT class an expression evaluates to, when the source and the bindings say."""
        if isinstance(node, ast.Name):
            return self._var_type(node.id)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted[0] == "self" and len(dotted) == 2:
                return self._var_type(f"self.{dotted[1]}")
            if dotted and self._is_module(dotted[0]) and len(dotted) == 3:
                return dotted[1]  # an enum member: trt.BuilderFlag.TF32 is a BuilderFlag
            owner = self._type_of(node.value)
            if isinstance(owner, str) and self.resolver:
                return self.resolver("property", owner, node.attr)
            return None
        if isinstance(node, ast.Call):
            func = node.func
            dotted = _dotted(func)
            if dotted and self._is_module(dotted[0]) and len(dotted) == 2:
                return dotted[1] if self.resolver and self.resolver("is_class", dotted[1], "") else None
            if isinstance(func, ast.Name) and func.id in self.our_returns:
                return self.our_returns[func.id]
            if isinstance(func, ast.Attribute):
                owner = self._type_of(func.value)
                if isinstance(owner, str) and self.resolver:
                    return self.resolver("returns", owner, func.attr)
        return None

    def _bind(self, target: ast.AST, t) -> None:
        if t is None:
            return
        if isinstance(target, ast.Tuple) and isinstance(t, tuple):
            for elt, sub in zip(target.elts, t, strict=False):
                self._bind(elt, sub)
            return
        if isinstance(target, ast.Name):
            self.scope.types[target.id] = t
        elif isinstance(target, ast.Attribute) and _dotted(target) and _dotted(target)[0] == "self":
            self.class_types[f"self.{target.attr}"] = t

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        if isinstance(node.value, ast.Call) and _dotted(node.value.func) and \
                _dotted(node.value.func)[-1] in MODULE_LOADERS:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.scope.module_names.add(target.id)
        t = self._type_of(node.value)
        for target in node.targets:
            self._visit_target(target)
            self._bind(target, t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self._visit_target(node.target)
        self._bind(node.target, self._annotation_type(node.annotation) or (
            self._type_of(node.value) if node.value is not None else None))

    def _visit_target(self, target: ast.AST) -> None:
        if isinstance(target, ast.Attribute):
            owner = self._type_of(target.value)
            if isinstance(owner, str):
                self.uses.append(Use("set", owner, target.attr, self._where(target)))
            self.visit(target.value)
        elif isinstance(target, ast.Tuple):
            for elt in target.elts:
                self._visit_target(elt)

    # --- uses ---------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
        positional = len(node.args)
        func = node.func
        dotted = _dotted(func)
        if dotted and self._is_module(dotted[0]) and len(dotted) >= 2:
            name = ".".join(dotted[1:])
            self.uses.append(Use("path", "trt", name, self._where(node)))
            self.uses.append(Use("call", "trt", name, self._where(node), positional, keywords))
        elif isinstance(func, ast.Attribute):
            owner = self._type_of(func.value)
            if isinstance(owner, str):
                self.uses.append(Use("call", owner, func.attr, self._where(node), positional, keywords))
            self.visit(func.value)
        else:
            self.visit(func)
        for a in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(a)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted and self._is_module(dotted[0]):
            self.uses.append(Use("path", "trt", ".".join(dotted[1:]), self._where(node)))
            return
        owner = self._type_of(node.value)
        if isinstance(owner, str):
            self.uses.append(Use("attr", owner, node.attr, self._where(node)))
        self.visit(node.value)


def _our_return_types(trees: dict[Path, ast.Module]) -> dict[str, object]:
    """Our functions annotated to return TensorRT types: {name: class or tuple of classes}."""
    probe = _Collector(PACKAGE, True, None, {})
    out = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.returns is not None:
                if (t := probe._annotation_type(node.returns)) and t != (None,):
                    out[node.name] = t
    return out


def collect(paths: list[Path] | None = None, resolver=None) -> list[Use]:
    """Every TensorRT use in ``paths`` (default: all of vit_deploy), in source order."""
    paths = paths or sorted(PACKAGE.rglob("*.py"))
    trees = {p: ast.parse(p.read_text(), str(p)) for p in paths}
    returns = _our_return_types(trees)
    uses: list[Use] = []
    for path, tree in trees.items():
        collector = _Collector(path, (PACKAGE / "trt") in path.parents, resolver, returns)
        collector.visit(tree)
        uses.extend(collector.uses)
    return uses


# --- the bindings' side ---------------------------------------------------------------------

_SIG = re.compile(r"^(?:\d+\.\s+)?(?P<name>\w+)\((?P<params>.*)\)\s*->\s*(?P<ret>.+)$")


def _split_params(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def signatures(func, name: str) -> list[dict]:
    """pybind11 overloads of ``func`` as [{"params": [(name, has_default)], "returns": str, "varargs": bool}]."""
    sigs = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group("name") != name:
            continue
        params, varargs = [], False
        for p in _split_params(m.group("params")):
            if p.startswith("*"):
                varargs = True
                continue
            pname = p.split(":")[0].split("=")[0].strip()
            params.append((pname, "=" in p))
        sigs.append({"params": params, "returns": m.group("ret").strip(), "varargs": varargs})
    if any(s["varargs"] and not s["params"] for s in sigs) and len(sigs) > 1:
        sigs = [s for s in sigs if s["params"]]  # "__init__(*args, **kwargs)" headers of overload lists
    if not sigs:  # a function written in Python (tensorrt.nptype): its real signature
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return []
        kinds = {p.kind for p in sig.parameters.values()}
        sigs = [{"params": [(n, p.default is not p.empty) for n, p in sig.parameters.items()
                            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)],
                 "returns": str(sig.return_annotation), "varargs": inspect.Parameter.VAR_POSITIONAL in kinds}]
    return sigs


def _accepts(sig: dict, positional: int, keywords: tuple[str, ...], bound: bool) -> bool:
    params = sig["params"][1:] if bound and sig["params"] and sig["params"][0][0] in ("self", "arg0") else sig["params"]
    if sig["varargs"] and not params:
        return True
    names = [n for n, _ in params]
    if positional > len(params) or any(k not in names for k in keywords):
        return False
    given = set(names[:positional]) | set(keywords)
    if len(given) != positional + len(keywords):
        return False  # a keyword repeats a positional parameter
    return all(n in given or has_default for n, has_default in params)


def _class_name(text: str, trt) -> str | None:
    for found in re.findall(r"(?:tensorrt\w*\.)+(\w+)", text):
        if isinstance(getattr(trt, found, None), type):
            return found
    return None


def make_resolver(trt):
    """The type oracle ``collect`` uses: return types of methods and properties from the bindings' docstrings."""

    def resolve(what: str, owner: str, name: str):
        cls = getattr(trt, owner, None)
        if what == "is_class":
            return isinstance(cls, type)
        if not isinstance(cls, type):
            return None
        member = getattr(cls, name, None)
        if what == "property" and isinstance(member, property) and member.fget is not None:
            m = re.search(r"->\s*(.+)$", (member.fget.__doc__ or "").strip().splitlines()[0])
            return _class_name(m.group(1), trt) if m else None
        if what == "returns" and callable(member):
            rets = {_class_name(s["returns"], trt) for s in signatures(member, name)}
            rets.discard(None)
            if len(rets) == 1:
                return rets.pop()
            if name.startswith("get_") or name.startswith("create_"):
                return None
        return None

    return resolve


def check(uses: list[Use], trt) -> tuple[list[str], dict[str, int]]:
    """(problems, counts) for ``uses`` against the imported bindings ``trt``."""
    problems: list[str] = []
    seen: set[str] = set()
    counts = {"paths": 0, "attributes": 0, "assignments": 0, "calls": 0, "uses": len(uses)}
    for use in uses:
        if use.key in seen:
            continue
        seen.add(use.key)
        if use.kind == "path":
            counts["paths"] += 1
            obj = trt
            for i, part in enumerate(use.name.split(".")):
                if not hasattr(obj, part):
                    problems.append(f"{use.where}: trt.{use.name}: {'.'.join(use.name.split('.')[:i + 1])} "
                                    "does not exist in the bindings")
                    break
                obj = getattr(obj, part)
            continue
        if use.owner == "trt":  # a module-level call: a constructor or a function
            obj = trt
            for part in use.name.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                continue  # reported as a path
            func, name, bound = (obj.__init__, "__init__", True) if isinstance(obj, type) else (obj, use.name, False)
            name = name.split(".")[-1]
        else:
            cls = getattr(trt, use.owner, None)
            member = getattr(cls, use.name, None)
            if member is None:
                problems.append(f"{use.where}: {use.owner}.{use.name} does not exist in the bindings")
                continue
            if use.kind == "attr":
                counts["attributes"] += 1
                continue
            if use.kind == "set":
                counts["assignments"] += 1
                if not (isinstance(member, property) and member.fset is not None):
                    problems.append(f"{use.where}: {use.owner}.{use.name} cannot be assigned (no setter)")
                continue
            func, name, bound = member, use.name, True
        counts["calls"] += 1
        sigs = signatures(func, name)
        if not sigs:
            problems.append(f"{use.where}: no signature found for {use.owner}.{use.name}")
        elif not any(_accepts(s, use.positional, use.keywords, bound) for s in sigs):
            shown = " | ".join(f"({', '.join(n for n, _ in s['params'])})" for s in sigs)
            problems.append(f"{use.where}: {use.owner}.{use.name} called with {use.positional} positional "
                            f"argument(s) and keywords {list(use.keywords)}; the bindings take {shown}")
    return problems, counts


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from vit_deploy.trt import import_tensorrt

    trt = import_tensorrt()
    paths = [Path(a) for a in sys.argv[1:]] or None
    uses = collect(paths, resolver=make_resolver(trt))
    problems, counts = check(uses, trt)
    print(json.dumps({"version": trt.__version__, "counts": counts, "problems": problems,
                      "uses": sorted({u.key for u in uses}), "sample": [asdict(u) for u in uses[:3]]}))


if __name__ == "__main__":
    main()
