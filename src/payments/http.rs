//! The `http` adapter's gateway call: each command attempt is POSTed as
//! JSON to `payments.http_url`. A 2xx answer whose body is
//! `{"outcome": "...", "code": "...", "gateway_ref": "..."}` is the result;
//! a timeout, a connection error, any other status or an unreadable body is
//! `failed` (retried by the lifecycle with its backoff).
//!
//! One client per adapter: connections are kept alive and reused, and the
//! adapter bounds how many calls are in flight (`payments.http_max_in_flight`).

use super::Answer;
use crate::lifecycle::Outcome;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::time::Duration;

/// The largest gateway answer read; a larger one is `failed`.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Idle connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Codes of failures the adapter itself observed (no gateway answer).
pub const TIMEOUT: &str = "http_timeout";
pub const CONNECTION: &str = "http_connection_error";
pub const BAD_RESPONSE: &str = "http_bad_response";

/// Why the configured URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("payments.http_url {url:?} is not an http:// URL with a host: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

pub struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Body {
    outcome: Outcome,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    gateway_ref: Option<String>,
}

impl Gateway {
    pub fn new(url: &str, timeout: Duration) -> Result<Gateway, UrlError> {
        let parsed: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| UrlError {
                url: url.into(),
                reason: e.to_string(),
            })?;
        if parsed.scheme_str() != Some("http") || parsed.host().is_none() {
            return Err(UrlError {
                url: url.into(),
                reason: "only plain http to a host is supported (put a TLS proxy in front)".into(),
            });
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build_http();
        Ok(Gateway {
            client,
            url: parsed,
            timeout,
        })
    }

    /// POSTs one command attempt (its JSON as produced) and reads the answer.
    pub async fn call(&self, command: Bytes) -> Answer {
        match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(answer) => answer,
            Err(_) => Answer::failed(TIMEOUT),
        }
    }

    async fn exchange(&self, command: Bytes) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header("content-type", "application/json")
            .body(Full::new(command));
        let Ok(request) = request else {
            return Answer::failed(BAD_RESPONSE);
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(_) => return Answer::failed(CONNECTION),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return Answer::failed(BAD_RESPONSE),
        };
        if !status.is_success() {
            return Answer::failed(status_code(status.as_u16()));
        }
        match serde_json::from_slice::<Body>(&bytes) {
            Ok(body) => Answer::new(
                body.outcome,
                body.code.as_deref().unwrap_or(body.outcome.as_str()),
                body.gateway_ref.as_deref(),
            ),
            Err(_) => Answer::failed(BAD_RESPONSE),
        }
    }
}

/// `http_500` and the like, from a fixed table (codes are label-safe and
/// bounded: any status outside it is `http_status`).
fn status_code(status: u16) -> &'static str {
    match status {
        400 => "http_400",
        401 => "http_401",
        403 => "http_403",
        404 => "http_404",
        408 => "http_408",
        409 => "http_409",
        429 => "http_429",
        500 => "http_500",
        502 => "http_502",
        503 => "http_503",
        504 => "http_504",
        _ => "http_status",
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP/1.1 server on loopback that answers by what the
    //! command's body contains: 200s with each outcome, a 500, an answer
    //! slower than the timeout, a reset connection, an oversized body.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const TIMEOUT_MS: u64 = 300;

    /// Reads one request (headers, then `content-length` bytes of body).
    async fn request(stream: &mut TcpStream) -> Option<String> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            bytes.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while bytes.len() < head_end + length {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned())
    }

    fn response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Serves until the test ends; returns its URL and how many
    /// connections it accepted.
    async fn gateway_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/payments", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while let Some(body) = request(&mut stream).await {
                        let answer = if body.contains("reset") {
                            return; // dropped without an answer
                        } else if body.contains("slow") {
                            tokio::time::sleep(Duration::from_millis(TIMEOUT_MS * 3)).await;
                            response("200 OK", r#"{"outcome":"succeeded"}"#)
                        } else if body.contains("error500") {
                            response("500 Internal Server Error", "oops")
                        } else if body.contains("decline") {
                            response(
                                "200 OK",
                                r#"{"outcome":"declined","code":"insufficient_funds"}"#,
                            )
                        } else if body.contains("big") {
                            response("200 OK", &"x".repeat(MAX_RESPONSE_BYTES + 1))
                        } else if body.contains("garbage") {
                            response("200 OK", "not json")
                        } else {
                            response(
                                "200 OK",
                                r#"{"outcome":"succeeded","code":"ok","gateway_ref":"ch_1"}"#,
                            )
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    fn command(authorization: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"type":"capture","command_id":"o-1/p0:capture","attempt":1,"authorization_id":"{authorization}"}}"#
        ))
    }

    #[test]
    fn answers_timeouts_errors_and_resets_each_become_a_result() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (url, connections) = gateway_server().await;
            let gateway = Gateway::new(&url, Duration::from_millis(TIMEOUT_MS)).unwrap();
            let ok = gateway.call(command("auth-ok")).await;
            assert_eq!(
                ok,
                Answer::new(Outcome::Succeeded, "ok", Some("ch_1")),
                "a 200 with a result"
            );
            for _ in 0..4 {
                assert_eq!(
                    gateway.call(command("auth-ok")).await.outcome,
                    Outcome::Succeeded
                );
            }
            assert_eq!(
                connections.load(Ordering::SeqCst),
                1,
                "five calls in a row reuse one connection"
            );
            assert_eq!(
                gateway.call(command("auth-decline")).await,
                Answer::new(Outcome::Declined, "insufficient_funds", None)
            );
            assert_eq!(
                gateway.call(command("auth-error500")).await,
                Answer::failed("http_500")
            );
            assert_eq!(
                gateway.call(command("auth-slow")).await,
                Answer::failed(TIMEOUT)
            );
            assert_eq!(
                gateway.call(command("auth-reset")).await,
                Answer::failed(CONNECTION)
            );
            assert_eq!(
                gateway.call(command("auth-big")).await,
                Answer::failed(BAD_RESPONSE),
                "an answer over MAX_RESPONSE_BYTES"
            );
            assert_eq!(
                gateway.call(command("auth-garbage")).await,
                Answer::failed(BAD_RESPONSE)
            );
            // After the failures, a call still goes through.
            assert_eq!(
                gateway.call(command("auth-ok")).await.outcome,
                Outcome::Succeeded
            );
        });
    }

    #[test]
    fn a_url_that_is_not_plain_http_is_refused_naming_it() {
        for url in ["https://gw.example/pay", "not a url", "/relative"] {
            let error = Gateway::new(url, Duration::from_secs(1)).err().expect(url);
            assert!(error.to_string().contains("payments.http_url"), "{error}");
        }
    }
}
