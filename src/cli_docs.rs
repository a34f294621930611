//! `splicer completions` and `splicer man` (docs/architecture.md §10): shell completion scripts and manual
//! pages generated from the binary's own clap definition, passed in, so they cannot drift from
//! the flags the parser accepts. Pure: a `clap::Command` in, text out.

use std::io;

/// Sections clap does not know, for splicer(1): exit codes and the environment.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success. For \fBstatus\fR: every backend that is not draining or disabled is up, and every
configured cluster health check passes.
.TP
\fB1\fR
Runtime failure (for example a listen address already in use). For \fBstatus\fR: degraded
(a backend down, a cluster health check failing) or the admin API unreachable; stderr says
which.
.TP
\fB2\fR
Usage or configuration error.
.SH ENVIRONMENT
.TP
\fBSPLICER_CONFIG\fR
Config file of \fBrun\fR and \fBcheck\fR when \fB\-c\fR is not given (else ./splicer.toml).
.TP
\fBSPLICER_ADMIN\fR
Admin API of \fBstatus\fR and \fBupgrade\fR when \fB\-\-admin\fR is not given.
.TP
\fBSPLICER_TOKEN_FILE\fR
File holding the admin bearer token, for commands that change state.
.TP
\fBRUST_LOG\fR
Log filter, e.g. splicer=debug.
"#;

/// Why a manual page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ManError {
    /// The page asked for names no subcommand.
    #[error("no command {name:?} for a manual page; there are: {}", known.join(", "))]
    UnknownCommand {
        /// The name given.
        name: String,
        /// The subcommands there are at that level.
        known: Vec<String>,
    },
    /// The roff writer failed (it writes to memory, so in practice never).
    #[error("cannot render the manual page")]
    Render(#[source] io::Error),
}

/// The completion script of `shell` for `cmd`, invoked as `bin`.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell, bin: &str) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// The manual page of `cmd` (`path` empty: the program's own page, with exit codes and
/// environment) or of the subcommand at `path` (`["status"]`: splicer-status(1)), as roff.
pub fn man_page(mut cmd: clap::Command, path: &[String]) -> Result<String, ManError> {
    // Builds bin names (`splicer status`) and page titles (`splicer-status`) of subcommands.
    cmd.build();
    let mut page = &cmd;
    for name in path {
        page = page
            .find_subcommand(name)
            .ok_or_else(|| ManError::UnknownCommand {
                name: name.clone(),
                known: page
                    .get_subcommands()
                    .map(|c| c.get_name().to_owned())
                    .collect(),
            })?;
    }
    let mut roff = Vec::new();
    clap_mangen::Man::new(page.clone())
        .render(&mut roff)
        .map_err(ManError::Render)?;
    let mut text = title_first(&String::from_utf8_lossy(&roff));
    if path.is_empty() {
        // Before the version, as man-pages(7) orders sections; at the end if there is none.
        match text.find("\n.SH VERSION") {
            Some(at) => text.insert_str(at + 1, MAN_EXTRA),
            None => text.push_str(MAN_EXTRA),
        }
    }
    Ok(text)
}

/// The page with its `.TH` title line first: the roff writer puts its preamble (the string
/// it spells apostrophes with) above it, and readers of pages expect the title to open them.
fn title_first(page: &str) -> String {
    let mut lines: Vec<&str> = page.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with(".TH ")) {
        let title = lines.remove(i);
        lines.insert(0, title);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .about("A tool")
            .subcommand(
                clap::Command::new("go").about("Goes").arg(
                    clap::Arg::new("fast")
                        .long("fast")
                        .help("Goes fast, doesn't it")
                        .num_args(0),
                ),
            )
    }

    #[test]
    fn pages_open_with_their_title() {
        let page = man_page(cli(), &[]).expect("page");
        assert!(page.starts_with(".TH tool 1 "), "{page}");
        assert!(page.contains("tool\\-go(1)"), "{page}");
        let exit = page.find(".SH \"EXIT STATUS\"").expect("exit status");
        assert!(exit < page.find(".SH VERSION").expect("version"), "{page}");

        let sub = man_page(cli(), &["go".into()]).expect("page");
        assert!(sub.starts_with(".TH tool-go 1 "), "{sub}");
        assert!(sub.contains("fast"), "{sub}");
        assert!(!sub.contains("EXIT STATUS"), "{sub}");
    }

    #[test]
    fn an_unknown_page_names_the_known_ones() {
        let err = man_page(cli(), &["stop".into()]).expect_err("no such page");
        assert_eq!(
            err.to_string(),
            "no command \"stop\" for a manual page; there are: go, help"
        );
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = completions(cli(), shell, "tool");
            assert!(script.contains("go"), "{shell}: {script}");
            assert!(script.contains("fast"), "{shell}: {script}");
        }
    }
}
