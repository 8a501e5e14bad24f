//! Line numbers for the paths syn found. syn's spans carry no position
//! outside a proc macro unless proc-macro2's `span-locations` feature is on,
//! and turning it on would rebuild every derive macro of the workspace; so a
//! small lexer (comments, strings and char literals skipped) lists each
//! file's identifiers and `::` with their lines, and a [`Locator`] finds each
//! path in that list, searching forward in the order syn met them.

/// A token that matters for finding paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSeparator,
    Punct(char),
}

/// What to look for: the path as written up to its first `{` group, and for a
/// leaf of a grouped `use`, the leaf's own token inside the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPath {
    /// Leading segments as they appear one after another in the source.
    pub prefix: Vec<String>,
    /// The leaf's token inside a `{ … }` group (`self`, a name, or `*`).
    pub leaf: Option<String>,
}

/// Finds paths in one file, each search starting where the last one matched.
#[derive(Debug)]
pub struct Locator {
    tokens: Vec<(Token, usize)>,
    cursor: usize,
}

// === impl Locator ===

impl Locator {
    /// Lexes `text`.
    pub fn new(text: &str) -> Self {
        Self {
            tokens: lex(text),
            cursor: 0,
        }
    }

    /// The line of `path`: its next occurrence from the cursor, or its first
    /// in the file; 0 if it is not written out (a macro built it).
    pub fn line_of(&mut self, path: &WrittenPath) -> usize {
        let found = self
            .find_from(self.cursor, path)
            .or_else(|| self.find_from(0, path));
        match found {
            Some((start, line)) => {
                self.cursor = start;
                line
            }
            None => 0,
        }
    }

    /// The start of the first match at or after `from`, and the line to report.
    fn find_from(&self, from: usize, path: &WrittenPath) -> Option<(usize, usize)> {
        (from..self.tokens.len()).find_map(|start| {
            let end = self.matches_prefix(start, &path.prefix)?;
            let Some(leaf) = &path.leaf else {
                return Some((start, self.tokens[start].1));
            };
            // The leaf sits somewhere in the group, before the `use` ends.
            self.tokens[end..]
                .iter()
                .take_while(|(token, _)| *token != Token::Punct(';'))
                .find(|(token, _)| match token {
                    Token::Ident(name) => name == leaf,
                    Token::Punct(c) => leaf.len() == 1 && leaf.starts_with(*c),
                    Token::PathSeparator => false,
                })
                .map(|(_, line)| (start, *line))
        })
    }

    /// The index after `prefix` if it is written at `start` (and is not the
    /// tail of a longer path).
    fn matches_prefix(&self, start: usize, prefix: &[String]) -> Option<usize> {
        if start > 0 && self.tokens[start - 1].0 == Token::PathSeparator {
            return None;
        }
        let mut at = start;
        for (index, segment) in prefix.iter().enumerate() {
            if index > 0 {
                (self.tokens.get(at)?.0 == Token::PathSeparator).then_some(())?;
                at += 1;
            }
            match &self.tokens.get(at)?.0 {
                Token::Ident(name) if name == segment => at += 1,
                _ => return None,
            }
        }
        Some(at)
    }
}

