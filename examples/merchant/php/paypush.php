<?php
// paypush from a merchant's PHP backend (built-ins only, PHP 8).
//
// Signs a callback exactly as `paypush sign` does (contract v2), sends it, and
// mints the subscribe token a checkout page needs for /push. Copy
// paypush_signature, paypush_callback and paypush_subscribe_token into your
// service.
//
//   export PAYPUSH_URL=http://127.0.0.1:8080 PAYPUSH_CALLBACK_SECRET=... PAYPUSH_SUBSCRIBE_SECRET=...
//   php paypush.php callback-get  123 SUCCESS   # signed GET /pay-callback
//   php paypush.php callback-form 124 FAILED    # signed form POST /pay-callback
//   php paypush.php token 123                   # the token for /push?payRecordId=123&token=...
//   php paypush.php sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE

declare(strict_types=1);

const PAYPUSH_FORM = 'application/x-www-form-urlencoded';

/** The Content-Type's type/subtype in lower case without parameters; '' for none. */
function paypush_media_type(string $contentType): string
{
    return strtolower(trim(explode(';', $contentType, 2)[0]));
}

/** The Paypush-Signature of a callback (contract v2: the media type is signed). */
function paypush_signature(string $secret, string $timestamp, string $nonce, string $method,
                           string $pathAndQuery, string $contentType, string $body): string
{
    $message = implode("\n", [$timestamp, $nonce, $method, $pathAndQuery,
        paypush_media_type($contentType), $body]) . "\n";
    return hash_hmac('sha256', $message, $secret);
}

/** Sends a signed callback; returns [HTTP status, body]. */
function paypush_callback(string $baseUrl, string $secret, string $method, string $pathAndQuery,
                          string $contentType = '', string $body = ''): array
{
    $timestamp = (string) time();
    $nonce = bin2hex(random_bytes(16));
    $headers = [
        "Paypush-Timestamp: $timestamp",
        "Paypush-Nonce: $nonce",
        'Paypush-Signature: ' . paypush_signature($secret, $timestamp, $nonce, $method,
            $pathAndQuery, $contentType, $body),
    ];
    if ($contentType !== '') {
        $headers[] = "Content-Type: $contentType";
    }
    $context = stream_context_create(['http' => [
        'method' => $method,
        'header' => $headers,
        'content' => $method === 'POST' ? $body : '',
        'ignore_errors' => true, // read 4xx and 5xx answers too
        'timeout' => 10,
    ]]);
    $answer = file_get_contents($baseUrl . $pathAndQuery, false, $context);
    if ($answer === false) {
        throw new RuntimeException("cannot reach $baseUrl");
    }
    preg_match('{^HTTP/\S+ (\d{3})}', $http_response_header[0], $status);
    return [(int) $status[1], $answer];
}

/** The token a checkout page passes to /push: hex HMAC-SHA256(secret, "push:" + id). */
function paypush_subscribe_token(string $secret, string $payRecordId): string
{
    return hash_hmac('sha256', "push:$payRecordId", $secret);
}

function paypush_env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        fwrite(STDERR, "set $name\n");
        exit(2);
    }
    return $value;
}

$baseUrl = getenv('PAYPUSH_URL') ?: 'http://127.0.0.1:8080';
$args = array_slice($argv, 1);
switch ($args[0] ?? '') {
    case 'callback-get':
    case 'callback-form':
        $fields = http_build_query(['payRecordId' => $args[1], 'status' => $args[2]]);
        $secret = paypush_env('PAYPUSH_CALLBACK_SECRET');
        [$status, $body] = $args[0] === 'callback-get'
            ? paypush_callback($baseUrl, $secret, 'GET', "/pay-callback?$fields")
            : paypush_callback($baseUrl, $secret, 'POST', '/pay-callback', PAYPUSH_FORM, $fields);
        echo "$status $body\n";
        break;
    case 'token':
        echo paypush_subscribe_token(paypush_env('PAYPUSH_SUBSCRIBE_SECRET'), $args[1]), "\n";
        break;
    case 'sign':
        [$method, $path, $contentType, $body, $timestamp, $nonce] = array_slice($args, 1, 6);
        echo paypush_signature(paypush_env('PAYPUSH_CALLBACK_SECRET'), $timestamp, $nonce, $method,
            $path, $contentType, $body), "\n";
        break;
    default:
        fwrite(STDERR, "usage: php paypush.php callback-get ID STATUS | callback-form ID STATUS | token ID"
            . " | sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE\n");
        exit(2);
}
