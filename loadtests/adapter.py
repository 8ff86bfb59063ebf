"""Target adapters: how the buyers' app talks to a checkout, as data.

A checkout is driven through four calls — create an order, start its payment, read its status,
cancel it — and an adapter file (TOML) says, for each, the method, the path, the JSON body and where
in the answer the app finds what it needs. ``loadtests/adapters/reference.toml`` describes the
reference checkout; a team copies it for its staging checkout (``load --target URL --target-config
FILE``). The payment itself is always completed at the mock provider's buyer side (the buyer's wallet,
bank app or browser), the way that PSP's buyers pay: ``start_payment.handoff.<face>`` says where the
checkout's start-payment answer keeps the hand-off (a native ``pay_url``, an Alipay cashier URL, form
or QR code, a WeChat ``code_url``, a Stripe Checkout URL or ``client_secret``), and
:meth:`Adapter.for_psp` picks the one of the run's ``--psp``.

An adapter is validated once on load; a mistake raises :class:`~sim.errors.ConfigError` naming the
file, the key, what was expected and what was found. It is plain data (``to_dict``), so it travels in
the plan file to every Locust process.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import ConfigError

REFERENCE = Path(__file__).parent / "adapters" / "reference.toml"

OPERATIONS = ("create_order", "start_payment", "order_status", "cancel", "after_sales")
OPTIONAL = ("cancel", "after_sales")  # a checkout without them: its buyers never cancel / ask for after-sales
PLACEHOLDERS = ("order", "user", "amount", "amount_yuan", "method", "merchant", "trade", "buyer_name", "buyer_phone",
                "buyer_address")
STATE_CLASSES = ("awaiting_payment", "paid", "closed", "refunded")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_RESPONSE_FIELDS = {
    "create_order": ("order",),
    "start_payment": ("trade", "pay_url", "bnpl_state"),
    "order_status": ("state",),
    "cancel": (),
    "after_sales": (),
}
_TOP = ("name", "order_id", "psp", "errors", *OPERATIONS)
_OP_KEYS = ("method", "path", "body", "response", "bnpl_paid", "states", "handoff")
# Per PSP face, the kinds of hand-off a checkout can give the buyer (docs/live.md, "Paying the PSP's way").
HANDOFFS: dict[str, tuple[str, ...]] = {
    "native": ("pay_url",),
    "alipay": ("cashier_url", "form", "qr_code"),
    "wechat": ("code_url", "h5_url"),
    "stripe": ("checkout_url", "client_secret"),
}
_HANDOFF_KEYS = ("kind", "field", "publishable_key", "payment_method")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


def _hint(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class Handoff:
    """How the buyer completes a payment at one PSP face: what ``kind`` of hand-off the start-payment
    answer keeps at the dotted path ``field`` (and, for a Stripe ``client_secret``, where the
    publishable key is)."""

    face: str
    kind: str
    field: str
    publishable_key: str | None = None
    payment_method: str = "pm_card_visa"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: Any  # JSON template, or None for no body
    response: dict[str, str]  # name -> dotted path in the answer


class Adapter:
    """A validated adapter: builds requests from values and reads fields from answers."""

    def __init__(self, data: dict[str, Any], source: str = "--target-config") -> None:
        self.data = data
        self.source = source  # the file it came from, for messages
        self.name: str = data.get("name", "adapter")
        self.order_id: str = data.get("order_id", "client")
        self.endpoints = {op: Endpoint(spec["method"], spec["path"], spec.get("body"), dict(spec.get("response", {})))
                          for op, spec in data.items() if op in OPERATIONS}
        # each request's path and body as a function of the values, built once (every buyer fills them)
        self._fillers = {op: (_filler(ep.path, quote=True), None if ep.body is None else _filler(ep.body))
                         for op, ep in self.endpoints.items()}
        self.bnpl_paid = frozenset(data["start_payment"].get("bnpl_paid", ("authorized",)))
        states = data["order_status"].get("states", {})
        self.states = {raw: cls for cls, raws in states.items() for raw in raws}
        errors = data.get("errors", {})
        self.error_code: str | None = errors.get("code")
        self.not_payable = frozenset(errors.get("not_payable", ()))
        self.handoffs = {face: Handoff(face, spec["kind"], spec["field"], spec.get("publishable_key"),
                                       spec.get("payment_method", "pm_card_visa"))
                         for face, spec in data["start_payment"].get("handoff", {}).items()}
        self.psp: str | None = data.get("psp")  # set by for_psp (the run's face); a file need not say it
        # the hand-off the buyers complete: the run's face's (None: the native pay_url / trade number)
        self.handoff: Handoff | None = self.handoffs.get(self.psp) if self.psp else None

    def for_psp(self, faces: tuple[str, ...] | list[str]) -> "Adapter":
        """This adapter for a run whose provider serves ``faces`` (``--psp``; empty: native only): the
        buyers complete the hand-off of the first of them the file declares. A file that declares
        hand-offs for other faces only is a usage error (it names the faces it has)."""
        if not self.handoffs:
            return self
        wanted = [f for f in faces if f != "native"] or ["native"]
        chosen = next((f for f in wanted if f in self.handoffs), None)
        if chosen is None:
            raise ConfigError(f"{self.source}: start_payment.handoff: expected a hand-off for --psp "
                              f"{','.join(wanted)}, found one for {', '.join(sorted(self.handoffs))} only "
                              f"(pass --psp {sorted(self.handoffs)[0]}, or add [start_payment.handoff.{wanted[0]}])")
        return Adapter({**self.data, "psp": chosen}, self.source)

    def handoff_value(self, answer: Any) -> Any:
        """The hand-off in a start-payment answer (None when absent)."""
        return None if self.handoff is None else dig(answer, self.handoff.field)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def has(self, op: str) -> bool:
        return op in self.endpoints

    def request(self, op: str, values: dict[str, Any]) -> tuple[str, str, Any]:
        """``(method, path, body)`` of ``op`` with the placeholders filled from ``values``."""
        path, body = self._fillers[op]
        return self.endpoints[op].method, path(values), None if body is None else body(values)

    def field(self, op: str, name: str, answer: Any) -> Any:
        """The value at the response path named ``name`` of ``op`` (None when absent)."""
        path = self.endpoints[op].response.get(name)
        return None if path is None else dig(answer, path)

    def state_class(self, raw: Any) -> str | None:
        """``awaiting_payment`` / ``paid`` / ``closed`` / ``refunded`` for a status value, None if unmapped."""
        return self.states.get(raw) if isinstance(raw, str) else None

    def code(self, answer: Any) -> str | None:
        if self.error_code and isinstance(answer, dict):
            value = answer.get(self.error_code)
            return value if isinstance(value, str) else None
        return None


def dig(answer: Any, path: str) -> Any:
    """The value at dotted ``path`` in a JSON answer, None when absent."""
    node = answer
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fill(template: Any, values: dict[str, Any], quote: bool = False) -> Any:
    """``template`` with its placeholders filled from ``values`` (a value that is exactly one placeholder
    keeps its type; path values, ``quote``, are URL-encoded)."""
    return _filler(template, quote)(values)


def _filler(template: Any, quote: bool = False) -> Any:
    """A function of the values filling ``template`` (see :func:`_fill`), the template read once."""
    if isinstance(template, str):
        m = _PLACEHOLDER_RE.fullmatch(template)
        if m and not quote:
            key = m.group(1)
            return lambda values: values[key]
        parts = _PLACEHOLDER_RE.split(template)  # literal, name, literal, name, ..., literal
        if len(parts) == 1:
            return lambda values: template
        literals, names = parts[0::2], parts[1::2]
        if quote:
            from urllib.parse import quote as q

            text = lambda v: q(str(v), safe="")  # noqa: E731
        else:
            text = str

        def fill(values: dict[str, Any]) -> str:
            out = [literals[0]]
            for name, literal in zip(names, literals[1:]):
                out.append(text(values[name]))
                out.append(literal)
            return "".join(out)

        return fill
    if isinstance(template, dict):
        items = [(k, _filler(v)) for k, v in template.items()]
        return lambda values: {k: f(values) for k, f in items}
    if isinstance(template, list):
        fillers = [_filler(v) for v in template]
        return lambda values: [f(values) for f in fillers]
    return lambda values: template


# --------------------------------------------------------------------------------------------------
# Loading and validation


def load_adapter(path: str | Path | None = None) -> Adapter:
    """Read and validate an adapter file (default: the reference checkout's)."""
    p = Path(path) if path is not None else REFERENCE
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--target-config {p}: no such adapter file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--target-config {p}: cannot read adapter file ({exc.__class__.__name__})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    problems = validate(data)
    if problems:
        raise ConfigError("\n".join(f"{p}: {msg}" for msg in problems))
    return Adapter(data, str(p))


def validate(data: dict[str, Any]) -> list[str]:
    """Every problem of an adapter's data, one message each (empty when it is fine)."""
    out: list[str] = []
    for key in data:
        if key not in _TOP:
            out.append(f"{key}: unknown key{_hint(key, _TOP)}; expected one of: {', '.join(_TOP)}")
    if "psp" in data and data["psp"] not in HANDOFFS:
        out.append(f"psp: expected one of {', '.join(HANDOFFS)}, found {data['psp']!r}{_hint(str(data['psp']), HANDOFFS)}")
    if data.get("order_id", "client") not in ("client", "server"):
        out.append(f"order_id: expected \"client\" or \"server\", found {data['order_id']!r}")
    for op in OPERATIONS:
        spec = data.get(op)
        if spec is None:
            if op not in OPTIONAL:
                out.append(f"{op}: missing table (expected [{op}] with method and path)")
            continue
        if not isinstance(spec, dict):
            out.append(f"{op}: expected a table, found {spec!r}")
            continue
        for key in spec:
            if key not in _OP_KEYS:
                out.append(f"{op}.{key}: unknown key{_hint(key, _OP_KEYS)}; expected one of: {', '.join(_OP_KEYS)}")
        method = spec.get("method")
        if method not in METHODS:
            out.append(f"{op}.method: expected one of {', '.join(METHODS)}, found {method!r}")
        path = spec.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            out.append(f"{op}.path: expected a path starting with '/', found {path!r}")
        else:
            out += _check_placeholders(f"{op}.path", path)
        if "body" in spec:
            out += _check_placeholders(f"{op}.body", spec["body"])
        response = spec.get("response", {})
        if not isinstance(response, dict):
            out.append(f"{op}.response: expected a table of field = \"dotted.path\", found {response!r}")
        else:
            for name, where in response.items():
                if name not in _RESPONSE_FIELDS[op]:
                    allowed = ", ".join(_RESPONSE_FIELDS[op]) or "none"
                    out.append(f"{op}.response.{name}: unknown field{_hint(name, _RESPONSE_FIELDS[op])}; expected: {allowed}")
                elif not isinstance(where, str) or not where:
                    out.append(f"{op}.response.{name}: expected a dotted path like \"data.id\", found {where!r}")
        if "states" in spec:
            out += _check_states(op, spec["states"])
        if "handoff" in spec:
            out += (_check_handoffs(spec["handoff"]) if op == "start_payment" else
                    [f"{op}.handoff: only start_payment has a hand-off (the answer the buyer pays from)"])
    if data.get("order_id") == "server" and "order" not in (data.get("create_order") or {}).get("response", {}):
        out.append('create_order.response.order: required when order_id = "server" (where the answer keeps the order id)')
    if isinstance(data.get("order_status"), dict) and "state" not in data["order_status"].get("response", {}):
        out.append("order_status.response.state: missing (where the answer keeps the order's state)")
    if isinstance(data.get("order_status"), dict) and "states" not in data["order_status"]:
        out.append("order_status.states: missing table (the checkout's states for "
                   + ", ".join(STATE_CLASSES) + ")")
    errors = data.get("errors", {})
    if not isinstance(errors, dict):
        out.append(f"errors: expected a table, found {errors!r}")
    else:
        for key in errors:
            if key not in ("code", "not_payable"):
                out.append(f"errors.{key}: unknown key{_hint(key, ('code', 'not_payable'))}; expected code, not_payable")
    return out


def _check_placeholders(where: str, template: Any) -> list[str]:
    out: list[str] = []
    if isinstance(template, str):
        for name in _PLACEHOLDER_RE.findall(template):
            if name not in PLACEHOLDERS:
                out.append(f"{where}: unknown placeholder {{{name}}}{_hint(name, PLACEHOLDERS)}; "
                           f"expected one of: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    elif isinstance(template, dict):
        for k, v in template.items():
            out += _check_placeholders(f"{where}.{k}", v)
    elif isinstance(template, list):
        for i, v in enumerate(template):
            out += _check_placeholders(f"{where}[{i}]", v)
    return out


def _check_handoffs(handoffs: Any) -> list[str]:
    where = "start_payment.handoff"
    if not isinstance(handoffs, dict) or not handoffs:
        return [f"{where}: expected tables [{where}.<face>] (faces: {', '.join(HANDOFFS)}), found {handoffs!r}"]
    out: list[str] = []
    for face, spec in handoffs.items():
        at = f"{where}.{face}"
        if face not in HANDOFFS:
            out.append(f"{at}: unknown PSP face{_hint(face, HANDOFFS)}; expected one of: {', '.join(HANDOFFS)}")
            continue
        if not isinstance(spec, dict):
            out.append(f"{at}: expected a table with kind and field, found {spec!r}")
            continue
        for key in spec:
            if key not in _HANDOFF_KEYS:
                out.append(f"{at}.{key}: unknown key{_hint(key, _HANDOFF_KEYS)}; expected one of: {', '.join(_HANDOFF_KEYS)}")
        kind = spec.get("kind")
        if kind not in HANDOFFS[face]:
            out.append(f"{at}.kind: expected one of {', '.join(HANDOFFS[face])} (the {face} face's hand-offs), "
                       f"found {kind!r}{_hint(str(kind), HANDOFFS[face])}")
        for key in ("field", "publishable_key", "payment_method"):
            value = spec.get(key)
            if (key == "field" or value is not None) and (not isinstance(value, str) or not value):
                what = "a dotted path like \"data.qr_code\"" if key != "payment_method" else "a payment method id like \"pm_card_visa\""
                out.append(f"{at}.{key}: expected {what}, found {value!r}")
        if kind == "client_secret" and "publishable_key" not in spec:
            out.append(f"{at}.publishable_key: required with kind = \"client_secret\" (where the answer keeps the "
                       "pk_... the buyer's browser confirms with)")
        if kind != "client_secret" and "publishable_key" in spec:
            out.append(f"{at}.publishable_key: only with kind = \"client_secret\", found kind {kind!r}")
    return out


def _check_states(op: str, states: Any) -> list[str]:
    if not isinstance(states, dict):
        return [f"{op}.states: expected a table of {', '.join(STATE_CLASSES)} = [values], found {states!r}"]
    out = []
    for cls, raws in states.items():
        if cls not in STATE_CLASSES:
            out.append(f"{op}.states.{cls}: unknown state{_hint(cls, STATE_CLASSES)}; expected one of: {', '.join(STATE_CLASSES)}")
        elif not isinstance(raws, list) or not all(isinstance(r, str) for r in raws):
            out.append(f"{op}.states.{cls}: expected a list of strings, found {raws!r}")
    return out
