"""Repeat offenders: longer bans for addresses banned before, in fail2ban's words (`bantime.*`).

The options are fail2ban's (server/jail.py `setBanTimeExtra`, server/observer.py
`incrBanTime`, config/jail.conf), with the same meaning:

- `bantime.increment`: escalate at all. Off, every ban lasts `bantime` (and the other options,
  `rndtime` included, do nothing, as in fail2ban).
- `bantime.formula`: a Python expression of `ban.Time` (the jail's `bantime`), `ban.Count` (how
  many earlier bans of the address count, see `ban_count`) and `banFactor` (`bantime.factor`).
  The default is fail2ban's `ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor`.
  The result is never shorter than `ban.Time` (fail2ban wraps it in `max(ban.Time, ...)`).
- `bantime.multipliers`: used instead of the formula when set: `ban.Time * banFactor *
  multipliers[ban.Count]`, the last multiplier repeating past the end. Index 0 is never used,
  because the first ban (`ban.Count == 0`) is not escalated: with `1 2 4 8` the bans last 1, 2,
  4, 8, 8... times `bantime`. No floor at `ban.Time` on this path (fail2ban has none either).
- `bantime.factor`: a plain multiplier of every escalated ban (default 1), and `banFactor` in a
  formula. Not the growth ratio, see below.
- `bantime.maxtime`: caps an escalated ban. `bantime.rndtime`: adds `random() * rndtime`
  seconds, after the cap (so an escalated ban lasts at most `maxtime + rndtime`), so a botnet
  cannot compute when an address is let in again.
- `bantime.overalljails`: count the address's earlier bans in every jail, not only this one.

The first ban of an address (`ban.Count == 0`) always lasts `bantime`: fail2ban applies the
formula, `maxtime` and `rndtime` only when the address was banned before.

How the bans grow, and the issue's "the third ban lasts factor² x bantime": the third ban has
`ban.Count == 2`. Under the default formula the n-th ban lasts `bantime x 2^(n-1) x factor`:
1, 2, 4, 8... x bantime with factor 1, so the third lasts 2² x bantime. The ratio between two
bans is fixed at 2; `bantime.factor` multiplies every escalated ban (factor 3 makes the third
ban 12 x bantime, not 9 x). "factor² x bantime" holds when "factor" is read as that ratio r:
2 by default, r with `bantime.multipliers = 1 r r² r³...` (the third ban lasts r² x bantime x
bantime.factor), r with `bantime.formula = ban.Time * banFactor**ban.Count` and
`bantime.factor = r`, and e^factor with jail.conf's
`ban.Time * math.exp(float(ban.Count+1)*banFactor)/math.exp(1*banFactor)`.

fail2ban compiles the formula with `compile()` and runs it with `eval()`. Here a formula is
config text that may come from anyone who can write a config file, so `SafeFormula` parses it
with `ast` and builds an evaluator from a whitelist: numbers, `+ - * / // % ** << >>`, unary
`- + not`, comparisons, `and`/`or`, `a if c else b`, calls to `min max abs int float round` and
`math.exp log log2 log10 pow sqrt floor ceil`, the constants `math.e math.pi`, and the names
`ban.Time`, `ban.Count`, `banFactor`. Anything else is refused at load with a `ValueError`
naming the key and the construct. Numbers are bounded while evaluating (whole numbers to
`MAX_INT_BITS` bits, shifts and powers checked before they are computed), so `1 << 10**9` or
`9**9**9` fails at once instead of eating memory. At load the formula is also tried with
`ban.Time=600` and `ban.Count` 1 to 20: one that fails (`1/0`, `math.log(-1)`), or overflows
already for the first repeat, is refused. Overflowing for a later repeat makes that ban
`maxtime` long (or `bantime` without `maxtime`, what fail2ban does on any formula error).
"""

from __future__ import annotations

import ast
import math
import operator
import random as _random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

Number = int | float

DEFAULT_FORMULA = "ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor"
"""fail2ban's default `bantime.formula`: 1, 2, 4, 8... x bantime, saturating at 2^20."""

DBPURGEAGE = 86400.0
"""fail2ban's default `dbpurgeage` (fail2ban.conf, 1d): see `ban_count`."""

