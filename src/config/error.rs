//! Config problems, each printed as one line: `PATH:LINE:COL: message`, or `PATH: key.path:
//! message` when the problem is not tied to one place in the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A place in the file (1-based line and column).
    At {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        col: usize,
    },
    /// A key path such as `pool.quay.health`, for problems that span several places.
    Key {
        /// File.
        path: PathBuf,
        /// Dotted key path.
        key: String,
    },
    /// The file as a whole (unreadable, empty of listeners...).
    File {
        /// File.
        path: PathBuf,
    },
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub location: Location,
    /// A plain sentence.
    pub message: String,
}

impl Problem {
    /// A problem at byte offset `offset` of `text`.
    pub fn at_offset(path: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(text, offset);
        Problem {
            location: Location::At {
                path: path.to_path_buf(),
                line,
                col,
            },
            message: message.into(),
        }
    }

    /// A problem named by key path.
    pub fn at_key(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            location: Location::Key {
                path: path.to_path_buf(),
                key: key.into(),
            },
            message: message.into(),
        }
    }

    /// A problem with the whole file.
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Problem {
            location: Location::File {
                path: path.to_path_buf(),
            },
            message: message.into(),
        }
    }
}

/// 1-based (line, column) of byte `offset` in `text`; columns count characters.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::At { path, line, col } => {
                write!(f, "{}:{line}:{col}: {}", path.display(), self.message)
            }
            Location::Key { path, key } => write!(f, "{}: {key}: {}", path.display(), self.message),
            Location::File { path } => write!(f, "{}: {}", path.display(), self.message),
        }
    }
}

/// Every problem found in one config file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order where they have one.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error of one problem.
    pub fn single(problem: Problem) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }

    /// Each problem as one line.
    pub fn lines(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.to_string()).collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbé = x\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, t.find('x').unwrap()), (2, 6));
    }
}
