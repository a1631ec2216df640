"""The `calculator` tool: arithmetic by walking a whitelisted syntax tree.

The expression is parsed with `ast.parse` (a parser only: nothing is compiled to code, nothing is
evaluated by Python) and the tree is walked by hand. Only numbers, + - * / // % ** (and `^` as
power), unary + -, parentheses, a few math functions and constants are accepted; everything else
is refused. Sizes are bounded so that no input can burn CPU or memory: the expression length,
the exponent, and every intermediate integer.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Final

from tether.tools.registry import ToolError

MAX_EXPRESSION_CHARS: Final = 500
MAX_EXPONENT: Final = 10_000
# Integers stay below Python's 4300-digit str() limit (~14,280 bits).
MAX_INT_BITS: Final = 14_000

Number = int | float

# A character whitelist first: no quotes, brackets, backslashes, colons or attribute tricks ever
# reach the parser (and no string literal can make it emit warnings).
_ALLOWED_CHARS: Final = re.compile(r"^[0-9a-zA-Z_+\-*/%^().,\s]*$")

_BINARY: Final[dict[type[ast.operator], Callable[[Number, Number], Number]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _round(x: Number, ndigits: Number = 0) -> Number:
    if not isinstance(ndigits, int) or abs(ndigits) > 100:
        raise ToolError("round: ndigits must be a whole number between -100 and 100")
    return round(x, ndigits) if ndigits else round(x)


_FUNCTIONS: Final[dict[str, Callable[..., Number]]] = {
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "hypot": math.hypot,
    "degrees": math.degrees,
    "radians": math.radians,
}
_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: e.g. "2 * (3 + 4) ** 2". Numbers, + - * / // % ** (or ^), parentheses, and
            sqrt, exp, log, log10, log2, sin, cos, tan, asin, acos, atan, atan2, hypot,
            abs, round, floor, ceil, degrees, radians; constants pi, e, tau.
    """
    return format_number(evaluate(expression))


def format_number(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    # 15 significant digits: 0.1 + 0.2 reads "0.3", as a person expects.
    return f"{value:.15g}"


def evaluate(expression: str) -> Number:
    """The value of `expression`; raises ToolError with a readable reason for anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (max {MAX_EXPRESSION_CHARS} characters)")
    if not _ALLOWED_CHARS.match(expression):
        bad = sorted({c for c in expression if not _ALLOWED_CHARS.match(c)})
        raise ToolError(f"unsupported characters in expression: {' '.join(map(repr, bad))}")
    text = expression.replace("^", "**").strip()
    if not text:
        raise ToolError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid arithmetic expression: {exc.msg}") from None
    except ValueError as exc:  # e.g. NUL bytes, which the whitelist already stops
        raise ToolError(f"not a valid arithmetic expression: {exc}") from None
    try:
        return _eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}") from None


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        # bool is an int subclass: `True` is not arithmetic.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"unsupported value: {value!r}")
        return _checked(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _eval(node.operand)
        return _checked(-operand if isinstance(node.op, ast.USub) else +operand)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ToolError(f"unsupported operator: {type(node.op).__name__}")
        return _checked(op(left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        return _call(node)
    what = type(node.op).__name__ if isinstance(node, ast.UnaryOp) else type(node).__name__
    raise ToolError(f"unsupported syntax: {what} (only numbers, operators and math functions)")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
        raise ToolError(f"unknown function {name!r}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ToolError(f"{node.func.id}: only plain positional arguments are allowed")
    args = [_eval(a) for a in node.args]
    try:
        return _checked(_FUNCTIONS[node.func.id](*args))
    except TypeError:
        raise ToolError(f"{node.func.id}: wrong number of arguments ({len(args)})") from None


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (max {MAX_EXPONENT})")
    # Refuse before computing: an integer power has about exponent * bits(base) bits.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS
    ):
        raise ToolError("result too large")
    result = base**exponent
    if isinstance(result, complex):  # (-8) ** 0.5 and friends
        raise ToolError("math error: the result is not a real number")
    return result


def _checked(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("math error: the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result too large" if math.isinf(value) else "math error: not a number")
    return value
