//! The daemon's control socket (`STATE_DIR/control.sock`, mode 0600): `portsentry ban`
//! and `unban` send one JSON request line and read one JSON response line, so that
//! bans made while the daemon runs go through the daemon (one writer of the ban book).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
};

/// Requests larger than this are refused.
const MAX_REQUEST: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Ban a network; `seconds`: duration (0 = permanent; absent = BAN_TIME); `force`:
    /// past the ban guard's width limit and `session`, the address of the operator's SSH
    /// session (protected otherwise).
    Ban {
        net: IpNet,
        seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<IpAddr>,
    },
    Unban {
        net: IpNet,
    },
    UnbanAll,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    pub message: String,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: message.into(),
        }
    }

    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            message: message.into(),
        }
    }
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    crate::paths::control_socket(state_dir)
}

/// Binds the control socket (replacing a stale one; the caller holds the state lock).
pub fn listen(state_dir: &Path) -> Result<UnixListener> {
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Answers one connection: one request line, one response line.
pub async fn serve_one(stream: tokio::net::UnixStream, handle: impl FnOnce(Request) -> Response) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => Response::err(format!("bad request: {e}")),
        },
        _ => Response::err("no request received"),
    };
    let mut out = serde_json::to_string(&response).expect("plain data serializes");
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

use tokio::io::AsyncReadExt as _;

/// Sends `req` to the daemon. `Ok(None)`: no daemon listens.
pub fn send(state_dir: &Path, req: &Request) -> Result<Option<Response>> {
    let path = socket_path(state_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("the daemon closed the control connection without answering");
    }
    Ok(Some(
        serde_json::from_str(&answer).context("reading the daemon's answer")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Ban {
            net: "192.0.2.7/32".parse().unwrap(),
            seconds: Some(60),
            force: false,
            session: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"ban","net":"192.0.2.7/32","seconds":60}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::UnbanAll).unwrap(),
            r#"{"op":"unban_all"}"#
        );
        let forced = Request::Ban {
            net: "0.0.0.0/1".parse().unwrap(),
            seconds: None,
            force: true,
            session: Some("192.0.2.9".parse().unwrap()),
        };
        let s = serde_json::to_string(&forced).unwrap();
        assert_eq!(
            s,
            r#"{"op":"ban","net":"0.0.0.0/1","seconds":null,"force":true,"session":"192.0.2.9"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), forced);
    }

    #[tokio::test]
    async fn round_trip_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let l = listen(dir.path()).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_one(s, |req| Response::ok(format!("{req:?}"))).await;
        });
        let d = dir.path().to_path_buf();
        let resp = tokio::task::spawn_blocking(move || {
            send(
                &d,
                &Request::Unban {
                    net: "2001:db8::/64".parse().unwrap(),
                },
            )
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        server.await.unwrap();
        assert!(resp.ok);
        assert!(resp.message.contains("2001:db8::/64"), "{}", resp.message);
        let none = send(&dir.path().join("nothing"), &Request::UnbanAll).unwrap();
        assert!(none.is_none());
    }
}
