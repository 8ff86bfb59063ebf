"""Alipay's own bill download (``alipay.data.dataservice.bill.downloadurl.query``, ``bill_type`` trade):
the face asked through python-alipay-sdk unmodified (its public ``server_api``) answers a signed
``bill_download_url``; the URL gives a zip of GBK CSV in Alipay's 业务明细 layout, read here with the
standard library alone; the reference checkout on Alipay (``--psp alipay``) reconciles against those
bills: a payment whose notifications are all lost is filled in from the bill (补单).

The services run at one scenario day per wall second so that a day's bill (T+1) exists within the
test; the gateway waits up to two scenario days for the bank, so nothing times out at that scale."""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any, Iterator

import httpx
import pytest
from alipay import AliPay

from loadtests.service.psp.faces.alipay import DEFAULT_APP_ID

from .conftest import launched
from .helpers import order_state, wait_for

DAY = 86400.0
JSON = {"Accept": "application/json"}
START = "2026-11-06T00:00:00"  # run.start: scenario t = 0 is this Beijing date-time


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from launched(tmp_path_factory, "alipay-bill", time_scale=DAY, checkout_psp="alipay",
                        overrides={"run.start": START, "gateway.timeout": "2d", "gateway.notify_loss": 1.0,
                                   "order_service.order_ttl": "30d", "reconciliation.interval": "6h",
                                   "reconciliation.repair": "fill_order"})


def _sdk(s: Any) -> AliPay:
    keys = s.data_dir / "psp" / "alipay"
    a = AliPay(appid=DEFAULT_APP_ID, app_private_key_string=(keys / "app_private_key.pem").read_text(),
               alipay_public_key_string=(keys / "alipay_public_key.pem").read_text(), sign_type="RSA2")
    a._gateway = s.provider_url + "/gateway.do"  # the SDK's only change
    return a


def _now(s: Any) -> float:
    return s.admin("provider", "GET", "/admin/stats").json()["now"]


def _date(t: float) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(START) + timedelta(seconds=t)).strftime("%Y-%m-%d")


def _pay_qr(s: Any, qr_code: str) -> str:
    scanned = httpx.get(qr_code, headers=JSON, timeout=10).json()
    paid = httpx.post(f"{s.provider_url}/alipay/cashier/{scanned['trade_no']}/confirm", headers=JSON, timeout=10).json()
    assert paid["code"] == "10000" and paid["trade_status"] == "TRADE_SUCCESS", paid
    return scanned["trade_no"]


