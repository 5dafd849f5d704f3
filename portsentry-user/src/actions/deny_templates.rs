//! The `KILL_HOSTS_DENY` templates (and their `HOSTS_DENY_FILE`s) used before the one
//! in force, kept in `STATE_DIR/hosts-deny-templates.json`: a ban's line in hosts.deny
//! is the one its template made when the ban began, and an undo after a reload or a
//! restart changed the template (or removed it, or moved the file) must still find it.
//! [`crate::actions::undo_plan`] removes the line each of them makes for the host too.
//!
//! The daemon notes the template in force (or that none is) at every start and reload
//! ([`note`]), with the time it is in force from: an entry each time it changes, the
//! [`KEPT`] most recent kept. A ban's undo takes the template in force when the ban was
//! made and those noted after it ([`made_with`]), never one replaced before: another
//! template's line for the same host may be the operator's own.
//!
//! A stop notes its time ([`stopped`]). No kill command runs while the daemon is
//! stopped: the bans the program makes meanwhile run theirs at the next start, with its
//! template, which is therefore in force from the stop. After a stop that did not note
//! it (kill -9), a start's template is in force from the start's beginning, before the
//! program runs with its settings: a ban the program makes is dated by the kernel's
//! coarse clock, up to two ticks (8 ms at 250 Hz) early, and must not fall before the
//! template it was made with. Such a ban made within two ticks after a reload may be
//! dated before it: its undo removes the lines of both templates for its host (the
//! other side would leave its own line for good).

use std::{
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{config::Config, fsutil};

/// Templates kept, the one in force included.
pub const KEPT: usize = 16;

const FILE: &str = "hosts-deny-templates.json";

/// A `KILL_HOSTS_DENY` template and the file its lines went to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub file: PathBuf,
    /// `None`: no `KILL_HOSTS_DENY` (no line written meanwhile).
    pub template: Option<String>,
    /// When it was first noted, in milliseconds since the epoch (0: unknown).
    #[serde(default)]
    pub since_ms: u64,
    /// When the daemon with it in force stopped, in milliseconds since the epoch;
    /// `None` while in force (or after a stop that did not note it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// The templates `list` holds that a ban made at `made` may have written its line
/// with: the one in force then and every later one (its kill commands run after the
/// ban is made, maybe after a reload). All of them when `made` is before the first one
/// noted (a ban of a release before the list).
pub fn made_with(list: &[Template], made: SystemTime) -> &[Template] {
    let made = millis(made);
    let from = list.iter().rposition(|t| t.since_ms <= made).unwrap_or(0);
    &list[from..]
}

/// Where they are kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The templates noted, oldest first; none when the file is missing. A file that does
/// not parse is an error that names it.
pub fn load(state_dir: &Path) -> io::Result<Vec<Template>> {
    let path = path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {e} (remove it to forget the KILL_HOSTS_DENY templates used before)",
                path.display()
            ),
        )
    })
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Notes `c`'s `KILL_HOSTS_DENY` (with its `HOSTS_DENY_FILE`), or that it has none, as
/// in force from the last entry's stop when one was noted, else from `from` (a start's
/// beginning, or a reload): appended when the last entry differs (the file is written
/// only then, or to take a stop back), the oldest dropped past [`KEPT`].
pub fn note(c: &Config, from: SystemTime) -> io::Result<()> {
    let template = &c.kill_hosts_deny;
    // A list that does not parse is replaced: the one in force is what matters most.
    let mut list = load(&c.state_dir).unwrap_or_default();
    let same = |t: &Template| {
        t.template == *template && (template.is_none() || t.file == c.hosts_deny_file)
    };
    match list.last_mut() {
        // The same template again after a stop: in force still.
        Some(last) if same(last) => {
            if last.until_ms.take().is_none() {
                return Ok(());
            }
        }
        None if template.is_none() => return Ok(()),
        last => {
            let since_ms = last.and_then(|t| t.until_ms).unwrap_or(millis(from));
            list.push(Template {
                file: c.hosts_deny_file.clone(),
                template: template.clone(),
                since_ms,
                until_ms: None,
            });
        }
    }
    save(&c.state_dir, list)
}

/// Notes that the daemon stops now: the bans made from now on run their kill commands
/// at the next start, with the template it notes ([`note`]).
pub fn stopped(state_dir: &Path) -> io::Result<()> {
    let mut list = load(state_dir)?;
    match list.last_mut() {
        Some(last) if last.until_ms.is_none() => {
            last.until_ms = Some(millis(SystemTime::now()));
            save(state_dir, list)
        }
        _ => Ok(()),
    }
}

