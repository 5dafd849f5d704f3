//! Just enough of a Rust lexer to find calls and their string-literal arguments: comments
//! and literals blanked out of the code, literals decoded, and the arguments of a
//! `Command` builder chain.

/// A string literal: its decoded text, where it starts and ends (byte offsets), and its line.
pub(super) struct Lit {
    pub(super) text: String,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) line: usize,
}

/// The source with comments and the insides of string and char literals blanked (so that
/// code patterns never match inside them; a literal keeps its opening quote at `start`),
/// and its string literals.
pub(super) fn lex(src: &str) -> (Vec<u8>, Vec<Lit>) {
    let b = src.as_bytes();
    let mut code = b.to_vec();
    let mut lits = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                code[i] = b' ';
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] != b'\n' {
                    code[i] = b' ';
                }
                i += 1;
            }
        } else if b[i] == b'r' && !ident(prev) && matches!(b.get(i + 1), Some(b'"' | b'#')) {
            // A raw string: r"..." or r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = open + 1;
            let len = b[body..]
                .windows(close.len())
                .position(|w| w == close)
                .expect("an unterminated raw string");
            let end = body + len + close.len();
            lits.push(Lit {
                text: src[body..body + len].to_owned(),
                start: open,
                end,
                line: line_of(src, open),
            });
            blank(&mut code, open + 1, end);
            i = end;
        } else if b[i] == b'"' {
            let (text, end) = decode(src, i);
            lits.push(Lit {
                text,
                start: i,
                end,
                line: line_of(src, i),
            });
            blank(&mut code, i + 1, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\''), or a lifetime.
            let end = if b.get(i + 1) == Some(&b'\\') {
                i + 2 + b[i + 2..].iter().position(|c| *c == b'\'').unwrap_or(0) + 1
            } else if let Some(n) = src[i + 1..].chars().next()
                && b.get(i + 1 + n.len_utf8()) == Some(&b'\'')
            {
                i + 2 + n.len_utf8()
            } else {
                i + 1
            };
            blank(&mut code, i + 1, end);
            i = end;
        } else {
            i += 1;
        }
    }
    (code, lits)
}

fn blank(code: &mut [u8], from: usize, to: usize) {
    for c in &mut code[from..to] {
        if *c != b'\n' {
            *c = b' ';
        }
    }
}

fn line_of(src: &str, at: usize) -> usize {
    src[..at].matches('\n').count() + 1
}

/// Decodes the string literal whose `"` is at `at`; returns its text and the offset after it.
fn decode(src: &str, at: usize) -> (String, usize) {
    let mut out = String::new();
    let mut chars = src[at + 1..].char_indices().peekable();
    while let Some((k, c)) = chars.next() {
        match c {
            '"' => return (out, at + 1 + k + 1),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                // A line continuation: the newline and the next line's indentation go.
                Some('\n') => {
                    while chars.peek().is_some_and(|(_, w)| w.is_whitespace()) {
                        chars.next();
                    }
                }
                Some('u') => {
                    let mut hex = String::new();
                    for (_, h) in chars.by_ref() {
                        match h {
                            '{' => {}
                            '}' => break,
                            h => hex.push(h),
                        }
                    }
                    out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                Some(e) => out.push(e),
                None => {}
            },
            c => out.push(c),
        }
    }
    panic!("an unterminated string literal at byte {at}");
}

/// Skips whitespace, `&` and `format!(` from `i`; the literal that starts there, if any.
pub(super) fn literal_at<'a>(code: &[u8], lits: &'a [Lit], mut i: usize) -> Option<&'a Lit> {
    loop {
        while i < code.len() && (code[i].is_ascii_whitespace() || code[i] == b'&') {
            i += 1;
        }
        if code[i..].starts_with(b"format!(") {
            i += b"format!(".len();
        } else {
            break;
        }
    }
    lits.iter().find(|l| l.start == i)
}

/// Offsets just after each match of `needle` in `code` not preceded by an identifier
/// character (nor by `.` when `method` is false, nor by anything but `.` when it is true).
pub(super) fn calls(code: &[u8], needle: &str, method: bool) -> Vec<usize> {
    let n = needle.as_bytes();
    (0..code.len().saturating_sub(n.len()))
        .filter(|&i| code[i..].starts_with(n))
        .filter(|&i| {
            let prev = if i > 0 { code[i - 1] } else { b' ' };
            if method {
                prev == b'.'
            } else {
                !(prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'.')
            }
        })
        .map(|i| i + n.len())
        .collect()
}

/// The variable a `let mut NAME = ` before offset `i` binds, if any.
pub(super) fn bound_name(code: &[u8], i: usize) -> Option<&[u8]> {
    let before = code[..i]
        .strip_suffix(b"std::process::")
        .unwrap_or(&code[..i]);
    let before = before.trim_ascii_end().strip_suffix(b"=")?.trim_ascii_end();
    let name_len = before
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    let (rest, name) = before.split_at(before.len() - name_len);
    (rest.trim_ascii_end().ends_with(b"let mut") && !name.is_empty()).then_some(name)
}

/// The arguments of the builder chain from `i` to the end of the statement:
/// `.arg(x)` and the elements of `.args([...])`, each `Some(text)` for a literal. With
/// `var` (`let mut var = Command::new(..);`), the statements `var.arg(..)...;` that
/// follow continue the chain.
pub(super) fn chain_args(
    code: &[u8],
    lits: &[Lit],
    mut i: usize,
    var: Option<&[u8]>,
) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    while i < code.len() {
        match code[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    break;
                }
            }
            b';' if depth == 0 => {
                let next = i
                    + 1
                    + code[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_whitespace())
                        .count();
                match var {
                    Some(v)
                        if code[next..].starts_with(v)
                            && code.get(next + v.len()) == Some(&b'.') =>
                    {
                        i = next + v.len();
                        continue;
                    }
                    _ => break,
                }
            }
            _ => {}
        }
        if depth == 0 && code[i..].starts_with(b".arg(") {
            i += b".arg(".len();
            out.push(literal_at(code, lits, i).map(|l| l.text.clone()));
            depth += 1;
            continue;
        }
        if depth == 0 && code[i..].starts_with(b".args([") {
            i += b".args([".len();
            // The elements, up to the closing bracket.
            let mut d = 0i32;
            let mut element_start = true;
            while i < code.len() {
                if element_start {
                    let lit = literal_at(code, lits, i);
                    out.push(lit.map(|l| l.text.clone()));
                    if let Some(l) = lit {
                        i = l.end;
                    }
                    element_start = false;
                    continue;
                }
                match code[i] {
                    b'(' | b'[' | b'{' => d += 1,
                    b')' | b']' | b'}' if d == 0 => break,
                    b')' | b']' | b'}' => d -= 1,
                    b',' if d == 0 => element_start = true,
                    _ => {}
                }
                i += 1;
            }
            // A trailing comma leaves an empty element.
            if matches!(out.last(), Some(None)) && code[..i].trim_ascii_end().ends_with(b",") {
                out.pop();
            }
            // Past the `]`; the `)` of `.args(` closes the depth opened here.
            i += 1;
            depth += 1;
            continue;
        }
        i += 1;
    }
    out
}
