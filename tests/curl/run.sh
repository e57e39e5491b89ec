#!/usr/bin/env bash
# Curl scenarios against the built binary, the way the original blog post's
# demo was driven: one terminal subscribes, another sends the callback.
# Usage: tests/curl/run.sh path/to/paypush
set -uo pipefail

bin=$(realpath "${1:?usage: tests/curl/run.sh path/to/paypush}")
work=$(mktemp -d)
mkdir "$work/run"  # the server's working directory: nothing lands in the checkout
passed=0
failed=0

start_server() {
    : >"$work/server.log"
    # Each server runs in a scratch folder and keeps its store in a fresh one.
    (cd "$work/run" && exec "$bin" --bind 127.0.0.1:0 --data-dir "$(mktemp -d -p "$work")" "$@") \
        2>"$work/server.log" &
    server=$!
    for _ in $(seq 100); do
        base=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | sed 's/listening on //')
        [ -n "$base" ] && return 0
        sleep 0.05
    done
    echo "server did not start:"; cat "$work/server.log"; exit 1
}

stop_server() {
    kill -TERM "$server" 2>/dev/null
    wait "$server"
}

check() { # name, command...
    local name=$1; shift
    if "$@"; then
        passed=$((passed + 1)); echo "ok   $name"
    else
        failed=$((failed + 1)); echo "FAIL $name"
    fi
}

# status_of URL [curl args...]: prints the HTTP status, body to $work/body
status_of() {
    local url=$1; shift
    curl -s -o "$work/body" -w '%{http_code}' "$@" "$url"
}

subscribe_then_callback() {
    curl -sN --max-time 10 "$base/push?payRecordId=123" >"$work/stream" &
    local sub=$!
    for _ in $(seq 100); do grep -q PENDING "$work/stream" && break; sleep 0.05; done
    [ "$(status_of "$base/pay-callback?payRecordId=123")" = 200 ] || return 1
    wait "$sub" || return 1  # the server ends the stream: curl exits 0
    grep -q '^event: *pending' "$work/stream" &&
        grep -q '"status":"SUCCESS"' "$work/stream" &&
        grep -q '支付成功' "$work/stream" &&
        grep -q '^id:' "$work/stream"
}

late_subscriber_gets_the_outcome() {
    [ "$(status_of "$base/pay-callback?payRecordId=124&status=FAILED")" = 200 ] || return 1
    curl -sN --max-time 5 "$base/push?payRecordId=124" >"$work/late" || return 1
    grep -q '支付失败' "$work/late" && ! grep -q pending "$work/late"
}

duplicate_and_conflict() {
    status_of "$base/pay-callback?payRecordId=125" >/dev/null
    [ "$(status_of "$base/pay-callback?payRecordId=125")" = 200 ] &&
        grep -q '"duplicate":true' "$work/body" &&
        [ "$(status_of "$base/pay-callback?payRecordId=125&status=CLOSED")" = 409 ] &&
        grep -q '"error":"outcome_conflict"' "$work/body"
}

form_and_json_callbacks() {
    [ "$(status_of "$base/pay-callback" -d 'payRecordId=126&status=closed')" = 200 ] &&
        grep -q '"status":"CLOSED"' "$work/body" &&
        [ "$(status_of "$base/pay-callback" -H 'Content-Type: application/json' \
            -d '{"payRecordId":127,"status":"FAILED"}')" = 200 ] &&
        grep -q '"payRecordId":"127"' "$work/body"
}

long_poll_is_woken_by_a_callback() {
    curl -s --max-time 10 "$base/status?payRecordId=129&wait=25" >"$work/poll" &
    local poll=$!
    sleep 0.3
    [ "$(status_of "$base/pay-callback?payRecordId=129")" = 200 ] || return 1
    wait "$poll" && grep -q '"status":"SUCCESS"' "$work/poll" &&
        [ "$(status_of "$base/status?payRecordId=130")" = 200 ] &&
        grep -q '"status":"PENDING"' "$work/body" &&
        [ "$(status_of "$base/status?payRecordId=130&wait=1.5")" = 400 ] &&
        grep -q '"error":"invalid_request"' "$work/body"
}

