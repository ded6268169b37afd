"""The README's Python block speaks the API as it is: every `fv.` call names a public function
and binds to its signature (positional count and keyword names), so a renamed or removed
argument shows here before a user meets it. The calls themselves run in the other tests."""

import ast
import inspect
import re
from pathlib import Path

import fastviz as fv

ROOT = Path(__file__).resolve().parents[1]


def readme_calls():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## From Python\s+```python\n(.*?)```", text, re.S).group(1)
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "fv":
            yield node


def test_every_readme_call_binds_to_the_function():
    calls = list(readme_calls())
    assert len(calls) >= 30
    for call in calls:
        name = call.func.attr
        assert name in fv.__all__, name
        fn = getattr(fv, name)
        sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
        args = [None] * len(call.args) if not inspect.isclass(fn) else [None] * (len(call.args) + 1)
        sig.bind_partial(*args, **{k.arg: None for k in call.keywords if k.arg})
