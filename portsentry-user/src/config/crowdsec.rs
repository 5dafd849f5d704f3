//! The CROWDSEC_* keys: their value types ([`Secret`], the LAPI URL, word lists), the checks
//! between them, and [`settings`], which reads the secrets kept in files (refusing a file
//! that group or others may read) into what the daemon's [`crate::crowdsec`] tasks run with.

use std::{
    fmt,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Config, ConfigError, text::shorten};

/// A secret from the configuration (a bouncer key, a machine password): never shown by
/// `Debug`, `check-config`, the log, `status` or the metrics.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it (an HTTP header or body).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

/// `CROWDSEC_LAPI_URL`: `http://` or `https://`, a host, an optional port and path; `""` = off.
pub(super) fn lapi_url(key: &str, value: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "{key} must start with http:// or https://, e.g. \"http://127.0.0.1:8080\", not \
                 \"{}\"",
                shorten(v)
            )
        })?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || host.contains('@')
        || v.contains(['?', '#'])
        || v.contains(char::is_whitespace)
    {
        return Err(format!(
            "{key} must be a plain URL with a host and no user, query or fragment, e.g. \
             \"http://127.0.0.1:8080\", not \"{}\"",
            shorten(v)
        ));
    }
    Ok(Some(v.trim_end_matches('/').to_owned()))
}

/// A secret written in the file itself; `""` = none.
pub(super) fn secret(key: &str, value: &str) -> Result<Option<Secret>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.trim() != value || value.contains(char::is_control) {
        return Err(format!(
            "{key} must not have spaces around it or control characters"
        ));
    }
    Ok(Some(Secret::new(value)))
}

/// A machine name as `cscli machines add` takes it; `""` = none.
pub(super) fn machine_id(key: &str, value: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{key} may only hold letters, digits, '-', '_' and '.', not \"{}\"",
            shorten(v)
        ));
    }
    Ok(Some(v.to_owned()))
}

/// A comma-separated list of words (origins, scenario words); `""` = none.
pub(super) fn words(key: &str, value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    if value.trim().is_empty() {
        return Ok(out);
    }
    for item in value.split(',') {
        let w = item.trim();
        if w.is_empty()
            || !w
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b))
        {
            return Err(format!(
                "{key} is a comma-separated list of words (letters, digits, '-', '_', '.', '/', \
                 ':'), e.g. \"cscli,crowdsec\"; \"{}\" is not one",
                shorten(w)
            ));
        }
        if !out.iter().any(|o| o == w) {
            out.push(w.to_owned());
        }
    }
    Ok(out)
}