wrong_method_names_the_allowed_ones() {
    curl -s -o /dev/null -D "$work/head" -X POST "$base/push?payRecordId=1" &&
        grep -q '^HTTP/1.1 405' "$work/head" && grep -qi '^allow: GET' "$work/head" &&
        curl -s -o /dev/null -D "$work/head" -X PUT "$base/pay-callback" &&
        grep -qi '^allow: GET, POST' "$work/head"
}

bad_input_is_json_400() {
    [ "$(status_of "$base/push?payRecordId=abc")" = 400 ] &&
        grep -q '"error":"invalid_pay_record_id"' "$work/body" &&
        [ "$(status_of "$base/pay-callback?payRecordId=1&status=PAID")" = 400 ] &&
        grep -q '"error":"invalid_status"' "$work/body" &&
        [ "$(status_of "$base/nowhere")" = 404 ]
}

sigterm_ends_streams_and_exits_0() {
    curl -sN --max-time 10 "$base/push?payRecordId=128" >"$work/open" &
    local sub=$!
    for _ in $(seq 100); do grep -q PENDING "$work/open" && break; sleep 0.05; done
    kill -TERM "$server"
    wait "$server"; local code=$?
    wait "$sub" && [ "$code" = 0 ]
}

signed_with_paypush_sign() {
    local path="/pay-callback?payRecordId=200&status=FAILED" headers=()
    while IFS= read -r line; do headers+=(-H "$line"); done \
        < <(PAYPUSH_CALLBACK_SECRET=$secret "$bin" sign --path "$path")
    [ "$(status_of "$base$path")" = 401 ] &&
        grep -q '"error":"invalid_signature"' "$work/body" &&
        [ "$(status_of "$base$path" "${headers[@]}")" = 200 ] &&
        [ "$(status_of "$base$path" "${headers[@]}")" = 401 ]  # the nonce is spent
}

