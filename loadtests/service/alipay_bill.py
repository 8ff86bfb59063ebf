"""Alipay's trade bill (业务明细, ``bill_type = trade``) as the mock serves it and the reference checkout reads it.

``alipay.data.dataservice.bill.downloadurl.query`` answers a ``bill_download_url``; the URL gives a zip
(``fileType=csv.zip``) of two CSV files in GBK: the detail (``..._业务明细.csv``) and its summary
(``..._业务明细(汇总).csv``). The detail is ``#`` comment lines (title, account, period), the marker line
``#---...业务明细列表---...``, the header row, one row per trade paid (``业务类型`` 交易) or refund
(退款), the end marker ``#---...业务明细列表结束---...``, and ``#`` totals. Field values are followed by a
tab, as in Alipay's files (so spreadsheets keep long numbers as text); readers strip it. Sources in
docs/psp/alipay.md ("The trade bill").

Bill days run on the *scenario* calendar: the date-time of a service's clock reading ``t`` is
``origin + t`` seconds, ``origin`` being the service's ``calendar_origin()`` (``run.start`` at the
scenario's t = 0, else the Beijing date-time of the services' start); a day's bill covers the scenario
seconds of that Beijing calendar day, and exists once that day is over (Alipay: "T+1").
"""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import date, datetime, timedelta
from typing import Any, Iterable

METHOD = "alipay.data.dataservice.bill.downloadurl.query"
ENCODING = "gbk"
DETAIL_START = "#-----------------------------------------业务明细列表----------------------------------------"
DETAIL_END = "#-----------------------------------------业务明细列表结束------------------------------------"
COLUMNS = ("支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称",
           "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）",
           "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）",
           "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注")
PAID, REFUND = "交易", "退款"


def day_bounds(o: datetime, day: date) -> tuple[float, float]:
    """Scenario seconds ``[start, end)`` of calendar ``day``."""
    start = (datetime(day.year, day.month, day.day) - o).total_seconds()
    return start, start + 86400.0


def day_of(o: datetime, t: float) -> date:
    return (o + timedelta(seconds=t)).date()


def when(o: datetime, t: float) -> str:
    return (o + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S")


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def _row(values: Iterable[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([f"{v}\t" if v != "" else "" for v in values])
    return out.getvalue()


def make_zip(o: datetime, day: date, account: str, rows: list[dict[str, Any]], exported_at: str) -> tuple[str, bytes]:
    """``(file name, zip bytes)`` of ``day``'s trade bill. ``rows``: ``{"kind": PAID|REFUND, "trade_no",
    "out_trade_no", "subject", "created_t", "t", "amount" (fen; negative for a refund), "buyer", "request_no"}``."""
    start, end = day_bounds(o, day)
    stamp = day.strftime("%Y%m%d")
    cn = lambda d: d.strftime("%Y年%m月%d日 %H:%M:%S")  # noqa: E731
    head = (f"#支付宝业务明细查询\r\n#账号：[{account}]\r\n"
            f"#起始日期：[{cn(o + timedelta(seconds=start))}]   终止日期：[{cn(o + timedelta(seconds=end))}]\r\n")
    body = [head, DETAIL_START + "\r\n", _row(COLUMNS)]
    paid = [r for r in rows if r["kind"] == PAID]
    refunds = [r for r in rows if r["kind"] == REFUND]
    for r in rows:
        amount = _yuan(r["amount"])
        body.append(_row([r["trade_no"], r["out_trade_no"], r["kind"], r.get("subject") or "", when(o, r["created_t"]),
                          when(o, r["t"]), "", "", "", "", r.get("buyer") or "", amount, amount, "0.00", "0.00",
                          "0.00", "0.00", "0.00", "", "0.00", "0.00", r.get("request_no") or "", "0.00", "0.00", ""]))
    body.append(DETAIL_END + "\r\n")
    body.append(f"#交易合计：{len(paid)}笔，商家实收共{_yuan(sum(r['amount'] for r in paid))}元，商家优惠共0.00元\r\n")
    body.append(f"#退款合计：{len(refunds)}笔，商家实收退款共{_yuan(sum(r['amount'] for r in refunds))}元，"
                "商家优惠退款共0.00元\r\n")
    body.append(f"#导出时间：[{exported_at}]\r\n")
    summary = (f"#支付宝业务汇总查询\r\n#账号：[{account}]\r\n"
               "#-----------------------------------------业务汇总列表----------------------------------------\r\n"
               + _row(("门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）", "商家实收（元）"))
               + _row(("", "合计", str(len(paid)), str(len(refunds)), _yuan(sum(r["amount"] for r in rows)),
                       _yuan(sum(r["amount"] for r in rows))))
               + "#-----------------------------------------业务汇总列表结束------------------------------------\r\n"
               + f"#导出时间：[{exported_at}]\r\n")
    name = f"{account}_{stamp}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}_业务明细.csv", "".join(body).encode(ENCODING))
        z.writestr(f"{name}_业务明细(汇总).csv", summary.encode(ENCODING))
    return f"{name}.csv.zip", buf.getvalue()


def read_zip(data: bytes) -> list[dict[str, str]]:
    """The detail rows of a trade bill zip, each a dict by column name (values stripped of their tab).
    ``ValueError`` when it is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.endswith("业务明细.csv")]
            if len(names) != 1:
                raise ValueError(f"expected one 业务明细.csv in the zip, found {z.namelist()}")
            text = z.read(names[0]).decode(ENCODING)
    except (zipfile.BadZipFile, UnicodeDecodeError, KeyError) as exc:
        raise ValueError(f"not a trade bill: {exc}") from None
    lines = text.splitlines()
    try:
        first = lines.index(DETAIL_START) + 1
        last = lines.index(DETAIL_END)
    except ValueError:
        raise ValueError("not a trade bill: no 业务明细列表 markers") from None
    records = list(csv.reader(lines[first:last]))
    if not records:
        raise ValueError("not a trade bill: no header row")
    header = [h.strip() for h in records[0]]
    return [{k: v.strip() for k, v in zip(header, rec)} for rec in records[1:] if any(v.strip() for v in rec)]
