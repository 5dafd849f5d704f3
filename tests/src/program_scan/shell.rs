//! The programs an argument vector or a shell command line runs, following wrappers
//! (`timeout`, `nsenter`, `unshare`, `sudo`, `exec`, `ip netns exec`, `sh -c`).

/// Options of wrappers that take a separate value.
const VALUE_OPTIONS: &[&str] = &[
    "-s",
    "-k",
    "--signal",
    "--kill-after",
    "-t",
    "--target",
    "--propagation",
    "--setgroups",
    "-u",
    "--user",
];

/// The programs an argument vector runs: its program, and what a wrapper runs in turn.
/// `None` words are not literals (a path computed at run time, the project's binary).
pub(super) fn argv_programs(words: &[Option<String>], out: &mut Vec<String>) {
    let Some(Some(first)) = words.first() else {
        return;
    };
    if first.contains(['{', '$']) {
        return;
    }
    let program = first.rsplit('/').next().unwrap_or(first).to_owned();
    out.push(program.clone());
    let skip_options = |mut i: usize| {
        while let Some(Some(w)) = words.get(i) {
            if !w.starts_with('-') {
                break;
            }
            i += if VALUE_OPTIONS.contains(&w.as_str()) {
                2
            } else {
                1
            };
        }
        i
    };
    match program.as_str() {
        "timeout" => argv_programs(&words[(skip_options(1) + 1).min(words.len())..], out),
        "nsenter" | "unshare" | "sudo" | "exec" => argv_programs(&words[skip_options(1)..], out),
        "ip" if words.len() > 4
            && words[1].as_deref() == Some("netns")
            && words[2].as_deref() == Some("exec") =>
        {
            argv_programs(&words[4..], out)
        }
        "sh" | "bash" => {
            if let (Some(Some(c)), Some(Some(script))) = (words.get(1), words.get(2))
                && c == "-c"
            {
                out.extend(shell_programs(script));
            }
        }
        _ => {}
    }
}

/// The programs a shell command line runs, in order.
pub fn shell_programs(script: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum Tok {
        Word(String),
        Sep,
    }
    let mut toks = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = script.chars().peekable();
    let end_word = |word: &mut Option<String>, toks: &mut Vec<Tok>| {
        if let Some(w) = word.take() {
            toks.push(Tok::Word(w));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut word, &mut toks),
            '\n' | ';' | '|' | '(' | ')' | '`' => {
                end_word(&mut word, &mut toks);
                toks.push(Tok::Sep);
            }
            '&' if word.as_deref().is_some_and(|w| w.ends_with(['>', '<'])) => {
                word.get_or_insert_default().push('&');
            }
            '&' => {
                end_word(&mut word, &mut toks);
                toks.push(Tok::Sep);
            }
            '$' if chars.peek() == Some(&'(') => {
                end_word(&mut word, &mut toks);
                chars.next();
                toks.push(Tok::Sep);
            }
            '#' if word.is_none() => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\'' => {
                let w = word.get_or_insert_default();
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_default();
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        q => w.push(q),
                    }
                }
            }
            '\\' => word.get_or_insert_default().extend(chars.next()),
            c => word.get_or_insert_default().push(c),
        }
    }
    end_word(&mut word, &mut toks);

    let mut out = Vec::new();
    for command in toks.split(|t| *t == Tok::Sep) {
        let mut words: Vec<&str> = command
            .iter()
            .map(|t| match t {
                Tok::Word(w) => w.as_str(),
                Tok::Sep => unreachable!(),
            })
            .collect();
        // Keywords that start a command before the one that runs.
        while let Some(w) = words.first()
            && [
                "do", "then", "else", "elif", "if", "while", "until", "!", "{",
            ]
            .contains(w)
        {
            words.remove(0);
        }
        if matches!(words.first(), Some(&("for" | "done" | "fi" | "esac" | "}"))) {
            continue;
        }
        // Assignments before the command, and redirections anywhere.
        let is_assignment = |w: &str| {
            w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        };
        while words.first().is_some_and(|w| is_assignment(w)) {
            words.remove(0);
        }
        let mut argv = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].trim_start_matches(|c: char| c.is_ascii_digit());
            if w.starts_with(['>', '<']) {
                // `>> file` takes the next word; `>/dev/null` and `2>&1` do not.
                let bare = w.trim_start_matches(['>', '<', '&']).is_empty();
                i += if bare && !w.ends_with('&') { 2 } else { 1 };
                continue;
            }
            argv.push(Some(words[i].to_owned()));
            i += 1;
        }
        argv_programs(&argv, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shell_programs;

    #[test]
    fn shell_strings_and_wrappers_are_followed() {
        let p = |s: &str| shell_programs(s);
        assert_eq!(
            p(
                "for i in $(seq 50); do ip link show x | grep -q LOWER_UP && exit 0; sleep 0.1; \
               done; exit 1"
            ),
            ["seq", "ip", "grep", "exit", "sleep", "exit"]
        );
        assert_eq!(
            p(
                "unshare --mount --propagation private sh -c 'mount --bind /a /b && \
               nsenter --net=/run/netns/x {bin} -stcp'"
            ),
            ["unshare", "sh", "mount", "nsenter"]
        );
        assert_eq!(
            p("timeout 4 trafgen --dev x -q 2>&1 >/dev/null"),
            ["timeout", "trafgen"]
        );
        assert_eq!(
            p("ipset restore < /tmp/set && iptables-legacy -A INPUT -j DROP"),
            ["ipset", "iptables-legacy"]
        );
        assert_eq!(p("X=1 ip netns exec ns nmap -sS 10.0.0.1"), ["ip", "nmap"]);
        assert_eq!(p("echo route $TARGET$ >> /tmp/order"), ["echo"]);
        assert_eq!(p("/usr/sbin/iptables -I INPUT"), ["iptables"]);
    }
}
