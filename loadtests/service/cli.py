"""``checkout-chaos serve``: start the mock payment provider and the reference checkout.

Both run as their own processes on loopback until Ctrl-C. Module-level imports stay light: the
services (FastAPI, uvicorn) are imported only by the child processes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

EPILOG = """\
examples:
  checkout-chaos serve
  checkout-chaos serve --scenario scenarios/mall_pattern.toml --time-scale 120 --data run1/
  checkout-chaos serve --set order_service.close_policy=query_then_close --provider-port 8801 --checkout-port 8802
  checkout-chaos serve --psp alipay --data staging-psp/ --provider-port 8801      # a drop-in Alipay gateway;
                                                          # the reference checkout pays through it too
  checkout-chaos serve --psp alipay --merchant-public-key app_public_key.pem     # your own app key pair
                                                          # (the reference checkout then pays natively)
  checkout-chaos serve --psp stripe      # a Stripe gateway; the reference checkout pays through it too

--psp prints what a merchant puts into its configuration (gateway URL, ids, key files, the SDK's
override line); the keys stay in the data directory (docs/psp.md).

Faults can be changed while it runs (the admin token is in DATA/admin_token):
  curl -X PUT -H "Authorization: Bearer $(cat run1/admin_token)" -d '{"set": {"gateway.service_time": "2s"}}' \\
       -H 'Content-Type: application/json' http://127.0.0.1:8801/admin/faults

Secrets never go on the command line (where ps shows them): give them in the environment
($CHECKOUT_CHAOS_ADMIN_TOKEN, $CHECKOUT_CHAOS_NOTIFY_SECRET) or as files (--admin-token-file,
--notify-secret-file); otherwise they are generated and kept in the data directory.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key, e.g. --set order_service.order_ttl=15m (repeatable)")
    parser.add_argument("--time-scale", type=float, metavar="K",
                        help="scenario seconds per wall second (default: the scenario's live.time_scale)")
    parser.add_argument("--data", metavar="DIR", help="data directory for the SQLite databases and logs "
                        "(default: a new temporary directory); reusing one resumes its timeline")
    parser.add_argument("--provider-port", type=int, default=0, metavar="P", help="default: a free port")
    parser.add_argument("--checkout-port", type=int, default=0, metavar="C", help="default: a free port")
    parser.add_argument("--admin-token-file", metavar="FILE",
                        help="file holding the admin bearer token (default: $CHECKOUT_CHAOS_ADMIN_TOKEN, else "
                             "DATA/admin_token, else generated there)")
    parser.add_argument("--notify-secret-file", metavar="FILE",
                        help="file holding the notifications' HMAC secret (default: $CHECKOUT_CHAOS_NOTIFY_SECRET, "
                             "else DATA/notify_secret, else generated there)")
    parser.add_argument("--psp", action="append", default=[], metavar="NAME",
                        help="PSP protocol(s) the mock provider also speaks, beside its native API: "
                             "alipay, wechat, stripe (repeatable or comma-separated; default: native only)")
    parser.add_argument("--merchant-public-key", metavar="FILE",
                        help="the merchant's public key (PEM) the PSP faces verify requests with (default: a key "
                             "pair generated in the data directory, whose private half the merchant then uses)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal",
                        help="SQLite durability: normal survives a process crash, full also a power loss")


def run(args: argparse.Namespace) -> int:
    from sim.errors import ConfigError
    from loadtests.service.runner import mask, start_services

    for name in ("provider_port", "checkout_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a port between 0 and 65535, found {port}")
    if args.time_scale is not None and args.time_scale <= 0:
        raise ConfigError(f"--time-scale: expected a positive number, found {args.time_scale:g}")
    token = _secret_file(args.admin_token_file, "--admin-token-file")
    secret = _secret_file(args.notify_secret_file, "--notify-secret-file")
    from loadtests.service.psp.faces import FACES

    faces = [f.strip() for item in args.psp for f in item.split(",") if f.strip()]
    for face in faces:
        if face not in FACES:
            raise ConfigError(f"--psp: expected one of {', '.join(FACES)}, found {face!r}")
    options: dict = {}
    if args.merchant_public_key:
        from pathlib import Path

        from loadtests.service.psp.keys import load_public_key

        path = Path(args.merchant_public_key).resolve()
        try:
            load_public_key(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"--merchant-public-key {args.merchant_public_key}: cannot read it ({exc.strerror})") from None
        except ValueError as exc:
            raise ConfigError(f"--merchant-public-key {args.merchant_public_key}: expected an RSA public key in PEM, "
                              f"found something else ({exc})") from None
        options = {face: {"merchant_public_key": str(path)} for face in faces}
    from loadtests.service.psp_clients import checkout_psp

    reference_psp = checkout_psp(faces, merchant_key_given=bool(args.merchant_public_key))
    print("starting the mock provider and the reference checkout ...", file=sys.stderr, flush=True)
    services = start_services(args.scenario, args.data, args.time_scale, args.overrides, token,
                              (args.provider_port, args.checkout_port), host=args.host,
                              allow_remote=args.allow_remote, notify_secret=secret,
                              synchronous=args.synchronous, faces=faces, face_options=options or None,
                              checkout_psp=reference_psp)
    with services:
        print(f"provider   {services.provider_url}   (OpenAPI: {services.provider_url}/docs)")
        print(f"checkout   {services.checkout_url}   (OpenAPI: {services.checkout_url}/docs)")
        print(f"admin token    {mask(services.admin_token)} in {services.data_dir / 'admin_token'}")
        print(f"notify secret  {mask(services.notify_secret)} in {services.data_dir / 'notify_secret'}")
        print(f"data       {services.data_dir}")
        for face in faces:
            _print_merchant_config(face, services, options.get(face))
        if reference_psp == "stripe":
            print(f"\nthe reference checkout pays through the Stripe face (Checkout Sessions; its webhook: "
                  f"{services.checkout_url}/stripe/webhook)")
        elif reference_psp == "alipay":
            print(f"\nthe reference checkout pays through the Alipay face (alipay.trade.precreate QR codes, "
                  f"signed with app_private_key.pem; its notify_url: {services.checkout_url}/alipay/notify)")
        elif "alipay" in faces:
            print("\nthe reference checkout pays through the native API (with --merchant-public-key it has no "
                  "private key the Alipay face accepts)")
        print(f"time scale {services.time_scale:g} scenario seconds per wall second; Ctrl-C stops both", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops both services as Ctrl-C does
        try:
            while all(services.alive(n) for n in ("provider", "checkout")):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr)
            return 0
        for name in ("provider", "checkout"):
            why = services.failure(name)
            if why:
                print(f"error: {why}", file=sys.stderr)
        return 1


def _secret_file(path: str | None, flag: str) -> str | None:
    """The secret in ``path`` (stripped), or None when no file was given."""
    from sim.errors import ConfigError

    if path is None:
        return None
    try:
        value = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{flag} {path}: the file is empty; expected the secret")
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_merchant_config(face: str, services: object, options: dict | None) -> None:
    """What a merchant puts into its configuration to use face ``face`` (keys' paths, never keys)."""
    from loadtests.service.psp.faces import face_class

    config = face_class(face)(None, services.data_dir, options).merchant_config(services.provider_url)
    print(f"\n{face}: what your checkout's configuration changes to")
    width = max((len(k) for k in config), default=0)
    for key, value in config.items():
        print(f"  {key.ljust(width)}  {value}")
