"""Recursive-descent parser from answer tokens to sympy objects, through an allow-list.

Nothing here evaluates text: every sympy object is built by calling a constructor on values
that the grammar produced (`sympy.Integer`, `sympy.Symbol`, `sympy.sin`, ...). Names outside
`FUNCTIONS`, `CONSTANTS` and `GREEK` raise `ParseError`. This is the safe replacement for
`sympify`/`parse_expr`, which call `eval` on their input.

Grammar (loosest binding first):

    answer   := union ((',' | ';') union)*
    union    := relation ('\\cup' relation)*
    relation := expr (relop expr)*
    expr     := [sign] term (('+' | '-' | '\\pm' | '\\mp') term)*
    term     := factor (('*' | '/' | '\\cdot' | '\\times' | '\\div') factor | factor)*
    factor   := ('-' | '+') factor | power
    power    := postfix ('^' exponent)?
    postfix  := atom '!'*
    atom     := number | name | command | '(' list ')' | '[' list ']' | '{' expr '}' | '|' expr '|'

Exact integer powers and factorials whose result would exceed `MAX_EXACT_BITS` bits are kept
unevaluated, so a memory-hungry input such as `2^{2^{2^{2^{2^{2}}}}}` cannot allocate
gigabytes; `is_oversized` finds such nodes.
"""

from __future__ import annotations

import re

import sympy

from sphere_jax.grading.forms import Answer, Collection, Interval, IntervalUnion, Matrix, Relation, Text
from sphere_jax.grading.lexer import PLAIN_NAMES, Token, tokenize
from sphere_jax.grading.normalize import normalize_answer

# Exact integers up to this many bits (2 MiB) are computed; larger powers and factorials stay
# unevaluated.
MAX_EXACT_BITS = 1 << 24
_MAX_EXACT_FACTORIAL = 100_000

# The sign symbol of a plus-minus: `a \pm b` parses as a + PLUS_MINUS*b, and the comparison
# expands it into the set {a + b, a - b}. The lexer cannot produce this name.
PLUS_MINUS = sympy.Symbol("\\pm")


class ParseError(ValueError):
    """Raised for text that is not a supported answer."""


FUNCTIONS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
    "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "asin": sympy.asin, "acos": sympy.acos, "atan": sympy.atan, "sinh": sympy.sinh,
    "cosh": sympy.cosh, "tanh": sympy.tanh, "exp": sympy.exp, "ln": sympy.log, "log": sympy.log,
    "sqrt": sympy.sqrt, "abs": sympy.Abs, "floor": sympy.floor, "ceil": sympy.ceiling,
}
_INVERSE_TRIG = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}
CONSTANTS = {
    "pi": sympy.pi, "infty": sympy.oo, "infinity": sympy.oo, "inf": sympy.oo, "oo": sympy.oo,
    "e": sympy.E, "i": sympy.I,
}
GREEK = frozenset(
    {
        "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
        "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau",
        "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
        "Xi", "Sigma", "Phi", "Psi", "Omega",
    }
)
_RELATIONS = {"=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!=",
              "\\leq": "<=", "\\geq": ">=", "\\neq": "!="}
_MULTIPLY = frozenset({"*", "\\cdot", "\\times"})
# A ratio `a:b` is read as a/b.
_DIVIDE = frozenset({"/", "\\div", ":"})
_MATRIX_ENVIRONMENTS = frozenset({"pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix"})
_ATOM_COMMANDS = frozenset({"\\frac", "\\sqrt", "\\binom", "\\lfloor", "\\lceil", "\\lvert", "\\pi", "\\infty"})
_WORD_ANSWER = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")


def _bits(value: sympy.Rational) -> int:
    return max(int(value.p).bit_length(), int(value.q).bit_length())