/// The CROWDSEC_* keys other than the URL that `c` sets to something (without the URL
/// they would do nothing).
fn dependent(c: &Config) -> [(&'static str, bool); 8] {
    [
        ("CROWDSEC_BOUNCER_KEY", c.crowdsec_bouncer_key.is_some()),
        (
            "CROWDSEC_BOUNCER_KEY_FILE",
            c.crowdsec_bouncer_key_file.is_some(),
        ),
        ("CROWDSEC_MACHINE_ID", c.crowdsec_machine_id.is_some()),
        (
            "CROWDSEC_MACHINE_PASSWORD",
            c.crowdsec_machine_password.is_some(),
        ),
        (
            "CROWDSEC_CREDENTIALS_FILE",
            c.crowdsec_credentials_file.is_some(),
        ),
        ("CROWDSEC_ORIGINS", !c.crowdsec_origins.is_empty()),
        (
            "CROWDSEC_SCENARIOS_EXCLUDE",
            !c.crowdsec_scenarios_exclude.is_empty(),
        ),
        ("CROWDSEC_KILL_COMMANDS", c.crowdsec_kill_commands),
    ]
}

/// The checks between the CROWDSEC_* keys ([`Config::validate`] runs it; no file is read).
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    if c.crowdsec_lapi_url.is_none() {
        if let Some((key, _)) = dependent(c).into_iter().find(|(_, set)| *set) {
            return Err(c.error_at(
                key,
                format!(
                    "{key} is set but CROWDSEC_LAPI_URL is not; set CROWDSEC_LAPI_URL to the \
                     Local API, e.g. \"http://127.0.0.1:8080\", or remove {key}"
                ),
            ));
        }
        return Ok(());
    }
    if !c.crowdsec_enforce && !c.crowdsec_report {
        return Err(c.error_at(
            c.set_last(&["CROWDSEC_ENFORCE", "CROWDSEC_REPORT"]),
            "CROWDSEC_ENFORCE and CROWDSEC_REPORT are both 0, so CROWDSEC_LAPI_URL is used by \
             nothing; turn one on, or set CROWDSEC_LAPI_URL to \"\"",
        ));
    }
    if c.crowdsec_kill_commands && !c.crowdsec_enforce {
        return Err(c.error_at(
            c.set_last(&["CROWDSEC_KILL_COMMANDS", "CROWDSEC_ENFORCE"]),
            "CROWDSEC_KILL_COMMANDS is 1 but CROWDSEC_ENFORCE is 0, so no decision is \
             enforced and no command would run; set CROWDSEC_ENFORCE to 1, or \
             CROWDSEC_KILL_COMMANDS to 0",
        ));
    }
    if c.crowdsec_enforce
        && c.crowdsec_bouncer_key.is_none()
        && c.crowdsec_bouncer_key_file.is_none()
    {
        return Err(c.error_at(
            c.set_last(&["CROWDSEC_ENFORCE", "CROWDSEC_LAPI_URL"]),
            "CROWDSEC_ENFORCE is 1 but no bouncer key is set: set CROWDSEC_BOUNCER_KEY_FILE to \
             a file holding the key `cscli bouncers add NAME` printed (or CROWDSEC_BOUNCER_KEY), \
             or set CROWDSEC_ENFORCE to 0",
        ));
    }
    if c.crowdsec_report && c.crowdsec_credentials_file.is_none() {
        let missing = match (&c.crowdsec_machine_id, &c.crowdsec_machine_password) {
            (Some(_), Some(_)) => None,
            (Some(_), None) => Some("CROWDSEC_MACHINE_PASSWORD"),
            (None, Some(_)) => Some("CROWDSEC_MACHINE_ID"),
            (None, None) => Some("CROWDSEC_CREDENTIALS_FILE"),
        };
        if let Some(missing) = missing {
            return Err(c.error_at(
                c.set_last(&[
                    "CROWDSEC_MACHINE_ID",
                    "CROWDSEC_MACHINE_PASSWORD",
                    "CROWDSEC_REPORT",
                    "CROWDSEC_LAPI_URL",
                ]),
                format!(
                    "CROWDSEC_REPORT is 1 but {missing} is not set: set \
                     CROWDSEC_CREDENTIALS_FILE to the file `cscli machines add NAME -f FILE` \
                     wrote (or CROWDSEC_MACHINE_ID and CROWDSEC_MACHINE_PASSWORD), or set \
                     CROWDSEC_REPORT to 0"
                ),
            ));
        }
    }
    Ok(())
}

/// What an operator should know about the CROWDSEC_* keys: a secret given twice (the file
/// is used), a secret given in the configuration file when group or others may read it
/// (the key and credentials files are refused then).
pub fn warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let inline = [
        (
            "CROWDSEC_BOUNCER_KEY",
            "CROWDSEC_BOUNCER_KEY_FILE",
            c.crowdsec_bouncer_key.is_some() && c.crowdsec_bouncer_key_file.is_none(),
        ),
        (
            "CROWDSEC_MACHINE_PASSWORD",
            "CROWDSEC_CREDENTIALS_FILE",
            c.crowdsec_machine_password.is_some() && c.crowdsec_credentials_file.is_none(),
        ),
    ];
    let readable = c
        .source
        .as_ref()
        .and_then(|path| {
            Some((
                path,
                std::fs::metadata(path).ok()?.permissions().mode() & 0o777,
            ))
        })
        .filter(|(_, mode)| mode & 0o077 != 0);
    if let Some((path, mode)) = readable {
        for (key, file_key, _) in inline.iter().filter(|(_, _, set)| *set) {
            out.push(format!(
                "{key} (line {}) holds a secret in {}, which group or others may read (mode \
                 {mode:04o}): move it to a private file ({file_key}, chmod 600), or chmod 600 {}",
                c.line_of(key),
                path.display(),
                path.display()
            ));
        }
    }
    if c.crowdsec_bouncer_key.is_some() && c.crowdsec_bouncer_key_file.is_some() {
        out.push(
            "CROWDSEC_BOUNCER_KEY and CROWDSEC_BOUNCER_KEY_FILE are both set: the file's key \
             is used"
                .to_owned(),
        );
    }
    if (c.crowdsec_machine_id.is_some() || c.crowdsec_machine_password.is_some())
        && c.crowdsec_credentials_file.is_some()
    {
        out.push(
            "CROWDSEC_MACHINE_ID/CROWDSEC_MACHINE_PASSWORD and CROWDSEC_CREDENTIALS_FILE are \
             both set: the credentials file is used"
                .to_owned(),
        );
    }
    out
}

