#!/usr/bin/env python3
"""paypush from a merchant's Python backend (standard library only).

Signs a callback exactly as `paypush sign` does (contract v2), sends it, and
mints the subscribe token a checkout page needs for /push. Copy `signature`,
`callback` and `subscribe_token` into your service.

    export PAYPUSH_URL=http://127.0.0.1:8080 PAYPUSH_CALLBACK_SECRET=... PAYPUSH_SUBSCRIBE_SECRET=...
    python3 paypush.py callback-get  123 SUCCESS   # signed GET /pay-callback
    python3 paypush.py callback-form 124 FAILED    # signed form POST /pay-callback
    python3 paypush.py token 123                   # the token for /push?payRecordId=123&token=...
    python3 paypush.py sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE
"""

import hashlib
import hmac
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

FORM = "application/x-www-form-urlencoded"


def media_type(content_type: str) -> str:
    """The Content-Type's type/subtype in lower case without parameters; "" for none."""
    return content_type.split(";", 1)[0].strip().lower()


def signature(secret: str, timestamp: str, nonce: str, method: str,
              path_and_query: str, content_type: str, body: str) -> str:
    """The Paypush-Signature of a callback (contract v2: the media type is signed)."""
    message = "\n".join([timestamp, nonce, method, path_and_query,
                         media_type(content_type), body]) + "\n"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def callback(base_url: str, secret: str, method: str, path_and_query: str,
             content_type: str = "", body: str = "") -> tuple[int, str]:
    """Sends a signed callback; returns (HTTP status, body)."""
    timestamp = str(int(time.time()))
    nonce = secrets.token_hex(16)
    headers = {
        "Paypush-Timestamp": timestamp,
        "Paypush-Nonce": nonce,
        "Paypush-Signature": signature(secret, timestamp, nonce, method,
                                       path_and_query, content_type, body),
    }
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(base_url + path_and_query, method=method,
                                     headers=headers,
                                     data=body.encode() if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:  # 4xx and 5xx answers
        return refused.code, refused.read().decode()


def subscribe_token(secret: str, pay_record_id: str) -> str:
    """The token a checkout page passes to /push: hex HMAC-SHA256(secret, "push:" + id)."""
    return hmac.new(secret.encode(), f"push:{pay_record_id}".encode(),
                    hashlib.sha256).hexdigest()


def main(args: list[str]) -> int:
    base_url = os.environ.get("PAYPUSH_URL", "http://127.0.0.1:8080")
    command = args[0] if args else ""
    if command in ("callback-get", "callback-form"):
        secret = os.environ["PAYPUSH_CALLBACK_SECRET"]
        fields = urllib.parse.urlencode({"payRecordId": args[1], "status": args[2]})
        if command == "callback-get":
            status, body = callback(base_url, secret, "GET", "/pay-callback?" + fields)
        else:
            status, body = callback(base_url, secret, "POST", "/pay-callback", FORM, fields)
        print(status, body)
    elif command == "token":
        print(subscribe_token(os.environ["PAYPUSH_SUBSCRIBE_SECRET"], args[1]))
    elif command == "sign":
        method, path, content_type, body, timestamp, nonce = args[1:7]
        print(signature(os.environ["PAYPUSH_CALLBACK_SECRET"], timestamp, nonce, method,
                        path, content_type, body))
    else:
        print("usage: paypush.py callback-get ID STATUS | callback-form ID STATUS | token ID"
              " | sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