signed_with_openssl_alone() {
    local ts nonce sig path='/pay-callback?payRecordId=201'
    ts=$(date +%s)
    nonce=$(openssl rand -hex 16)
    # timestamp, nonce, method, path and query, media type (none), body (none)
    sig=$(printf '%s\n%s\n%s\n%s\n%s\n%s\n' "$ts" "$nonce" GET "$path" "" "" |
        openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
    [ "$(status_of "$base$path" -H "Paypush-Timestamp: $ts" -H "Paypush-Nonce: $nonce" \
        -H "Paypush-Signature: $sig")" = 200 ]
}

signed_post_with_paypush_sign() {
    local body='{"payRecordId":"202","status":"CLOSED"}' headers=()
    while IFS= read -r line; do headers+=(-H "$line"); done \
        < <(PAYPUSH_CALLBACK_SECRET=$secret "$bin" sign --method POST --path /pay-callback \
            --content-type application/json --body "$body")
    # The same signed bytes as a form are refused: the media type is signed.
    [ "$(status_of "$base/pay-callback" "${headers[@]}" -d "$body")" = 401 ] &&
        [ "$(status_of "$base/pay-callback" -H 'Content-Type: application/json' "${headers[@]}" -d "$body")" = 200 ]
}

signed_form_post_with_paypush_sign() {
    local body='payRecordId=203&status=FAILED' headers=()
    while IFS= read -r line; do headers+=(-H "$line"); done \
        < <(PAYPUSH_CALLBACK_SECRET=$secret "$bin" sign --method POST --path /pay-callback --body "$body")
    [ "$(status_of "$base/pay-callback" "${headers[@]}" -d "$body")" = 200 ] &&
        grep -q '"status":"FAILED"' "$work/body"
}

signed_form_post_with_openssl_alone() {
    local ts nonce sig body='payRecordId=204&status=CLOSED'
    ts=$(date +%s)
    nonce=$(openssl rand -hex 16)
    sig=$(printf '%s\n%s\n%s\n%s\n%s\n%s\n' "$ts" "$nonce" POST /pay-callback \
        application/x-www-form-urlencoded "$body" |
        openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
    [ "$(status_of "$base/pay-callback" -H "Paypush-Timestamp: $ts" -H "Paypush-Nonce: $nonce" \
        -H "Paypush-Signature: $sig" -d "$body")" = 200 ]
}

subscribe_with_a_token() {
    local token
    token=$(PAYPUSH_SUBSCRIBE_SECRET=$sub_secret "$bin" token --pay-record-id 200)
    [ "$(status_of "$base/push?payRecordId=200")" = 403 ] &&
        curl -sN --max-time 5 "$base/push?payRecordId=200&token=$token" | grep -q '支付失败'
}

production_flags_hide_the_demo_page_and_metrics() {
    local metrics
    metrics=$(grep -o 'metrics on http://[0-9.:]*' "$work/server.log" | sed 's/metrics on //')
    [ "$(status_of "$base/")" = 404 ] &&
        grep -q '"error":"not_found"' "$work/body" &&
        [ "$(status_of "$base/qr.svg?payRecordId=1")" = 404 ] &&
        [ "$(status_of "$base/metrics")" = 404 ] &&
        [ "$(status_of "$metrics/metrics")" = 200 ] &&
        grep -q '^paypush_callbacks_total' "$work/body"
}

client_library_is_cached_and_revalidated() {
    local etag
    [ "$(status_of "$base/paypush.js" -D "$work/head")" = 200 ] &&
        grep -q 'export function waitForPayment' "$work/body" &&
        grep -qi '^content-type: text/javascript; charset=utf-8' "$work/head" &&
        grep -qi '^cache-control: public, max-age=300' "$work/head" || return 1
    etag=$(grep -i '^etag:' "$work/head" | cut -d' ' -f2 | tr -d '\r')
    [ -n "$etag" ] && [ "$(status_of "$base/paypush.js" -H "If-None-Match: $etag")" = 304 ]
}

every_answer_says_nosniff() {
    curl -s -D - -o /dev/null "$base/healthz" | grep -qi '^x-content-type-options: nosniff' &&
        curl -s -D - -o /dev/null "$base/no-such-route" | grep -qi '^x-content-type-options: nosniff'
}

a_stalled_body_gets_408_within_10s() {
    local hostport=${base#http://}
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
    printf 'POST /pay-callback HTTP/1.1\r\nHost: paypush\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{' >&3
    timeout 15 cat <&3 >"$work/stalled"
    local closed=$?
    exec 3<&-
    [ "$closed" = 0 ] && head -1 "$work/stalled" | grep -q '^HTTP/1.1 408' &&
        grep -q '"error":"request_timeout"' "$work/stalled"
}

start_server --push-timeout 30s
check "subscribe, then callback: the stream gets pending, then 支付成功, then ends" subscribe_then_callback
check "a late subscriber gets the recorded outcome at once" late_subscriber_gets_the_outcome
check "a repeated callback is a duplicate, a different one a 409" duplicate_and_conflict
check "form-encoded and JSON callbacks" form_and_json_callbacks
check "a long-poll on /status is woken by a callback; bad wait is 400" long_poll_is_woken_by_a_callback
check "a 405 names the route's methods in Allow" wrong_method_names_the_allowed_ones
check "bad input gets JSON errors" bad_input_is_json_400
check "SIGTERM ends open streams and the server exits 0" sigterm_ends_streams_and_exits_0

secret=curl-test-callback-secret
sub_secret=curl-test-subscribe-secret
PAYPUSH_CALLBACK_SECRET=$secret PAYPUSH_SUBSCRIBE_SECRET=$sub_secret start_server
check "signed mode: unsigned refused, paypush sign accepted, replay refused" signed_with_paypush_sign
check "signed mode: a signature computed with openssl alone is accepted" signed_with_openssl_alone
check "signed mode: a signed JSON POST is accepted, and refused when sent as a form" signed_post_with_paypush_sign
check "signed mode: a form POST signed by paypush sign's default is accepted" signed_form_post_with_paypush_sign
check "signed mode: a form POST signed with openssl alone is accepted" signed_form_post_with_openssl_alone
check "subscribe tokens: none is 403, paypush token opens the stream" subscribe_with_a_token
stop_server

PAYPUSH_CALLBACK_SECRET=$secret PAYPUSH_SUBSCRIBE_SECRET=$sub_secret \
    start_server --no-demo-page --metrics-bind 127.0.0.1:0
check "production flags: no demo page, /metrics only on --metrics-bind" production_flags_hide_the_demo_page_and_metrics
check "production flags keep /paypush.js, cached with an ETag (304)" client_library_is_cached_and_revalidated
check "every answer says X-Content-Type-Options: nosniff" every_answer_says_nosniff
check "a body that stalls gets 408 and a close within 10 s" a_stalled_body_gets_408_within_10s
stop_server

rm -rf "$work"
echo "curl: $passed passed, $failed failed"
[ "$failed" = 0 ]