/// What the daemon's CrowdSec tasks run with (the secrets read from their files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The Local API, without a trailing slash.
    pub url: String,
    /// The bouncer's key (`None`: CROWDSEC_ENFORCE is 0).
    pub bouncer_key: Option<Secret>,
    /// The machine's login and password (`None`: CROWDSEC_REPORT is 0).
    pub machine: Option<(String, Secret)>,
    pub origins: Vec<String>,
    pub scenarios_exclude: Vec<String>,
    pub interval: Duration,
    /// CROWDSEC_KILL_COMMANDS: the kill commands run for the bans of addresses that
    /// decisions make (and their undo when they end).
    pub kill_commands: bool,
}

/// The settings of a validated `config`, reading the key and credentials files: `None`
/// when CROWDSEC_LAPI_URL is empty. A file that group or others may read, that cannot be
/// read, or that holds no key is an error at its key's line.
pub fn settings(c: &Config) -> Result<Option<Settings>, ConfigError> {
    let Some(url) = &c.crowdsec_lapi_url else {
        return Ok(None);
    };
    let bouncer_key = match (&c.crowdsec_bouncer_key, &c.crowdsec_bouncer_key_file) {
        _ if !c.crowdsec_enforce => None,
        (_, Some(path)) => {
            let text = private_file(c, "CROWDSEC_BOUNCER_KEY_FILE", path)?;
            let key = text.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(c.error_at(
                    "CROWDSEC_BOUNCER_KEY_FILE",
                    format!(
                        "{} must hold the bouncer key alone (the key `cscli bouncers add \
                         NAME` printed)",
                        path.display()
                    ),
                ));
            }
            Some(Secret::new(key))
        }
        (Some(k), None) => Some(k.clone()),
        (None, None) => None,
    };
    let machine = match (&c.crowdsec_machine_id, &c.crowdsec_machine_password) {
        _ if !c.crowdsec_report => None,
        (id, pw) => match &c.crowdsec_credentials_file {
            Some(path) => {
                let text = private_file(c, "CROWDSEC_CREDENTIALS_FILE", path)?;
                Some(credentials(&text).ok_or_else(|| {
                    c.error_at(
                        "CROWDSEC_CREDENTIALS_FILE",
                        format!(
                            "{} holds no `login:` and `password:` lines; give the file \
                             `cscli machines add NAME --password PW -f FILE` wrote",
                            path.display()
                        ),
                    )
                })?)
            }
            None => id.clone().zip(pw.clone()),
        },
    };
    Ok(Some(Settings {
        url: url.clone(),
        bouncer_key,
        machine,
        origins: c.crowdsec_origins.clone(),
        scenarios_exclude: c.crowdsec_scenarios_exclude.clone(),
        interval: c.crowdsec_interval,
        kill_commands: c.crowdsec_kill_commands,
    }))
}

/// Reads a file holding a secret; refused when group or others may read it.
fn private_file(c: &Config, key: &str, path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| c.error_at(key, format!("cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(c.error_at(
            key,
            format!(
                "{} holds a secret but group or others may read it (mode {mode:04o}); make it \
                 private: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| c.error_at(key, format!("cannot read {}: {e}", path.display())))
}

/// `login` and `password` of the YAML file `cscli machines add -f` writes (`url:`,
/// `login:`, `password:` lines, values optionally quoted).
pub fn credentials(text: &str) -> Option<(String, Secret)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v)
                    .to_owned()
            })
        })
    };
    let login = field("login").filter(|l| !l.is_empty())?;
    let password = field("password").filter(|p| !p.is_empty())?;
    Some((login, Secret::new(password)))
}

