//! Turns toml's syntax and serde errors into one plain-sentence `Problem`. toml reports a span
//! and a message written for programmers ("unknown field `x`, expected one of `a`, `b`",
//! "invalid type: integer `5`, expected i64"); users get the key, the table and what to write.

use std::path::Path;

use crate::config::error::Problem;
use crate::config::file::TABLES;

/// The problem for a failed `toml::from_str`.
pub fn problem(path: &Path, text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span().unwrap_or(0..0);
    let message = err.message();
    let sentence = if let Some(rest) = message.strip_prefix("unknown field ") {
        unknown_key(rest)
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        wrong_type(rest, text, span.clone())
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing required key \"{}\"", unquote(rest))
    } else if let Some(rest) = message.strip_prefix("duplicate key ") {
        format!("duplicate key {}", rest.replace('`', "\""))
    } else {
        let lines: Vec<&str> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("invalid TOML: {}", lines.join("; "))
    };
    Problem::at_offset(path, text, span.start, sentence)
}

/// `` `foo`, expected one of `a`, `b` `` → which table, what is allowed, maybe a suggestion.
fn unknown_key(rest: &str) -> String {
    let (key, expected) = match rest.split_once(", expected ") {
        Some((key, expected)) => (unquote(key), backticked(expected)),
        None => (unquote(rest), Vec::new()),
    };
    let table = TABLES
        .iter()
        .find(|(_, keys)| same_set(keys, &expected))
        .map_or(String::new(), |(name, _)| format!(" in {name}"));
    let mut out = format!("unknown key \"{key}\"{table}");
    if let Some(near) = expected.iter().find(|k| edit_distance(k, &key) <= 2) {
        out.push_str(&format!(" (did you mean \"{near}\"?)"));
    }
    if !expected.is_empty() {
        out.push_str(&format!("; expected one of: {}", expected.join(", ")));
    }
    out
}

/// `` integer `5`, expected a string `` → `wrong type for "name": expected a string, found
/// integer 5`, with a hint for the common `[pool]`-instead-of-`[[pool]]` slip.
fn wrong_type(rest: &str, text: &str, span: std::ops::Range<usize>) -> String {
    let (found, expected) = rest
        .split_once(", expected ")
        .unwrap_or((rest, "another type"));
    let found = match found {
        "map" => "a table".to_string(),
        "sequence" => "an array".to_string(),
        other => other.replace("floating point", "float").replace('`', ""),
    };
    let expected = match expected {
        "a sequence" => "an array",
        "a boolean" => "a boolean (true or false)",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        "i64" | "i32" | "u64" | "u32" | "u16" | "usize" => "an integer",
        e => e,
    };
    let snippet = text.get(span.clone()).unwrap_or("");
    if expected == "an array" && found == "a table" && snippet.starts_with('[') {
        let name = snippet
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim();
        return format!(
            "[{name}] must be written [[{name}]]: the file may hold several, as an array of tables"
        );
    }
    match key_before(text, span.start) {
        Some(key) if DURATION_KEYS.contains(&key) => {
            let number = found
                .strip_prefix("integer ")
                .or_else(|| found.strip_prefix("float "));
            match number {
                Some(n) => format!(
                    "wrong type for \"{key}\": a duration is a string with a unit: write \
                     {key} = \"{n}s\" (or \"{n}ms\", \"{n}m\")"
                ),
                None => format!(
                    "wrong type for \"{key}\": expected a duration string such as \"2s\", \
                     found {found}"
                ),
            }
        }
        Some(key) => format!("wrong type for \"{key}\": expected {expected}, found {found}"),
        None => format!("wrong type: expected {expected}, found {found}"),
    }
}

/// Keys whose values are durations (`"500ms"`, `"2s"`): a bare number there is a common slip.
const DURATION_KEYS: &[&str] = &[
    "interval",
    "timeout",
    "every",
    "drain_timeout",
    "shutdown_delay",
    "upgrade_timeout",
    "idle_timeout",
    "client_hello_timeout",
    "connect_timeout",
    "slow_start",
];

/// The key of a `key = value` line whose value starts at `offset`, if the value is not nested
/// inside an array or inline table.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let key = line.trim_end().strip_suffix('=')?.trim();
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    plain.then_some(key)
}

/// Strips the backticks serde puts around names.
fn unquote(s: &str) -> String {
    s.trim().trim_matches('`').to_string()
}

/// Every `` `word` `` in `s`, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn same_set(a: &[&str], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|k| b.iter().any(|x| x == k))
}

/// Levenshtein distance; names are short, so the quadratic table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::FileConfig;

    fn first_line(text: &str) -> String {
        let err = toml::from_str::<FileConfig>(text).unwrap_err();
        problem(Path::new("f.toml"), text, &err).to_string()
    }

    #[test]
    fn every_table_is_named_in_unknown_key_errors() {
        let cases = [
            ("zzz = 1\n", "the top level"),
            ("[admin]\nzzz = 1\n", "[admin]"),
            ("[runtime]\nzzz = 1\n", "[runtime]"),
            ("[[listener]]\nzzz = 1\n", "[[listener]]"),
            ("[[pool]]\nzzz = 1\n", "[[pool]]"),
            ("[[pool]]\n[pool.health]\nzzz = 1\n", "[pool.health]"),
            ("[[pool]]\nbackends = [{ zzz = 1 }]\n", "a backend entry"),
        ];
        for (text, table) in cases {
            let line = first_line(text);
            assert!(
                line.contains(&format!(
                    "unknown key \"zzz\" in {table}; expected one of: "
                )),
                "{line}"
            );
        }
    }

    #[test]
    fn messages_are_plain() {
        assert_eq!(
            first_line("[[pool]]\nbackends = [{ address = \"1.2.3.4:5\", wieght = 2 }]\n"),
            "f.toml:2:38: unknown key \"wieght\" in a backend entry (did you mean \"weight\"?); \
             expected one of: address, weight"
        );
        assert_eq!(
            first_line("[[pool]]\n[pool.health]\nrise = \"2\"\n"),
            "f.toml:3:8: wrong type for \"rise\": expected an integer, found string \"2\""
        );
        assert!(first_line("[pool]\nname = \"p\"\n").contains("[pool] must be written [[pool]]"));
        assert!(first_line("[[pool]]\nname = = 1\n").starts_with("f.toml:2:8: invalid TOML: "));
        assert!(first_line("[[pool]]\ndiscver = 1\n").contains("did you mean \"discover\"?"));
        assert_eq!(
            first_line("[[pool]]\n[pool.health]\ninterval = 10\n"),
            "f.toml:3:12: wrong type for \"interval\": a duration is a string with a unit: \
             write interval = \"10s\" (or \"10ms\", \"10m\")"
        );
    }
}
