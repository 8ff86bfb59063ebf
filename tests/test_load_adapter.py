"""Target adapters: the reference checkout's file, filling requests, reading answers, one clear error each."""

from __future__ import annotations

import pytest

from sim.errors import ConfigError

from loadtests.adapter import REFERENCE, Adapter, load_adapter, validate

VALUES = {"order": "o 1", "user": "u1", "amount": 1234, "amount_yuan": "12.34", "method": "card", "merchant": "m2",
          "trade": "o1-t0", "buyer_name": "李娜", "buyer_phone": "13800000000", "buyer_address": "杭州市"}


def test_the_reference_adapter_describes_the_reference_checkout():
    ad = load_adapter()
    assert ad.name == "reference" and ad.order_id == "client"
    assert ad.request("create_order", VALUES) == (
        "POST", "/orders", {"order": "o 1", "user": "u1", "merchant": "m2", "amount": 1234, "method": "card",
                            "buyer": {"name": "李娜", "phone": "13800000000", "address": "杭州市"}})
    assert ad.request("start_payment", VALUES) == ("POST", "/orders/o%201/pay", {"trade": "o1-t0"})
    assert ad.request("order_status", VALUES) == ("GET", "/orders/o%201", None)
    assert ad.state_class("shipped") == "paid" and ad.state_class("refund_pending") == "refunded"
    assert ad.state_class("weird") is None and ad.code({"code": "ORDER_NOT_PAYABLE"}) in ad.not_payable


def test_placeholders_keep_their_type_or_are_formatted():
    data = load_adapter().to_dict() | {"create_order": {"method": "POST", "path": "/v2/orders",
                                                        "body": {"total": "{amount}", "memo": "order {order} for {amount_yuan} CNY",
                                                                 "items": [{"qty": 1, "price": "{amount}"}]}}}
    ad = Adapter(data)
    _, _, body = ad.request("create_order", VALUES)
    assert body == {"total": 1234, "memo": "order o 1 for 12.34 CNY", "items": [{"qty": 1, "price": 1234}]}


def test_answers_are_read_by_dotted_paths():
    data = load_adapter().to_dict() | {"order_status": {"method": "GET", "path": "/o/{order}",
                                                        "response": {"state": "data.order.status"},
                                                        "states": {"paid": ["PAID"], "closed": ["CANCELLED"]}}}
    ad = Adapter(data)
    assert ad.field("order_status", "state", {"data": {"order": {"status": "PAID"}}}) == "PAID"
    assert ad.field("order_status", "state", {"data": {}}) is None
    assert ad.field("order_status", "state", "not json") is None
    assert ad.field("start_payment", "nothing", {}) is None


@pytest.mark.parametrize("change, message", [
    ({"create_order": {"method": "FETCH", "path": "/orders"}}, "create_order.method: expected one of GET, POST"),
    ({"create_order": {"method": "POST", "path": "orders"}}, "create_order.path: expected a path starting with '/'"),
    ({"create_order": {"method": "POST", "path": "/orders", "body": {"x": "{ammount}"}}},
     "create_order.body.x: unknown placeholder {ammount} (did you mean 'amount'?)"),
    ({"order_status": {"method": "GET", "path": "/o/{order}", "response": {"stat": "s"}, "states": {}}},
     "order_status.response.stat: unknown field (did you mean 'state'?)"),
    ({"order_status": {"method": "GET", "path": "/o/{order}", "response": {"state": "s"},
                       "states": {"payed": ["PAID"]}}}, "order_status.states.payed: unknown state (did you mean 'paid'?)"),
    ({"order_id": "server", "create_order": {"method": "POST", "path": "/orders"}},
     'create_order.response.order: required when order_id = "server"'),
    ({"errors": {"codes": "code"}}, "errors.codes: unknown key (did you mean 'code'?)"),
    ({"start_paymnet": {}}, "start_paymnet: unknown key (did you mean 'start_payment'?)"),
])
def test_each_mistake_gets_one_message(change, message):
    data = load_adapter().to_dict() | change
    problems = validate(data)
    assert any(p.startswith(message) for p in problems), problems