/// Where the CROWDSEC_* files are, for `check-config`.
pub fn files(c: &Config) -> Vec<(&'static str, PathBuf)> {
    [
        ("CROWDSEC_BOUNCER_KEY_FILE", &c.crowdsec_bouncer_key_file),
        ("CROWDSEC_CREDENTIALS_FILE", &c.crowdsec_credentials_file),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.clone().map(|p| (k, p)))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::config::tests::{bad, ok};

    #[test]
    fn checks_between_keys_name_their_line() {
        bad(
            "SYSLOG=\"0\"\nCROWDSEC_BOUNCER_KEY=\"k\"\n",
            2,
            "CROWDSEC_LAPI_URL is not",
        );
        bad(
            "CROWDSEC_LAPI_URL=\"http://127.0.0.1:8080\"\nCROWDSEC_REPORT=\"0\"\n",
            1,
            "no bouncer key",
        );
        bad(
            "CROWDSEC_LAPI_URL=\"http://127.0.0.1:8080\"\nCROWDSEC_ENFORCE=\"0\"\n\
             CROWDSEC_MACHINE_ID=\"a\"\n",
            3,
            "CROWDSEC_MACHINE_PASSWORD is not set",
        );
        bad(
            "CROWDSEC_LAPI_URL=\"http://x\"\nCROWDSEC_ENFORCE=\"0\"\nCROWDSEC_REPORT=\"0\"\n",
            3,
            "both 0",
        );
        bad("CROWDSEC_LAPI_URL=\"x\"\n", 1, "http://");
        bad(
            "SYSLOG=\"0\"\nCROWDSEC_KILL_COMMANDS=\"1\"\n",
            2,
            "CROWDSEC_LAPI_URL is not",
        );
        bad(
            "CROWDSEC_LAPI_URL=\"http://x\"\nCROWDSEC_KILL_COMMANDS=\"1\"\n\
             CROWDSEC_ENFORCE=\"0\"\nCROWDSEC_MACHINE_ID=\"a\"\n\
             CROWDSEC_MACHINE_PASSWORD=\"p\"\n",
            3,
            "CROWDSEC_KILL_COMMANDS is 1 but CROWDSEC_ENFORCE is 0",
        );
        bad(
            "CROWDSEC_KILL_COMMANDS=\"yes\"\n",
            1,
            "CROWDSEC_KILL_COMMANDS",
        );
        let c = ok("CROWDSEC_LAPI_URL=\"http://x:1\"\nCROWDSEC_REPORT=\"0\"\n\
                    CROWDSEC_BOUNCER_KEY=\"k\"\n");
        let s = settings(&c).unwrap().unwrap();
        assert_eq!(s.bouncer_key, Some(Secret::new("k")));
        assert_eq!((s.machine, s.interval), (None, Duration::from_millis(500)));
        assert!(!s.kill_commands, "CROWDSEC_KILL_COMMANDS defaults to 0");
        let c = ok("CROWDSEC_LAPI_URL=\"http://x:1\"\nCROWDSEC_REPORT=\"0\"\n\
                    CROWDSEC_BOUNCER_KEY=\"k\"\nCROWDSEC_KILL_COMMANDS=\"1\"\n");
        assert!(settings(&c).unwrap().unwrap().kill_commands);
        assert_eq!(settings(&Config::default()).unwrap(), None);
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let creds = dir.path().join("creds.yaml");
        std::fs::write(&key, "the-key\n").unwrap();
        std::fs::write(&creds, "url: http://x\nlogin: m\npassword: p\n").unwrap();
        let text = format!(
            "CROWDSEC_LAPI_URL=\"http://x:1\"\nCROWDSEC_BOUNCER_KEY_FILE=\"{}\"\n\
             CROWDSEC_CREDENTIALS_FILE=\"{}\"\n",
            key.display(),
            creds.display()
        );
        let c = ok(&text);
        for f in [&key, &creds] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let e = settings(&c).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(settings(&c).unwrap_err().line, 3);
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o400)).unwrap();
        let s = settings(&c).unwrap().unwrap();
        assert_eq!(s.bouncer_key, Some(Secret::new("the-key")));
        assert_eq!(s.machine, Some(("m".to_owned(), Secret::new("p"))));
        std::fs::write(&key, "").unwrap();
        assert!(settings(&c).unwrap_err().message.contains("alone"));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("s3cr3t-key");
        assert_eq!(format!("{s:?}"), "Secret(hidden)");
        let c = Config {
            crowdsec_bouncer_key: Some(s),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn reads_the_file_cscli_writes() {
        let text = "url: http://127.0.0.1:8080\nlogin: host-a\npassword: \"pw:with colon\"\n";
        let (login, pw) = credentials(text).unwrap();
        assert_eq!(login, "host-a");
        assert_eq!(pw.expose(), "pw:with colon");
        assert_eq!(credentials("url: x\nlogin: a\n"), None);
    }

    #[test]
    fn url_and_words() {
        assert_eq!(
            lapi_url("K", "http://127.0.0.1:8080/").unwrap().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(lapi_url("K", "").unwrap(), None);
        assert!(lapi_url("K", "ftp://x").unwrap_err().contains("http://"));
        assert!(lapi_url("K", "http://u:p@x").is_err());
        assert!(lapi_url("K", "http://").is_err());
        assert_eq!(words("K", "cscli, CAPI,cscli").unwrap(), ["cscli", "CAPI"]);
        assert!(words("K", "a,,b").is_err());
        assert!(machine_id("K", "host a").is_err());
        assert!(secret("K", " padded").is_err());
    }
}
