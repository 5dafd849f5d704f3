//! The calls we make to a CrowdSec Local API, over reqwest: the bouncer's decision stream
//! (`X-Api-Key`), and the machine's login, alerts and decision deletion (a JWT). Errors
//! never carry a secret (reqwest's name the URL, which holds none).

use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::config::crowdsec::Secret;

/// How long one call may take, all told.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a full answer of the decision stream may take, all told. crowdsec 1.4.6
/// composes one of 100,000 decisions (14 MB) in about 3 s on a loopback link; a larger
/// list or a slower link takes longer than [`TIMEOUT`], and a full answer cut short
/// would never be enforced (a failure asks for a full answer again).
const FULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The most of an error answer's body kept for the log.
const ERROR_BODY: usize = 200;
/// The most an answer may hold: a full answer of a million decisions is about 140 MB. A
/// Local API (or what stands between it and us) that sends more would otherwise take
/// the daemon's memory, and its scan detection with it.
const ANSWER_MAX: usize = 512 << 20;

/// Why a call failed.
#[derive(Debug)]
pub enum ApiError {
    /// 401 or 403: a wrong key or password, or a token that expired.
    Denied(u16),
    /// Another status, with the start of the body.
    Status(u16, String),
    /// No answer (refused, timed out, reset).
    Transport(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Denied(code) => write!(f, "denied ({code}): check the key or credentials"),
            ApiError::Status(code, body) => write!(f, "answered {code}: {body}"),
            ApiError::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// A Local API.
#[derive(Clone, Debug)]
pub struct Lapi {
    http: reqwest::Client,
    /// Without a trailing slash.
    url: String,
    /// [`FULL_ANSWER_TIMEOUT`] (shorter in tests).
    full_answer_timeout: Duration,
}

fn transport(e: reqwest::Error) -> ApiError {
    // The causes too ("connection refused" is in one), without the URL's query (ours
    // hold no secret anyway).
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push_str(": ");
        causes.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport(format!("{}{causes}", e.without_url()))
}

/// The body of `resp`, refused past `max` bytes (read as it comes, never held whole
/// beyond that).
async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > max {
            return Err(ApiError::Transport(format!(
                "the answer is larger than {} MiB; narrow the decisions asked for \
                 (CROWDSEC_ORIGINS, CROWDSEC_SCENARIOS_EXCLUDE)",
                max >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Lapi {
    pub fn new(url: &str) -> anyhow::Result<Lapi> {
        Lapi::with_timeouts(url, TIMEOUT, FULL_ANSWER_TIMEOUT)
    }

    /// [`Lapi::new`] with `call` the time any call may take, `full_answer` a full answer
    /// of the stream.
    fn with_timeouts(url: &str, call: Duration, full_answer: Duration) -> anyhow::Result<Lapi> {
        let http = reqwest::Client::builder()
            .timeout(call)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("portsentry/", env!("CARGO_PKG_VERSION")))
            // A redirect is not followed: reqwest keeps custom headers across hosts (the
            // bouncer's `X-Api-Key` would reach another host, from https to http too).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Lapi {
            http,
            url: url.trim_end_matches('/').to_owned(),
            full_answer_timeout: full_answer,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, ApiError> {
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let moved = resp.status().is_redirection().then(|| {
            resp.headers()
                .get(reqwest::header::LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                .unwrap_or_default()
        });
        let body = read_body(resp, ANSWER_MAX).await?;
        match status {
            200..=299 => Ok(body),
            401 | 403 => Err(ApiError::Denied(status)),
            _ if let Some(to) = moved => Err(ApiError::Status(
                status,
                format!(
                    "a redirect to {:?}, not followed (the key would go with it): set \
                     CROWDSEC_LAPI_URL to the Local API's own address",
                    to.chars().take(ERROR_BODY).collect::<String>()
                ),
            )),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(ERROR_BODY).collect();
                Err(ApiError::Status(status, text))
            }
        }
    }

    /// `GET /v1/decisions/stream`: everything in force (`startup`), or what changed since
    /// this bouncer's previous call. Only scopes Ip and Range are asked for; `origins` and
    /// `scenarios_not_containing` narrow it further (empty: not sent). Several decisions
    /// of one address each come (`dedup=false`).
    pub async fn stream(
        &self,
        key: &Secret,
        startup: bool,
        origins: &[String],
        scenarios_exclude: &[String],
    ) -> Result<Vec<u8>, ApiError> {
        let mut query = vec![
            ("startup", startup.to_string()),
            ("scopes", "ip,range".to_owned()),
            // Every decision, not only the longest of each address: the Local API picks
            // that one before it applies `origins` and `scenarios_not_containing`, so a
            // longer decision left out by them would hide one this server enforces.
            ("dedup", "false".to_owned()),
        ];
        if !origins.is_empty() {
            query.push(("origins", origins.join(",")));
        }
        if !scenarios_exclude.is_empty() {
            query.push(("scenarios_not_containing", scenarios_exclude.join(",")));
        }
        let mut req = self
            .http
            .get(format!("{}/v1/decisions/stream", self.url))
            .header("X-Api-Key", key.expose())
            .query(&query);
        if startup {
            req = req.timeout(self.full_answer_timeout);
        }
        self.send(req).await
    }

    /// `POST /v1/watchers/login`: a token for the machine.
    pub async fn login(&self, machine: &str, password: &Secret) -> Result<Secret, ApiError> {
        let body = serde_json::json!({
            "machine_id": machine,
            "password": password.expose(),
            "scenarios": [],
        });
        let answer = self
            .send(
                self.http
                    .post(format!("{}/v1/watchers/login", self.url))
                    .json(&body),
            )
            .await?;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|e| ApiError::Status(200, format!("login answer not JSON: {e}")))?;
        v.get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| ApiError::Status(200, "login answer holds no token".to_owned()))
    }

    /// `POST /v1/alerts` with a list of alerts.
    pub async fn push_alerts(&self, token: &Secret, alerts: &Value) -> Result<(), ApiError> {
        self.send(
            self.http
                .post(format!("{}/v1/alerts", self.url))
                .bearer_auth(token.expose())
                .json(alerts),
        )
        .await
        .map(drop)
    }

    /// `DELETE /v1/decisions?ip=` (or `range=`) `&scenario=`: the decisions of `net` made by
    /// `scenario` (every machine's). The number deleted.
    pub async fn delete_decisions(
        &self,
        token: &Secret,
        net: &IpNet,
        scenario: &str,
    ) -> Result<u64, ApiError> {
        let (which, value) = if net.prefix_len() == net.max_prefix_len() {
            ("ip", net.addr().to_string())
        } else {
            ("range", net.to_string())
        };
        let answer = self
            .send(
                self.http
                    .delete(format!("{}/v1/decisions", self.url))
                    .bearer_auth(token.expose())
                    .query(&[(which, value.as_str()), ("scenario", scenario)]),
            )
            .await?;
        let v: Value = serde_json::from_slice(&answer).unwrap_or_default();
        Ok(v.get("nbDeleted")
            .and_then(|n| n.as_str().and_then(|s| s.parse().ok()).or(n.as_u64()))
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A Local API that answers every call with an empty answer after `delay`.
    async fn slow_lapi(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let body = r#"{"new":null,"deleted":null}"#;
                    let _ = conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A server that answers one call with `head`, then `chunks` one after the other
    /// (until the client goes); its URL.
    async fn answering_once(head: String, chunks: Vec<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(head.as_bytes()).await;
            for chunk in chunks {
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        url
    }

    /// An answer larger than the most allowed is refused as it comes, not read whole.
    #[tokio::test]
    async fn an_answer_too_large_is_refused() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 3000000\r\n\r\n".to_owned();
        let url = answering_once(head, vec![vec![b' '; 100_000]; 30]).await;
        let lapi = Lapi::new(&url).unwrap();
        let req = lapi.http.get(format!("{url}/v1/decisions/stream"));
        let resp = req.send().await.unwrap();
        let answer = read_body(resp, 1 << 20).await;
        let Err(ApiError::Transport(why)) = &answer else {
            panic!("{:?}", answer.map(|b| b.len()));
        };
        assert!(why.contains("larger than 1 MiB"), "{why}");
        // Under the most: read whole.
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_owned();
        let url = answering_once(head, vec![b"hello".to_vec()]).await;
        let resp = lapi.http.get(&url).send().await.unwrap();
        assert_eq!(read_body(resp, 5).await.unwrap(), b"hello");
    }

    /// A redirect is not followed (the key would go to the host it names) and says why.
    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!(
            "http://{}/v1/decisions/stream",
            elsewhere.local_addr().unwrap()
        );
        let head = format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n");
        let url = answering_once(head, Vec::new()).await;
        let lapi = Lapi::new(&url).unwrap();
        let answer = lapi.stream(&Secret::new("k"), true, &[], &[]).await;
        let Err(ApiError::Status(302, why)) = &answer else {
            panic!("{answer:?}");
        };
        assert!(
            why.contains(&target) && why.contains("not followed"),
            "{why}"
        );
        let reached = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
        assert!(reached.is_err(), "the redirect was followed");
    }

    /// A full answer may take longer than any other call: one that always took longer
    /// would never be enforced.
    #[tokio::test]
    async fn a_full_answer_has_longer_than_a_delta() {
        let url = slow_lapi(Duration::from_millis(400)).await;
        let lapi =
            Lapi::with_timeouts(&url, Duration::from_millis(100), Duration::from_secs(5)).unwrap();
        let key = Secret::new("k");
        let delta = lapi.stream(&key, false, &[], &[]).await;
        assert!(matches!(delta, Err(ApiError::Transport(_))), "{delta:?}");
        let full = lapi.stream(&key, true, &[], &[]).await.unwrap();
        assert_eq!(full, br#"{"new":null,"deleted":null}"#);
    }
}