/// Writes `list`, the oldest dropped past [`KEPT`].
fn save(state_dir: &Path, mut list: Vec<Template>) -> io::Result<()> {
    let drop = list.len().saturating_sub(KEPT);
    list.drain(..drop);
    std::fs::create_dir_all(state_dir)?;
    let bytes = serde_json::to_vec_pretty(&list).map_err(io::Error::other)?;
    fsutil::write_atomic(&path(state_dir), &bytes, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, template: Option<&str>, file: &str) -> Config {
        Config {
            state_dir: dir.to_path_buf(),
            kill_hosts_deny: template.map(str::to_owned),
            hosts_deny_file: PathBuf::from(file),
            ..Config::default()
        }
    }

    #[test]
    fn each_change_is_noted_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), []);
        note(
            &config(dir.path(), None, "/etc/hosts.deny"),
            SystemTime::now(),
        )
        .unwrap();
        assert!(!path(dir.path()).exists(), "nothing to note");
        let a = config(dir.path(), Some("ALL: $TARGET$"), "/etc/hosts.deny");
        let b = config(dir.path(), Some("sshd: $TARGET$"), "/etc/hosts.deny");
        let none = config(dir.path(), None, "/etc/hosts.deny");
        for c in [&a, &a, &b, &a, &none, &none] {
            note(c, SystemTime::now()).unwrap();
        }
        let templates: Vec<Option<String>> = load(dir.path())
            .unwrap()
            .into_iter()
            .map(|t| t.template)
            .collect();
        let some = |t: &str| Some(t.to_owned());
        assert_eq!(
            templates,
            [
                some("ALL: $TARGET$"),
                some("sshd: $TARGET$"),
                some("ALL: $TARGET$"),
                None
            ]
        );
        for i in 0..KEPT + 3 {
            note(
                &config(dir.path(), Some(&format!("ALL: $TARGET$ #{i}")), "/x"),
                SystemTime::now(),
            )
            .unwrap();
        }
        let list = load(dir.path()).unwrap();
        assert_eq!(list.len(), KEPT);
        assert_eq!(
            list[KEPT - 1].template,
            some(&format!("ALL: $TARGET$ #{}", KEPT + 2))
        );
        std::fs::write(path(dir.path()), "{").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("hosts-deny-templates.json"), "{e}");
        note(&a, SystemTime::now()).unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 1, "replaced");
    }

    /// A ban the program made while the daemon was stopped ran its kill commands at the
    /// next start, with that start's template: the template before the stop is not
    /// its (the operator may have written a line of that form for the host since).
    #[test]
    fn a_start_template_is_in_force_from_the_stop_before() {
        let dir = tempfile::tempdir().unwrap();
        let at = |ms: u64| UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let templates = |made: u64| {
            made_with(&load(dir.path()).unwrap(), at(made))
                .iter()
                .map(|t| t.template.clone())
                .collect::<Vec<_>>()
        };
        let a = config(dir.path(), Some("ALL: $TARGET$"), "/etc/hosts.deny");
        let none = config(dir.path(), None, "/etc/hosts.deny");
        note(&a, at(1_000)).unwrap();
        // Nothing noted before: nothing to stop.
        stopped(tempfile::tempdir().unwrap().path()).unwrap();
        stopped(dir.path()).unwrap();
        let stop = load(dir.path()).unwrap()[0].until_ms.unwrap();
        assert!(stop >= millis(SystemTime::now()) - 60_000, "{stop}");
        stopped(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap()[0].until_ms, Some(stop), "kept");
        // The next start, much later, with none: in force from the stop.
        note(&none, at(stop + 3_600_000)).unwrap();
        let list = load(dir.path()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].since_ms, list[1].until_ms), (stop, None));
        assert_eq!(templates(stop + 1), [None]);
        assert_eq!(templates(stop - 1), [Some("ALL: $TARGET$".into()), None]);
        // The same template after a stop stays in force: the stop is taken back.
        stopped(dir.path()).unwrap();
        note(&none, at(stop + 7_200_000)).unwrap();
        let list = load(dir.path()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].since_ms, list[1].until_ms), (stop, None));
        // After a stop that noted nothing (kill -9): from the start's beginning given.
        note(&a, at(stop + 9_000_000)).unwrap();
        assert_eq!(load(dir.path()).unwrap()[2].since_ms, stop + 9_000_000);
    }

    #[test]
    fn a_ban_was_made_with_the_template_in_force_then_or_a_later_one() {
        let t = |template: &str, since: u64| Template {
            file: "/etc/hosts.deny".into(),
            template: Some(template.into()),
            since_ms: since,
            until_ms: None,
        };
        let list = [t("a", 100), t("b", 200), t("c", 300)];
        let at = |s: u64| {
            made_with(&list, UNIX_EPOCH + std::time::Duration::from_millis(s))
                .iter()
                .map(|t| t.template.as_deref().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(at(50), ["a", "b", "c"], "before the list");
        assert_eq!(at(100), ["a", "b", "c"]);
        assert_eq!(at(250), ["b", "c"]);
        assert_eq!(at(300), ["c"]);
        assert_eq!(at(900), ["c"]);
        assert!(made_with(&[], SystemTime::now()).is_empty());
        // A ban made after KILL_HOSTS_DENY was taken out wrote no line: nothing to take.
        let none = Template {
            template: None,
            ..t("", 400)
        };
        let list = [t("a", 100), none.clone()];
        let made = UNIX_EPOCH + std::time::Duration::from_millis(500);
        assert_eq!(made_with(&list, made), [none]);
        let cfg = Config {
            kill_hosts_deny: None,
            ..Config::default()
        };
        let target = crate::actions::Target {
            ip: "192.0.2.7".parse().unwrap(),
            port: 1,
            mode: "atcp",
        };
        assert_eq!(
            crate::actions::undo_plan(&cfg, made_with(&list, made), &target),
            []
        );
    }
}
