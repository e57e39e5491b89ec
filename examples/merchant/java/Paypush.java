// paypush from a merchant's Java backend (plain JDK 17+, no dependencies).
//
// Signs a callback exactly as `paypush sign` does (contract v2), sends it, and
// mints the subscribe token a checkout page needs for /push. Copy the three
// static methods `signature`, `callback` and `subscribeToken` into your
// service (a Spring @Service works the same way).
//
// Run it as a single file:
//   export PAYPUSH_URL=http://127.0.0.1:8080 PAYPUSH_CALLBACK_SECRET=... PAYPUSH_SUBSCRIBE_SECRET=...
//   java Paypush.java callback-get  123 SUCCESS   # signed GET /pay-callback
//   java Paypush.java callback-form 124 FAILED    # signed form POST /pay-callback
//   java Paypush.java token 123                   # the token for /push?payRecordId=123&token=...
//   java Paypush.java sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE

import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Locale;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class Paypush {
    static final String FORM = "application/x-www-form-urlencoded";
    static final HttpClient HTTP = HttpClient.newHttpClient();
    static final SecureRandom RANDOM = new SecureRandom();

    /** Hex HMAC-SHA256 of `message` with `secret`. */
    static String hmacHex(String secret, String message) throws GeneralSecurityException {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        return HexFormat.of().formatHex(mac.doFinal(message.getBytes(StandardCharsets.UTF_8)));
    }

    /** The Content-Type's type/subtype in lower case without parameters; "" for none. */
    static String mediaType(String contentType) {
        return contentType.split(";", 2)[0].trim().toLowerCase(Locale.ROOT);
    }

    /** The Paypush-Signature of a callback (contract v2: the media type is signed). */
    static String signature(String secret, String timestamp, String nonce, String method,
                            String pathAndQuery, String contentType, String body)
            throws GeneralSecurityException {
        String message = String.join("\n", timestamp, nonce, method, pathAndQuery,
                mediaType(contentType), body) + "\n";
        return hmacHex(secret, message);
    }

    /** Sends a signed callback; contentType and body are "" for a GET. */
    static HttpResponse<String> callback(String baseUrl, String secret, String method,
                                         String pathAndQuery, String contentType, String body)
            throws Exception {
        String timestamp = Long.toString(System.currentTimeMillis() / 1000);
        byte[] random = new byte[16];
        RANDOM.nextBytes(random);
        String nonce = HexFormat.of().formatHex(random);
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(baseUrl + pathAndQuery))
                .header("Paypush-Timestamp", timestamp)
                .header("Paypush-Nonce", nonce)
                .header("Paypush-Signature",
                        signature(secret, timestamp, nonce, method, pathAndQuery, contentType, body));
        if (method.equals("POST")) {
            request.header("Content-Type", contentType)
                    .POST(HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8));
        } else {
            request.GET();
        }
        return HTTP.send(request.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
    }

    /** The token a checkout page passes to /push: hex HMAC-SHA256(secret, "push:" + id). */
    static String subscribeToken(String secret, String payRecordId) throws GeneralSecurityException {
        return hmacHex(secret, "push:" + payRecordId);
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            if (fallback == null) {
                throw new IllegalStateException("set " + name);
            }
            return fallback;
        }
        return value;
    }

    static String form(String payRecordId, String status) {
        return "payRecordId=" + URLEncoder.encode(payRecordId, StandardCharsets.UTF_8)
                + "&status=" + URLEncoder.encode(status, StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        String baseUrl = env("PAYPUSH_URL", "http://127.0.0.1:8080");
        String command = args.length > 0 ? args[0] : "";
        switch (command) {
            case "callback-get" -> {
                String secret = env("PAYPUSH_CALLBACK_SECRET", null);
                HttpResponse<String> answer = callback(baseUrl, secret, "GET",
                        "/pay-callback?" + form(args[1], args[2]), "", "");
                System.out.println(answer.statusCode() + " " + answer.body());
            }
            case "callback-form" -> {
                String secret = env("PAYPUSH_CALLBACK_SECRET", null);
                HttpResponse<String> answer = callback(baseUrl, secret, "POST",
                        "/pay-callback", FORM, form(args[1], args[2]));
                System.out.println(answer.statusCode() + " " + answer.body());
            }
            case "token" -> System.out.println(
                    subscribeToken(env("PAYPUSH_SUBSCRIBE_SECRET", null), args[1]));
            case "sign" -> System.out.println(signature(env("PAYPUSH_CALLBACK_SECRET", null),
                    args[5], args[6], args[1], args[2], args[3], args[4]));
            default -> {
                System.err.println("usage: java Paypush.java callback-get ID STATUS | callback-form ID STATUS"
                        + " | token ID | sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE");
                System.exit(2);
            }
        }
    }
}