def test_a_bad_file_names_itself(tmp_path):
    with pytest.raises(ConfigError, match="no such adapter file"):
        load_adapter(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(REFERENCE.read_text().replace('method = "GET"', 'method = "LIST"'))
    with pytest.raises(ConfigError, match=r"bad.toml: order_status.method: expected one of .* found 'LIST'"):
        load_adapter(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_adapter(broken)
    missing = tmp_path / "missing_ops.toml"
    missing.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="create_order: missing table"):
        load_adapter(missing)


def _with_handoff(handoff: object) -> dict:
    data = load_adapter().to_dict()
    return data | {"start_payment": {**data["start_payment"], "handoff": handoff}}


@pytest.mark.parametrize("handoff, message", [
    ({"alipay": {"kind": "qrcode", "field": "qr"}},
     "start_payment.handoff.alipay.kind: expected one of cashier_url, form, qr_code (the alipay face's hand-offs), "
     "found 'qrcode' (did you mean 'qr_code'?)"),
    ({"alipy": {"kind": "qr_code", "field": "qr"}}, "start_payment.handoff.alipy: unknown PSP face (did you mean 'alipay'?)"),
    ({"wechat": {"kind": "code_url"}}, "start_payment.handoff.wechat.field: expected a dotted path"),
    ({"wechat": {"kind": "code_url", "field": ""}}, "start_payment.handoff.wechat.field: expected a dotted path"),
    ({"stripe": {"kind": "client_secret", "field": "cs"}}, "start_payment.handoff.stripe.publishable_key: required"),
    ({"stripe": {"kind": "checkout_url", "field": "u", "publishable_key": "pk"}},
     "start_payment.handoff.stripe.publishable_key: only with kind = \"client_secret\""),
    ({"wechat": {"kind": "code_url", "field": "c", "feild": "x"}},
     "start_payment.handoff.wechat.feild: unknown key (did you mean 'field'?)"),
    ({"wechat": "code_url"}, "start_payment.handoff.wechat: expected a table with kind and field, found 'code_url'"),
    ("qr_code", "start_payment.handoff: expected tables [start_payment.handoff.<face>]"),
])
def test_each_hand_off_mistake_gets_one_message(handoff, message):
    problems = validate(_with_handoff(handoff))
    assert any(p.startswith(message) for p in problems), problems


def test_a_hand_off_only_belongs_to_start_payment():
    data = load_adapter().to_dict()
    data = data | {"order_status": {**data["order_status"], "handoff": {"alipay": {"kind": "qr_code", "field": "q"}}}}
    assert any(p.startswith("order_status.handoff: only start_payment has a hand-off") for p in validate(data))
    assert any(p.startswith("psp: expected one of native, alipay") for p in validate(load_adapter().to_dict() | {"psp": "paypal"}))


def test_the_run_s_psp_picks_the_hand_off_and_a_missing_one_names_what_the_file_has(tmp_path):
    f = tmp_path / "shop.toml"
    f.write_text(REFERENCE.read_text().replace(
        "bnpl_paid = [\"authorized\"]",
        "bnpl_paid = [\"authorized\"]\n[start_payment.handoff.alipay]\nkind = \"qr_code\"\nfield = \"data.qr\"\n"
        "[start_payment.handoff.wechat]\nkind = \"code_url\"\nfield = \"data.code_url\"\n"))
    ad = load_adapter(f)
    assert ad.handoff is None  # chosen per run
    wx = ad.for_psp(("wechat",))
    assert wx.handoff is not None and wx.handoff.kind == "code_url"
    assert wx.handoff_value({"data": {"code_url": "weixin://x"}}) == "weixin://x"
    assert Adapter(wx.to_dict()).handoff == wx.handoff  # it travels in the plan as data
    assert ad.for_psp(("alipay", "wechat")).handoff.face == "alipay"
    with pytest.raises(ConfigError, match=r"shop.toml: start_payment.handoff: expected a hand-off for --psp stripe, "
                                          r"found one for alipay, wechat only"):
        ad.for_psp(("stripe",))
    assert load_adapter().for_psp(("stripe",)).handoff is None  # no hand-offs: the native way, as before


def test_the_shipped_shop_adapters_load():
    from loadtests.adapter import REFERENCE as ref

    for name, face, kind in (("alipay_shop", "alipay", "qr_code"), ("wechat_shop", "wechat", "code_url"),
                             ("stripe_shop", "stripe", "checkout_url")):
        ad = load_adapter(ref.parent / f"{name}.toml").for_psp((face,))
        assert ad.name == name and ad.handoff is not None and ad.handoff.kind == kind