OUTDATED_FACTOR = 3
"""fail2ban's database keeps an address's last ban for `dbpurgeage` after 3 x its length."""

MAX_FORMULA_LENGTH = 500
MAX_FORMULA_DEPTH = 40
MAX_INT_BITS = 1024
"""Whole numbers in a formula stay below 2**1024 (about the largest float); past it, overflow."""

_TRIAL_BANTIME = 600.0
"""fail2ban's default bantime (10m): the `ban.Time` a formula is tried with at load."""
_TRIAL_COUNTS = range(1, 21)
"""The `ban.Count`s a formula is tried with at load (fail2ban never evaluates it with 0)."""


class FormulaError(Exception):
    """A formula failed while evaluating (division by zero, a math domain error...)."""


class FormulaOverflow(FormulaError):
    """A formula's value grew past what a number here may hold."""


# -- the safe evaluator --------------------------------------------------------------------------

_Env = tuple[float, int, float]
"""What a formula sees: (ban.Time, ban.Count, banFactor)."""
_Eval = Callable[[_Env], Number]


def _checked(value: object) -> Number:
    """`value` if it is a real number within bounds, else FormulaError/FormulaOverflow."""
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise FormulaOverflow(f"a whole number above 2**{MAX_INT_BITS}")
        return value
    if isinstance(value, float):
        if math.isinf(value):
            raise FormulaOverflow("an infinite number")
        if math.isnan(value):
            raise FormulaError("not a number (nan)")
        return value
    raise FormulaError(f"{type(value).__name__} is not a real number")


def _whole(value: Number, op: str) -> int:
    if not isinstance(value, int):
        raise FormulaError(f"{op!r} needs whole numbers, got {value!r}")
    return value


def _pow(base: Number, exponent: Number) -> Number:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS):
        raise FormulaOverflow(f"{base} ** {exponent}")
    return _checked(base**exponent)


def _lshift(value: Number, count: Number) -> Number:
    value, count = _whole(value, "<<"), _whole(count, "<<")
    if count < 0:
        raise FormulaError("negative shift count")
    if value and value.bit_length() + count > MAX_INT_BITS:
        raise FormulaOverflow(f"{value} << {count}")
    return value << count


def _rshift(value: Number, count: Number) -> Number:
    value, count = _whole(value, ">>"), _whole(count, ">>")
    if count < 0:
        raise FormulaError("negative shift count")
    return value >> min(count, MAX_INT_BITS + 1)


