// paypush from a merchant's Go backend (standard library only).
//
// Signs a callback exactly as `paypush sign` does (contract v2), sends it, and
// mints the subscribe token a checkout page needs for /push. Copy Signature,
// Callback and SubscribeToken into your service.
//
//	export PAYPUSH_URL=http://127.0.0.1:8080 PAYPUSH_CALLBACK_SECRET=... PAYPUSH_SUBSCRIBE_SECRET=...
//	go run paypush.go callback-get  123 SUCCESS   # signed GET /pay-callback
//	go run paypush.go callback-form 124 FAILED    # signed form POST /pay-callback
//	go run paypush.go token 123                   # the token for /push?payRecordId=123&token=...
//	go run paypush.go sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE
package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

const form = "application/x-www-form-urlencoded"

func hmacHex(secret, message string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(message))
	return hex.EncodeToString(mac.Sum(nil))
}

// MediaType is the Content-Type's type/subtype in lower case without
// parameters; "" for none.
func MediaType(contentType string) string {
	return strings.ToLower(strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0]))
}

// Signature is the Paypush-Signature of a callback (contract v2: the media
// type is signed).
func Signature(secret, timestamp, nonce, method, pathAndQuery, contentType, body string) string {
	message := strings.Join([]string{timestamp, nonce, method, pathAndQuery, MediaType(contentType), body}, "\n") + "\n"
	return hmacHex(secret, message)
}

// Callback sends a signed callback; contentType and body are "" for a GET.
func Callback(baseURL, secret, method, pathAndQuery, contentType, body string) (int, string, error) {
	timestamp := strconv.FormatInt(time.Now().Unix(), 10)
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		return 0, "", err
	}
	nonce := hex.EncodeToString(random)
	var reader io.Reader
	if method == http.MethodPost {
		reader = strings.NewReader(body)
	}
	request, err := http.NewRequest(method, baseURL+pathAndQuery, reader)
	if err != nil {
		return 0, "", err
	}
	request.Header.Set("Paypush-Timestamp", timestamp)
	request.Header.Set("Paypush-Nonce", nonce)
	request.Header.Set("Paypush-Signature", Signature(secret, timestamp, nonce, method, pathAndQuery, contentType, body))
	if contentType != "" {
		request.Header.Set("Content-Type", contentType)
	}
	client := http.Client{Timeout: 10 * time.Second}
	answer, err := client.Do(request)
	if err != nil {
		return 0, "", err
	}
	defer answer.Body.Close()
	text, err := io.ReadAll(answer.Body)
	return answer.StatusCode, string(text), err
}

// SubscribeToken is the token a checkout page passes to /push:
// hex HMAC-SHA256(secret, "push:" + id).
func SubscribeToken(secret, payRecordID string) string {
	return hmacHex(secret, "push:"+payRecordID)
}

func env(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Fprintln(os.Stderr, "set", name)
		os.Exit(2)
	}
	return value
}

func main() {
	baseURL := os.Getenv("PAYPUSH_URL")
	if baseURL == "" {
		baseURL = "http://127.0.0.1:8080"
	}
	args := append(os.Args[1:], "")
	switch args[0] {
	case "callback-get", "callback-form":
		fields := url.Values{"payRecordId": {args[1]}, "status": {args[2]}}.Encode()
		var status int
		var body string
		var err error
		if args[0] == "callback-get" {
			status, body, err = Callback(baseURL, env("PAYPUSH_CALLBACK_SECRET"), http.MethodGet, "/pay-callback?"+fields, "", "")
		} else {
			status, body, err = Callback(baseURL, env("PAYPUSH_CALLBACK_SECRET"), http.MethodPost, "/pay-callback", form, fields)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(status, body)
	case "token":
		fmt.Println(SubscribeToken(env("PAYPUSH_SUBSCRIBE_SECRET"), args[1]))
	case "sign":
		method, path, contentType, body, timestamp, nonce := args[1], args[2], args[3], args[4], args[5], args[6]
		fmt.Println(Signature(env("PAYPUSH_CALLBACK_SECRET"), timestamp, nonce, method, path, contentType, body))
	default:
		fmt.Fprintln(os.Stderr, "usage: paypush callback-get ID STATUS | callback-form ID STATUS | token ID"+
			" | sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE")
		os.Exit(2)
	}
}