def _detail(zip_bytes: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """The 业务明细 file of a bill zip, decoded as GBK: its comment lines and its rows by column."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        names = z.namelist()
        detail = next(n for n in names if n.endswith("_业务明细.csv"))
        assert any(n.endswith("_业务明细(汇总).csv") for n in names), names
        text = z.read(detail).decode("gbk")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "业务明细列表" in line and "结束" not in line)
    last = next(i for i, line in enumerate(lines) if "业务明细列表结束" in line)
    records = list(csv.reader(lines[first + 1:last]))
    header = [h.strip() for h in records[0]]
    return [line for line in lines if line.startswith("#")], [dict(zip(header, (v.strip() for v in r))) for r in records[1:]]


def test_the_sdk_gets_a_signed_bill_url_whose_zip_lists_the_days_payments(billed: Any) -> None:
    s = billed
    a = _sdk(s)
    no = f"bill-{int(_now(s))}"
    pre = a.api_alipay_trade_precreate("coffee", no, "12.50")
    before = _now(s)
    trade_no = _pay_qr(s, pre["qr_code"])
    assert a.api_alipay_trade_refund("2.50", out_trade_no=no, out_request_no=f"{no}-r1")["fund_change"] == "Y"
    after = _now(s)
    days = sorted({_date(before), _date(after)})  # the debit and the refund were made on these (one, nearly always)
    today = a.server_api("alipay.data.dataservice.bill.downloadurl.query",
                         biz_content={"bill_type": "trade", "bill_date": days[-1]})
    if today.get("code") == "40004":  # the usual case: the day is not over yet (T+1)
        assert today["sub_code"] == "isp.bill_not_exist", today
        wait_for(lambda: _date(_now(s)) > days[-1], timeout=3, what="the end of the day")
    found = []
    for paid_day in days:
        answer = a.server_api("alipay.data.dataservice.bill.downloadurl.query",
                              biz_content={"bill_type": "trade", "bill_date": paid_day})  # verified by the SDK
        assert answer["code"] == "10000", answer
        url = answer["bill_download_url"]
        assert "fileType=csv.zip" in url and f"bizDates={paid_day.replace('-', '')}" in url
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
        comments, rows = _detail(got.content)
        assert comments[0] == "#支付宝业务明细查询" and any(c.startswith("#交易合计：") for c in comments)
        found += [(paid_day, r) for r in rows if r["商户订单号"] == no]
    paid = [(d, r) for d, r in found if r["业务类型"] == "交易"]
    refunds = [r for _d, r in found if r["业务类型"] == "退款"]
    assert len(paid) == 1 and len(refunds) == 1, found
    assert (refunds[0]["商家实收（元）"], refunds[0]["支付宝交易号"]) == ("-2.50", trade_no) and refunds[0]["退款批次号/请求号"]
    paid_day, row = paid[0]
    assert (row["支付宝交易号"], row["业务类型"], row["订单金额（元）"], row["商家实收（元）"]) == \
        (trade_no, "交易", "12.50", "12.50")
    assert row["完成时间"].startswith(paid_day)
    # a tampered URL is refused; a bad bill_type or date gets Alipay's own parameter error
    assert httpx.get(url.replace("token=", "token=0"), timeout=10).status_code == 404
    for biz, sub in (({"bill_type": "signcustomer", "bill_date": paid_day}, "isv.invalid-parameter"),
                     ({"bill_type": "trade", "bill_date": "2026-11"}, "isv.invalid-parameter"),
                     ({"bill_date": paid_day}, "isv.missing-parameter")):
        refused = a.server_api("alipay.data.dataservice.bill.downloadurl.query", biz_content=biz)
        assert (refused["code"], refused["sub_code"]) in (("40002", sub),), refused


def test_the_checkout_reconciles_against_the_bill_and_fills_in_a_paid_order(billed: Any) -> None:
    """Every notification is lost and the order lives 30 days: only the reconciliation, reading the
    bill of the day of the payment once that day is over, can mark the order paid."""
    s = billed
    c = s.checkout_url
    order = f"rb-{int(_now(s))}"
    assert httpx.post(f"{c}/orders", json={"order": order, "user": "ub", "amount": 900}, timeout=10).status_code == 201
    started = httpx.post(f"{c}/orders/{order}/pay", json={"trade": f"{order}-t0"}, timeout=10).json()
    before = _now(s)
    _pay_qr(s, started["pay_url"])
    # paid, then shipped and completed by the merchant within a scenario hour (tens of wall milliseconds
    # here): any state from paid on counts; the events below say it was the reconciler that paid it
    wait_for(lambda: order_state(s, order) in ("paid", "shipped", "delivered", "completed"), timeout=15,
             what="the reconciliation's fill-in")  # (wall time; the T+1 check below is on scenario time)
    history = [e for e in s.history() if e.get("order") == order]
    found = [e for e in history if e["type"] == "recon.found"]
    repaired = [e for e in history if e["type"] == "recon.repaired"]
    assert found and found[0]["trade"] == f"{order}-t0" and repaired[0]["action"] == "fill_order", history
    # T+1: not before the day of the payment was over (it was made on the day of `before`, or later)
    day_end = (int(before // DAY) + 1) * DAY
    assert found[0]["t"] >= day_end, (found[0]["t"], before)
    assert not any(e["type"] == "notify.received" for e in history)  # every notification was lost
    paid = [e for e in history if e["type"] in ("order.paid", "order.reopened")]
    assert paid and paid[0]["t"] >= found[0]["t"], history  # paid by the reconciler, after it found the debit


def test_a_bill_that_cannot_be_had_ends_the_read_there_and_keeps_the_days_before_it() -> None:
    """The checkout's statement from Alipay bills (``AlipayClient.statement``), with the gateway's answers
    stood in for: day 1 read, day 2's bill not answered, day 3 there. The statement answers day 1 with
    ``until`` at its end, so the reconciler goes on from day 2 next time instead of reading day 1 again
    with one more day each run; when the very first day fails, nothing is answered (no answer)."""
    import asyncio
    from datetime import datetime

    from loadtests.service.alipay_bill import PAID
    from loadtests.service.base import ProviderUnavailable
    from loadtests.service.psp_clients.alipay import AlipayClient

    class Svc:
        def calendar_origin(self) -> datetime:
            return datetime(2026, 11, 6)

    def client(fail_on: set[int]) -> AlipayClient:
        c = AlipayClient(Svc())

        async def bill(day):
            n = (day - datetime(2026, 11, 6).date()).days + 1
            if n in fail_on:
                raise ProviderUnavailable(f"day {n}: no answer")
            return [{"业务类型": PAID, "商户订单号": f"t{n}", "商家实收（元）": "1.00", "支付宝交易号": f"n{n}",
                     "完成时间": ""}]

        c._bill = bill  # type: ignore[method-assign]
        c._mapped = lambda trade: {"ord": "o-" + trade}  # type: ignore[method-assign]
        return c

    q = {"since": "-1", "until": repr(5 * DAY)}
    whole = asyncio.run(client(set()).statement(q)).json()
    assert [d["trade"] for d in whole["debits"]] == ["t1", "t2", "t3", "t4", "t5"] and whole["until"] == 5 * DAY
    cut = asyncio.run(client({2}).statement(q)).json()
    assert [d["trade"] for d in cut["debits"]] == ["t1"] and cut["until"] == DAY
    with pytest.raises(ProviderUnavailable):
        asyncio.run(client({1}).statement(q))