def _round(value: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(value)
    if not isinstance(ndigits, int) or abs(ndigits) > 30:
        raise FormulaError("round() takes at most 30 digits")
    return round(value, ndigits)


_BINARY: dict[type[ast.operator], tuple[str, Callable[[Number, Number], Number]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", _pow),
    ast.LShift: ("<<", _lshift),
    ast.RShift: (">>", _rshift),
}
_COMPARE: dict[type[ast.cmpop], Callable[[Number, Number], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_Function = tuple[Callable[..., Number], int, int]
"""A callable and how many arguments it takes (least, most)."""
_FUNCTIONS: dict[str, _Function] = {
    "min": (min, 2, 64), "max": (max, 2, 64), "abs": (abs, 1, 1),
    "int": (int, 1, 1), "float": (float, 1, 1), "round": (_round, 1, 2),
}
_MATH_FUNCTIONS: dict[str, _Function] = {
    "exp": (math.exp, 1, 1), "log": (math.log, 1, 2), "log2": (math.log2, 1, 1),
    "log10": (math.log10, 1, 1), "pow": (math.pow, 2, 2), "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1),
}
_MATH_CONSTANTS = {"e": math.e, "pi": math.pi}
_BAN_FIELDS = {"Time": 0, "Count": 1}
_KINDS = {
    ast.Lambda: "lambda", ast.ListComp: "comprehension", ast.SetComp: "comprehension",
    ast.DictComp: "comprehension", ast.GeneratorExp: "comprehension",
    ast.Subscript: "subscript", ast.NamedExpr: "assignment expression",
    ast.JoinedStr: "f-string", ast.Starred: "starred argument", ast.List: "list",
    ast.Tuple: "tuple", ast.Set: "set", ast.Dict: "dict", ast.Await: "await",
}


def _source(node: ast.AST) -> str:
    text = ast.unparse(node)
    return repr(text if len(text) <= 40 else text[:37] + "...")


class SafeFormula:
    """A formula parsed once into a tree of closures that can do arithmetic and nothing else.

    `key` names the config option in error messages. With `variables=False` the text may not use
    `ban.*` or `banFactor` (for `bantime.factor`, which fail2ban also evaluates).
    """

    __slots__ = ("_eval", "_variables", "key", "text")

    def __init__(self, text: str, *, key: str = "bantime.formula", variables: bool = True) -> None:
        self.text, self.key = text, key
        self._variables = variables
        if len(text) > MAX_FORMULA_LENGTH:
            raise ValueError(f"{key}: longer than {MAX_FORMULA_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            raise ValueError(f"{key}: not an expression: {e}") from None
        self._eval = self._compile(tree.body, 0)

    def __repr__(self) -> str:
        return f"SafeFormula({self.text!r}, key={self.key!r})"

    def _refuse(self, what: str, node: ast.AST) -> ValueError:
        return ValueError(f"{self.key}: {what} is not allowed: {_source(node)}")

    def _compile(self, node: ast.expr, depth: int) -> _Eval:
        if depth > MAX_FORMULA_DEPTH:
            raise ValueError(f"{self.key}: nested deeper than {MAX_FORMULA_DEPTH}")
        sub = depth + 1
        if isinstance(node, ast.Constant):
            value = node.value
            if not isinstance(value, int | float):
                raise self._refuse(f"constant of type {type(value).__name__}", node)
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                raise ValueError(f"{self.key}: number too large: {_source(node)}")
            return lambda env: value
        if isinstance(node, ast.Name):
            if node.id == "banFactor" and self._variables:
                return lambda env: env[2]
            raise self._refuse(f"name {node.id!r}", node)
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner == "ban" and node.attr in _BAN_FIELDS and self._variables:
                index = _BAN_FIELDS[node.attr]
                return lambda env: env[index]
            if owner == "math" and node.attr in _MATH_CONSTANTS:
                constant = _MATH_CONSTANTS[node.attr]
                return lambda env: constant
            raise self._refuse("attribute", node)
        if isinstance(node, ast.UnaryOp):
            operand = self._compile(node.operand, sub)
            if isinstance(node.op, ast.USub):
                return lambda env: -operand(env)
            if isinstance(node.op, ast.UAdd):
                return lambda env: +operand(env)
            if isinstance(node.op, ast.Not):
                return lambda env: not operand(env)
            raise self._refuse("operator '~'", node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise self._refuse(f"operator {type(node.op).__name__}", node)
            fn = _BINARY[type(node.op)][1]
            left, right = self._compile(node.left, sub), self._compile(node.right, sub)
            return lambda env: _checked(fn(left(env), right(env)))
        if isinstance(node, ast.BoolOp):
            values = [self._compile(v, sub) for v in node.values]
            if isinstance(node.op, ast.And):
                def both(env: _Env) -> Number:
                    result: Number = True
                    for v in values:
                        result = v(env)
                        if not result:
                            break
                    return result
                return both

            def either(env: _Env) -> Number:
                result: Number = False
                for v in values:
                    result = v(env)
                    if result:
                        break
                return result
            return either
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise self._refuse(f"comparison {type(op).__name__}", node)
            tests = [_COMPARE[type(op)] for op in node.ops]
            operands = [self._compile(node.left, sub),
                        *(self._compile(c, sub) for c in node.comparators)]

            def compare(env: _Env) -> Number:
                left = operands[0](env)
                for test, right_of in zip(tests, operands[1:], strict=True):
                    right = right_of(env)
                    if not test(left, right):
                        return False
                    left = right
                return True
            return compare
        if isinstance(node, ast.IfExp):
            test = self._compile(node.test, sub)
            then, other = self._compile(node.body, sub), self._compile(node.orelse, sub)
            return lambda env: then(env) if test(env) else other(env)
        if isinstance(node, ast.Call):
            return self._compile_call(node, sub)
        raise self._refuse(_KINDS.get(type(node), type(node).__name__), node)

    def _compile_call(self, node: ast.Call, depth: int) -> _Eval:
        func = node.func
        spec: _Function | None = None
        if isinstance(func, ast.Name):
            spec = _FUNCTIONS.get(func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and func.value.id == "math":
            spec = _MATH_FUNCTIONS.get(func.attr)
        if spec is None:
            raise self._refuse(f"call of {ast.unparse(func)!r}", node)
        fn, least, most = spec
        if node.keywords:
            raise self._refuse("keyword argument", node)
        args = [self._compile(a, depth) for a in node.args]
        if not least <= len(args) <= most:
            raise ValueError(f"{self.key}: {ast.unparse(func)}() takes {least} to {most} "
                             f"arguments: {_source(node)}")
        return lambda env: _checked(fn(*(a(env) for a in args)))

    def evaluate(self, time: float = 0.0, count: int = 0, factor: float = 1.0) -> float:
        """The formula's value for `ban.Time=time`, `ban.Count=count`, `banFactor=factor`.

        Raises FormulaOverflow when a value grows out of bounds, FormulaError for any other
        arithmetic failure; never anything else.
        """
        try:
            return float(_checked(self._eval((time, count, factor))))
        except FormulaError as e:
            raise type(e)(f"{self.key}: {e}") from None
        except OverflowError as e:
            raise FormulaOverflow(f"{self.key}: {e}") from None
        except (ArithmeticError, ValueError, TypeError) as e:
            raise FormulaError(f"{self.key}: {e}") from None


def parse_factor(text: str) -> float:
    """`bantime.factor` as fail2ban reads it: an arithmetic expression (`2.0 / 2.885385`)."""
    try:
        return SafeFormula(text, key="bantime.factor", variables=False).evaluate()
    except FormulaError as e:
        raise ValueError(f"bantime.factor: {e}") from None


def parse_multipliers(text: str) -> tuple[float, ...]:
    """`bantime.multipliers` as written in a jail: numbers separated by spaces ("1 2 4 8")."""
    values: list[float] = []
    for word in text.split():
        try:
            number = float(word)
        except ValueError:
            raise ValueError(f"bantime.multipliers: not a number: {word[:20]!r}") from None
        values.append(int(number) if number.is_integer() else number)
    return tuple(values)


# -- the settings and the computation ------------------------------------------------------------


def _positive(value: float | None, key: str, *, zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{key}: must be a {'non-negative' if zero else 'positive'} "
                         f"finite number, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EscalationSettings:
    """A jail's `bantime.*` options (seconds for times). Validated here, formula compiled once."""

    increment: bool = False
    factor: float = 1.0
    formula: str | None = None
    """None or blank: fail2ban's `DEFAULT_FORMULA`."""
    multipliers: tuple[float, ...] = ()
    """Non-empty: used instead of the formula (which is still checked), as in fail2ban."""
    maxtime: float | None = None
    rndtime: float | None = None
    overalljails: bool = False
    evaluator: SafeFormula = field(init=False, repr=False, compare=False)
    """The formula, compiled."""

    def __post_init__(self) -> None:
        _positive(self.factor, "bantime.factor")
        for m in self.multipliers:
            _positive(m, "bantime.multipliers")
        _positive(self.maxtime, "bantime.maxtime")
        _positive(self.rndtime, "bantime.rndtime", zero=True)
        text = self.formula if self.formula and self.formula.strip() else DEFAULT_FORMULA
        evaluator = SafeFormula(text, key="bantime.formula")
        for count in _TRIAL_COUNTS:
            # catch a formula that cannot work (1/0, math.log(-1), 1.5 << 2, 1 << 10**9) at load,
            # not at the first repeat offender; growing too large for bigger counts is fine
            # (maxtime caps it)
            try:
                evaluator.evaluate(_TRIAL_BANTIME, count, self.factor)
            except FormulaOverflow as e:
                if count == _TRIAL_COUNTS[0]:
                    raise ValueError(f"{e} already (with ban.Time={_TRIAL_BANTIME:g}, "
                                     f"ban.Count={count}, banFactor={self.factor:g})") from None
                break
            except FormulaError as e:
                raise ValueError(f"{e} (with ban.Time={_TRIAL_BANTIME:g}, "
                                 f"ban.Count={count}, banFactor={self.factor:g})") from None
        object.__setattr__(self, "evaluator", evaluator)

    def check_bantime(self, bantime: float) -> None:
        """Refuse a `maxtime` shorter than the jail's `bantime` (fail2ban takes it, and then
        bans a repeat offender for less time than a first offender)."""
        if self.increment and self.maxtime is not None and self.maxtime < bantime:
            raise ValueError(f"bantime.maxtime: {self.maxtime:g} is shorter than "
                             f"bantime {bantime:g}")


def ban_time(settings: EscalationSettings, bantime: float, count: int, *,
             random: Callable[[], float] = _random.random) -> float:
    """Seconds a new ban lasts, given the jail's `bantime` and `count` earlier bans
    (`ban.Count`, from `ban_count`); `random()` returns a float in [0, 1) for `rndtime`.

    As fail2ban's `incrBanTime`: no increment, a first ban or a non-positive bantime: `bantime`.
    Otherwise multipliers or formula (floored at `bantime`), capped by `maxtime`, plus
    `random() * rndtime`. A formula that overflows gives `maxtime`; without `maxtime`, or when
    a formula fails otherwise, the ban lasts `bantime` (fail2ban logs the error and does so).
    """
    if count < 0:
        raise ValueError(f"ban count must not be negative, got {count}")
    if not settings.increment or count == 0 or bantime <= 0:
        return bantime
    seconds: float
    if settings.multipliers:
        m = settings.multipliers
        seconds = bantime * settings.factor * m[count if count < len(m) else -1]
    else:
        try:
            seconds = max(bantime, settings.evaluator.evaluate(bantime, count, settings.factor))
        except FormulaOverflow:
            seconds = math.inf
        except FormulaError:
            return bantime
    if settings.maxtime is not None:
        seconds = min(seconds, settings.maxtime)
    if not math.isfinite(seconds):
        return bantime
    if settings.rndtime:
        seconds += random() * settings.rndtime
    return seconds


class BanRecord(NamedTuple):
    """One earlier ban of an address, as the store keeps it."""

    jail: str
    start: float
    """When it began, on the clock `now` is on (wall time: the history outlives the process)."""
    end: float
    """When it ends or ended (`math.inf` for a ban without end)."""


def ban_count(history: Iterable[BanRecord], jail: str, now: float, *,
              overalljails: bool = False, dbpurgeage: float = DBPURGEAGE) -> int:
    """`ban.Count` for a new ban of an address by `jail` at `now`: how many of its earlier bans
    (`history`, in any order) count.

    With `overalljails` every jail's bans count, otherwise only `jail`'s. Bans that start after
    `now` are ignored. fail2ban keeps, per address and jail, only its latest ban, carrying the
    count so far, and purges it once older than `dbpurgeage` + 3 x its length; the count then
    starts again. So here: bans are chained in start order, and the chain is forgotten when,
    at the next ban or at `now`, every jail's latest ban in it is that old.
    """
    if not dbpurgeage >= 0:
        raise ValueError(f"dbpurgeage must not be negative, got {dbpurgeage!r}")
    bans = sorted((r for r in history if (overalljails or r.jail == jail) and r.start <= now),
                  key=lambda r: r.start)
    count = 0
    kept_until: dict[str, float] = {}
    """jail -> until when fail2ban's database would keep the chain's latest ban by that jail"""
    for ban in bans:
        if count and max(kept_until.values()) < ban.start:
            count = 0
            kept_until.clear()
        count += 1
        kept_until[ban.jail] = (ban.start + OUTDATED_FACTOR * max(ban.end - ban.start, 0.0)
                                + dbpurgeage)
    if count and max(kept_until.values()) < now:
        return 0
    return count


def failure_weight(settings: EscalationSettings, count: int, maxretry: int) -> int:
    """How many failures one failure of an address counts for, `count` being its earlier bans
    by this jail (`ban_count` without overalljails, as fail2ban's `failureFound` reads them).

    With `bantime.increment` fail2ban counts a known offender's failure as 2, 3, 5, 9, 17...
    failures (2^(count-1) + 1, the shift capped at 20) but never more than `maxretry`, so it is
    banned again sooner. 1 without increment or earlier bans.
    """
    if not settings.increment or count <= 0:
        return 1
    return max(1, min((1 << min(count, 20)) // 2 + 1, maxretry))