/// The identifiers, `::` and punctuation of Rust source, with their lines.
fn lex(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut at = 0;
    // Advances over `count` characters, counting newlines.
    let skip = |at: &mut usize, line: &mut usize, count: usize| {
        for _ in 0..count {
            if chars.get(*at) == Some(&'\n') {
                *line += 1;
            }
            *at += 1;
        }
    };
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while at < chars.len() {
                    if chars[at] == '/' && chars.get(at + 1) == Some(&'*') {
                        depth += 1;
                        skip(&mut at, &mut line, 2);
                    } else if chars[at] == '*' && chars.get(at + 1) == Some(&'/') {
                        depth -= 1;
                        skip(&mut at, &mut line, 2);
                        if depth == 0 {
                            break;
                        }
                    } else {
                        skip(&mut at, &mut line, 1);
                    }
                }
            }
            '"' => skip_string(&chars, &mut at, &mut line),
            '\'' => skip_char_or_lifetime(&chars, &mut at),
            ':' if next == Some(':') => {
                tokens.push((Token::PathSeparator, line));
                at += 2;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = at;
                while at < chars.len() && (chars[at].is_alphanumeric() || chars[at] == '_') {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                let after = chars.get(at).copied();
                let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
                let string_prefix = matches!(word.as_str(), "b" | "c");
                if (raw_prefix || string_prefix) && after == Some('"') {
                    skip_string(&chars, &mut at, &mut line);
                } else if raw_prefix && after == Some('#') {
                    let hashes = chars[at..].iter().take_while(|&&c| c == '#').count();
                    if chars.get(at + hashes) == Some(&'"') {
                        skip_raw_string(&chars, &mut at, &mut line, hashes);
                    } else if word == "r" {
                        // A raw identifier, `r#type`.
                        at += 1;
                        let start = at;
                        while at < chars.len() && (chars[at].is_alphanumeric() || chars[at] == '_')
                        {
                            at += 1;
                        }
                        tokens.push((Token::Ident(chars[start..at].iter().collect()), line));
                    } else {
                        tokens.push((Token::Ident(word), line));
                    }
                } else if word == "b" && after == Some('\'') {
                    skip_char_or_lifetime(&chars, &mut at);
                } else {
                    tokens.push((Token::Ident(word), line));
                }
            }
            c if c.is_ascii_digit() => {
                while at < chars.len() && (chars[at].is_alphanumeric() || chars[at] == '_') {
                    at += 1;
                }
            }
            '\n' => {
                line += 1;
                at += 1;
            }
            c if c.is_whitespace() => at += 1,
            c => {
                tokens.push((Token::Punct(c), line));
                at += 1;
            }
        }
    }
    tokens
}

/// Skips a `"…"` string starting at its opening quote.
fn skip_string(chars: &[char], at: &mut usize, line: &mut usize) {
    *at += 1;
    while *at < chars.len() {
        match chars[*at] {
            '\\' => {
                if chars.get(*at + 1) == Some(&'\n') {
                    *line += 1;
                }
                *at += 2;
            }
            '"' => {
                *at += 1;
                return;
            }
            '\n' => {
                *line += 1;
                *at += 1;
            }
            _ => *at += 1,
        }
    }
}

/// Skips `#…#"…"#…#` starting at the first `#`.
fn skip_raw_string(chars: &[char], at: &mut usize, line: &mut usize, hashes: usize) {
    *at += hashes + 1;
    while *at < chars.len() {
        if chars[*at] == '"'
            && chars[*at + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            *at += 1 + hashes;
            return;
        }
        if chars[*at] == '\n' {
            *line += 1;
        }
        *at += 1;
    }
}

/// Skips a char literal (`'a'`, `'\n'`, `'\u{1F600}'`) or a lifetime's quote.
fn skip_char_or_lifetime(chars: &[char], at: &mut usize) {
    match (chars.get(*at + 1), chars.get(*at + 2)) {
        (Some('\\'), _) => {
            *at += 2;
            while *at < chars.len() && chars[*at] != '\'' {
                *at += 1;
            }
            *at += 1;
        }
        (Some(_), Some('\'')) => *at += 3,
        // A lifetime: the name that follows lexes as an identifier, which no
        // path starts with.
        _ => *at += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(prefix: &[&str], leaf: Option<&str>) -> WrittenPath {
        WrittenPath {
            prefix: prefix.iter().map(|&s| s.to_owned()).collect(),
            leaf: leaf.map(str::to_owned),
        }
    }

    #[test]
    fn paths_in_comments_strings_and_chars_are_not_found() {
        let text = "// crate::a::x\n/* crate::a::y\n */ let s = \"crate::a\";\n\
                    let r = r#\"crate::a\"#; let c = '\"'; let l: &'static str = \"\";\n\
                    crate::a::z();\n";
        let mut locator = Locator::new(text);
        assert_eq!(locator.line_of(&path(&["crate", "a", "z"], None)), 5);
    }

    #[test]
    fn a_grouped_leaf_is_found_on_its_own_line() {
        let text = "use crate::{\n    b::B,\n    c::{self, C},\n};\n";
        let mut locator = Locator::new(text);
        assert_eq!(locator.line_of(&path(&["crate"], Some("B"))), 2);
        assert_eq!(locator.line_of(&path(&["crate"], Some("C"))), 3);
    }

    #[test]
    fn the_tail_of_a_longer_path_is_not_a_match() {
        let text = "other::crate::a::x();\ncrate::a::x();\n";
        let mut locator = Locator::new(text);
        assert_eq!(locator.line_of(&path(&["crate", "a", "x"], None)), 2);
    }
}