def is_oversized(expr: sympy.Basic) -> bool:
    """Return whether `expr` holds a power or factorial left unevaluated for its size."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            base, exponent = node.args
            if base.is_Rational and exponent.is_Integer and abs(base) != 1 and base != 0:
                if _bits(base) * abs(int(exponent)) > MAX_EXACT_BITS:
                    return True
            if base.is_Rational and is_oversized(exponent) and abs(base) != 1 and base != 0:
                return True
        elif isinstance(node, sympy.factorial):
            argument = node.args[0]
            if argument.is_Integer and int(argument) > _MAX_EXACT_FACTORIAL:
                return True
    return False


def power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """Return base**exponent, unevaluated when an exact result would exceed MAX_EXACT_BITS."""
    if base.is_Rational and abs(base) != 1 and base != 0:
        if exponent.is_Integer:
            # bits(base**n) <= n * bits(base); the product is computed without forming the power.
            if _bits(base) * abs(int(exponent)) > MAX_EXACT_BITS:
                return sympy.Pow(base, exponent, evaluate=False)
        elif is_oversized(exponent):
            return sympy.Pow(base, exponent, evaluate=False)
    if is_oversized(base) or is_oversized(exponent):
        return sympy.Pow(base, exponent, evaluate=False)
    return sympy.Pow(base, exponent)


def factorial(argument: sympy.Expr) -> sympy.Expr:
    """Return argument!, unevaluated for integers above 100,000 (over 1.5 million bits)."""
    if argument.is_Integer and int(argument) > _MAX_EXACT_FACTORIAL:
        return sympy.factorial(argument, evaluate=False)
    if argument.is_Integer and int(argument) < 0:
        raise ParseError(f"factorial of the negative integer {argument}")
    return sympy.factorial(argument)


def _is_word_answer(text: str) -> bool:
    """Return whether `text` is a word answer such as "Evelyn" rather than a product of letters."""
    if not _WORD_ANSWER.match(text):
        return False
    for run in re.findall(r"[A-Za-z]+", text):
        if len(run) >= 3 and run.lower() not in PLAIN_NAMES:
            return True
    return False


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0
        self.abs_depth = 0

    # Token helpers.

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.position + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.position]
        if token.kind != "eof":
            self.position += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.peek()
        return token.kind == kind and (text is None or token.text == text)

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        if self.at(kind, text):
            return self.advance()
        return None

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.accept(kind, text)
        if token is None:
            found = self.peek()
            wanted = text if text is not None else kind
            raise ParseError(f"expected {wanted!r} but found {found.text or found.kind!r}")
        return token

    # Grammar.

    def parse_answer(self) -> Answer:
        items = [self.parse_union()]
        while self.accept("op", ",") or self.accept("op", ";"):
            items.append(self.parse_union())
        self.expect("eof")
        if len(items) == 1:
            return items[0]
        first = items[0]
        # `x = 1, 2` lists the values of x.
        if (
            isinstance(first, Relation)
            and first.ops == ("=",)
            and isinstance(first.sides[0], sympy.Symbol)
            and all(isinstance(item, sympy.Expr) for item in items[1:])
        ):
            items[0] = first.sides[1]
        return Collection(tuple(items), "list")

    def parse_union(self) -> Answer:
        first = self.parse_relation()
        if not self.at("cmd", "\\cup"):
            return first
        parts = [self._as_interval(first)]
        while self.accept("cmd", "\\cup"):
            parts.append(self._as_interval(self.parse_relation()))
        return IntervalUnion(tuple(parts))

    @staticmethod
    def _as_interval(value: Answer) -> Interval:
        if isinstance(value, Interval):
            return value
        if isinstance(value, Collection) and value.kind == "tuple" and len(value.items) == 2:
            left, right = value.items
            if isinstance(left, sympy.Expr) and isinstance(right, sympy.Expr):
                return Interval(left, right, False, False)
        if isinstance(value, Collection) and value.kind == "set":
            raise ParseError("a union of finite sets is not supported; write the set itself")
        raise ParseError(f"only intervals can be joined with \\cup, not {type(value).__name__}")

    def parse_relation(self) -> Answer:
        first = self.parse_expr()
        sides = [first]
        ops = []
        while True:
            token = self.peek()
            if token.kind in ("op", "cmd") and token.text in _RELATIONS:
                self.advance()
                ops.append(_RELATIONS[token.text])
                sides.append(self.parse_expr())
            else:
                break
        if not ops:
            return first
        for side in sides:
            if not isinstance(side, sympy.Expr):
                raise ParseError("both sides of a relation must be expressions")
        return Relation(tuple(sides), tuple(ops))

    def parse_expr(self) -> Answer:
        sign = None
        if self.accept("op", "-"):
            sign = -1
        elif self.accept("op", "+"):
            sign = 1
        elif self.accept("cmd", "\\pm"):
            sign = PLUS_MINUS
        elif self.accept("cmd", "\\mp"):
            sign = -PLUS_MINUS
        result = self.parse_term()
        if sign is not None:
            result = self._scalar(result, "a sign") * sign
        while True:
            if self.accept("op", "+"):
                result = self._scalar(result, "+") + self._scalar(self.parse_term(), "+")
            elif self.accept("op", "-"):
                result = self._scalar(result, "-") - self._scalar(self.parse_term(), "-")
            elif self.accept("cmd", "\\pm"):
                result = self._scalar(result, "\\pm") + PLUS_MINUS * self._scalar(self.parse_term(), "\\pm")
            elif self.accept("cmd", "\\mp"):
                result = self._scalar(result, "\\mp") - PLUS_MINUS * self._scalar(self.parse_term(), "\\mp")
            else:
                return result

    @staticmethod
    def _scalar(value: Answer, operation: str) -> sympy.Expr:
        if not isinstance(value, sympy.Expr):
            raise ParseError(f"{operation} needs numbers or expressions, not a {type(value).__name__}")
        return value

    def _starts_atom(self) -> bool:
        token = self.peek()
        if token.kind in ("num", "name"):
            return True
        if token.kind == "cmd":
            return token.text in _ATOM_COMMANDS or token.text[1:] in FUNCTIONS or token.text[1:] in GREEK
        if token.kind == "op":
            return token.text in ("(", "{") or (token.text == "|" and self.abs_depth == 0)
        return False

    def parse_term(self) -> Answer:
        mixed_whole = self.peek().text if self.at("num") and self.peek().text.isdigit() else None
        result = self.parse_factor()
        first = True
        while True:
            token = self.peek()
            if token.kind in ("op", "cmd") and token.text in _MULTIPLY:
                self.advance()
                result = self._scalar(result, token.text) * self._scalar(self.parse_factor(), token.text)
            elif token.kind in ("op", "cmd") and token.text in _DIVIDE:
                self.advance()
                divisor = self._scalar(self.parse_factor(), token.text)
                result = self._scalar(result, token.text) / divisor
            elif self._starts_atom():
                if token.kind == "num" and not first:
                    raise ParseError(f"number {token.text!r} directly after another factor")
                if token.kind == "num" and first and self.tokens[self.position - 1].kind == "num":
                    raise ParseError(f"two numbers in a row: {self.tokens[self.position - 1].text!r} {token.text!r}")
                fraction = self._mixed_fraction() if first and mixed_whole is not None else None
                if fraction is not None:
                    # A mixed number: `3\frac{1}{2}` is 3 + 1/2.
                    result = self._scalar(result, "a mixed number") + fraction
                else:
                    result = self._scalar(result, "a product") * self._scalar(self.parse_factor(), "a product")
            else:
                return result
            first = False

    def _mixed_fraction(self) -> sympy.Rational | None:
        """Parse `\\frac{a}{b}` with integer literals a < b, or return None and consume nothing."""
        if not self.at("cmd", "\\frac"):
            return None
        start = self.position
        saved_tokens = list(self.tokens)
        self.advance()
        try:
            numerator = self._integer_argument()
            denominator = self._integer_argument()
        except ParseError:
            numerator = denominator = None
        following = self.peek()
        if (
            numerator is None
            or denominator is None
            or denominator == 0
            or numerator >= denominator
            or (following.kind == "op" and following.text in ("^", "!"))
        ):
            # Digit splitting may have rewritten tokens, so restore them with the position.
            self.tokens = saved_tokens
            self.position = start
            return None
        return sympy.Rational(numerator, denominator)

    def _integer_argument(self) -> int | None:
        if self.accept("op", "{"):
            token = self.expect("num")
            self.expect("op", "}")
            return int(token.text) if token.text.isdigit() else None
        token = self.peek()
        if token.kind == "num" and token.text.isdigit():
            self._take_one_digit()
            return int(token.text[0])
        return None

    def _take_one_digit(self) -> Token:
        """Consume the first digit of a number token, as `\\frac12` and `\\sqrt2` read it."""
        token = self.advance()
        if len(token.text) > 1:
            self.position -= 1
            self.tokens[self.position] = Token("num", token.text[1:])
            return Token("num", token.text[0])
        return token

    def parse_factor(self) -> Answer:
        if self.accept("op", "-"):
            return -self._scalar(self.parse_factor(), "-")
        if self.accept("op", "+"):
            return self._scalar(self.parse_factor(), "+")
        return self.parse_power()

    def parse_power(self) -> Answer:
        base = self.parse_postfix()
        if self.accept("op", "^"):
            exponent = self.parse_exponent()
            return power(self._scalar(base, "^"), exponent)
        return base

    def parse_exponent(self) -> sympy.Expr:
        if self.accept("op", "{"):
            exponent = self._scalar(self.parse_relation(), "^")
            self.expect("op", "}")
            return exponent
        if self.accept("op", "-"):
            return -self.parse_exponent()
        if self.accept("op", "+"):
            return self.parse_exponent()
        # `x^2^3` is x^(2^3), as in Python.
        return self._scalar(self.parse_power(), "^")

    def parse_postfix(self) -> Answer:
        value = self.parse_atom()
        while self.accept("op", "!"):
            value = factorial(self._scalar(value, "!"))
        return value

    def parse_atom(self) -> Answer:
        token = self.peek()
        if token.kind == "num":
            return self.parse_number()
        if token.kind == "name":
            return self.parse_name()
        if token.kind == "cmd":
            return self.parse_command()
        if token.kind == "begin":
            return self.parse_matrix()
        if token.kind == "op":
            if token.text in ("(", "["):
                return self.parse_bracketed()
            if token.text == "{":
                self.advance()
                value = self.parse_relation()
                if not self.at("op", ","):
                    self.expect("op", "}")
                    return value
                # `{1, 2}`: a set written without the backslashes that LaTeX needs.
                items = [value]
                while self.accept("op", ","):
                    items.append(self.parse_relation())
                self.expect("op", "}")
                return Collection(tuple(items), "set")
            if token.text == "|":
                self.advance()
                self.abs_depth += 1
                inner = self._scalar(self.parse_expr(), "|...|")
                self.abs_depth -= 1
                self.expect("op", "|")
                return sympy.Abs(inner)
        raise ParseError(f"unexpected {token.text or token.kind!r}")

    def parse_number(self) -> sympy.Expr:
        text = self.advance().text
        if self.at("op", "_"):
            # A numeral in another base, such as 204_5; kept as an opaque symbol.
            self.advance()
            base = self._subscript_text()
            return sympy.Symbol(f"{text}_{base}")
        if "." in text or "e" in text.lower():
            digits = len(re.sub(r"[^0-9]", "", text))
            return sympy.Float(text, max(15, digits + 2))
        return sympy.Integer(int(text))

    def _subscript_text(self) -> str:
        if self.accept("op", "{"):
            parts = []
            while not self.at("op", "}"):
                token = self.advance()
                if token.kind not in ("num", "name"):
                    raise ParseError(f"unsupported subscript part {token.text or token.kind!r}")
                parts.append(token.text)
            self.advance()
            if not parts:
                raise ParseError("empty subscript")
            return "".join(parts)
        token = self.advance()
        if token.kind not in ("num", "name"):
            raise ParseError(f"unsupported subscript {token.text or token.kind!r}")
        return token.text

    def parse_name(self) -> sympy.Expr:
        name = self.advance().text
        if name in FUNCTIONS:
            return self.parse_function(name)
        if name in CONSTANTS:
            return CONSTANTS[name]
        if len(name) != 1:
            raise ParseError(f"unknown name {name!r}")
        if self.accept("op", "_"):
            return sympy.Symbol(f"{name}_{self._subscript_text()}")
        return sympy.Symbol(name)

    def parse_command(self) -> Answer:
        command = self.advance().text
        name = command[1:]
        if name == "frac":
            numerator = self._command_argument()
            denominator = self._command_argument()
            return numerator / denominator
        if name == "sqrt":
            return self.parse_sqrt()
        if name == "binom":
            n = self._command_argument()
            k = self._command_argument()
            return sympy.binomial(n, k)
        if name in ("lfloor", "lceil", "lvert"):
            closing = {"lfloor": "\\rfloor", "lceil": "\\rceil", "lvert": "\\rvert"}[name]
            inner = self._scalar(self.parse_expr(), command)
            self.expect("cmd", closing)
            return {"lfloor": sympy.floor, "lceil": sympy.ceiling, "lvert": sympy.Abs}[name](inner)
        if name in FUNCTIONS:
            return self.parse_function(name)
        if name in ("pi", "infty"):
            return CONSTANTS[name]
        if name in GREEK:
            if self.accept("op", "_"):
                return sympy.Symbol(f"{name}_{self._subscript_text()}")
            return sympy.Symbol(name)
        if name in ("emptyset", "varnothing"):
            return Collection((), "set")
        if command == "\\{":
            return self.parse_set()
        raise ParseError(f"unsupported command {command!r}")

    def _command_argument(self) -> sympy.Expr:
        """Parse one argument of `\\frac` or `\\binom`: a braced group or a single token."""
        if self.accept("op", "{"):
            value = self._scalar(self.parse_expr(), "a command argument")
            self.expect("op", "}")
            return value
        token = self.peek()
        if token.kind == "num":
            digit = self._take_one_digit()
            return sympy.Integer(int(digit.text)) if digit.text.isdigit() else sympy.Float(digit.text)
        if token.kind in ("name", "cmd"):
            return self._scalar(self.parse_atom(), "a command argument")
        raise ParseError(f"missing command argument at {token.text or token.kind!r}")

    def parse_sqrt(self) -> sympy.Expr:
        index = None
        if self.accept("op", "["):
            index = self._scalar(self.parse_expr(), "a root index")
            self.expect("op", "]")
        token = self.peek()
        if token.kind == "op" and token.text == "{":
            self.advance()
            radicand = self._scalar(self.parse_expr(), "\\sqrt")
            self.expect("op", "}")
        elif token.kind == "op" and token.text == "(":
            # `\sqrt(2)` is a common slip for `\sqrt{2}`; the parenthesised group is the radicand.
            self.advance()
            radicand = self._scalar(self.parse_expr(), "\\sqrt")
            self.expect("op", ")")
        elif token.kind == "num":
            digit = self._take_one_digit()
            radicand = sympy.Integer(int(digit.text)) if digit.text.isdigit() else sympy.Float(digit.text)
        else:
            radicand = self._scalar(self.parse_atom(), "\\sqrt")
        if index is None:
            return power(radicand, sympy.Rational(1, 2))
        return power(radicand, 1 / index)

    def parse_function(self, name: str) -> sympy.Expr:
        function = FUNCTIONS[name]
        log_base = None
        exponent = None
        if name in ("log",) and self.accept("op", "_"):
            if self.accept("op", "{"):
                log_base = self._scalar(self.parse_expr(), "a log base")
                self.expect("op", "}")
            else:
                log_base = self._scalar(self.parse_atom(), "a log base")
        if self.accept("op", "^"):
            exponent = self.parse_exponent()
            if exponent == -1 and name in _INVERSE_TRIG:
                function = _INVERSE_TRIG[name]
                exponent = None
        argument = self._function_argument()
        value = function(argument) if log_base is None else sympy.log(argument, log_base)
        if exponent is not None:
            value = power(value, exponent)
        return value

    def _function_argument(self) -> sympy.Expr:
        if self.accept("op", "("):
            argument = self._scalar(self.parse_expr(), "a function argument")
            self.expect("op", ")")
            return argument
        if self.accept("op", "{"):
            argument = self._scalar(self.parse_expr(), "a function argument")
            self.expect("op", "}")
            return argument
        # `\sin 2x` is sin(2x): the argument is the run of factors up to an operator or function.
        argument = self._scalar(self.parse_power(), "a function argument")
        while self._starts_atom() and not self._starts_function():
            argument = argument * self._scalar(self.parse_power(), "a function argument")
        return argument

    def _starts_function(self) -> bool:
        token = self.peek()
        if token.kind == "name":
            return token.text in FUNCTIONS
        if token.kind == "cmd":
            return token.text[1:] in FUNCTIONS
        return token.kind == "op" and token.text == "("

    def parse_bracketed(self) -> Answer:
        opening = self.advance().text
        items = [self.parse_relation()]
        while self.accept("op", ","):
            items.append(self.parse_relation())
        closing_token = self.peek()
        if not (closing_token.kind == "op" and closing_token.text in (")", "]")):
            raise ParseError(f"expected ')' or ']' but found {closing_token.text or closing_token.kind!r}")
        closing = self.advance().text
        if len(items) == 1:
            if opening + closing in ("()", "[]"):
                return items[0]
            raise ParseError(f"mismatched brackets {opening!r} and {closing!r} around one value")
        if len(items) == 2 and opening + closing != "()":
            left, right = items
            return Interval(self._scalar(left, "an interval end"), self._scalar(right, "an interval end"),
                            opening == "[", closing == "]")
        if opening + closing not in ("()", "[]"):
            raise ParseError(f"mismatched brackets {opening!r} and {closing!r} around {len(items)} values")
        return Collection(tuple(items), "tuple")

    def parse_set(self) -> Collection:
        if self.accept("cmd", "\\}"):
            return Collection((), "set")
        items = [self.parse_relation()]
        while self.accept("op", ","):
            items.append(self.parse_relation())
        self.expect("cmd", "\\}")
        return Collection(tuple(items), "set")

    def parse_matrix(self) -> Matrix:
        environment = self.advance().text
        if environment not in _MATRIX_ENVIRONMENTS:
            raise ParseError(f"unsupported environment {environment!r}; expected one of {sorted(_MATRIX_ENVIRONMENTS)}")
        rows: list[list[sympy.Expr]] = [[]]
        while True:
            rows[-1].append(self._scalar(self.parse_expr(), "a matrix entry"))
            if self.accept("op", "&"):
                continue
            if self.accept("op", "rowsep"):
                if self.at("end"):
                    break
                rows.append([])
                continue
            break
        end = self.expect("end")
        if end.text != environment:
            raise ParseError(f"\\begin{{{environment}}} closed by \\end{{{end.text}}}")
        if len({len(row) for row in rows}) != 1:
            raise ParseError(f"matrix rows have different lengths: {[len(row) for row in rows]}")
        return Matrix(tuple(tuple(row) for row in rows))


def parse_normalized(text: str) -> Answer:
    """Parse normalised answer text into a sympy expression or a structured form.

    Raises:
        ParseError: If the text is empty or not a supported answer.
        LexError: If the text has a character outside the answer alphabet.
    """
    if not text:
        raise ParseError("empty answer")
    if _is_word_answer(text):
        return Text(re.sub(r"[\s'\-]", "", text).lower())
    return _Parser(tokenize(text)).parse_answer()


def parse_answer(text: str) -> Answer:
    """Normalise and parse answer text (see `normalize_answer` and `parse_normalized`)."""
    return parse_normalized(normalize_answer(text))
